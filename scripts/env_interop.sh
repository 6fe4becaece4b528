# Source this file: it creates (once) and activates a second virtualenv for interoperability
# checks: real timm (and open_clip) beside the checkout, which the project's own venv
# (scripts/env.sh) cannot hold: timm needs torchvision, and PyPI's torchvision does not load beside
# that venv's CPU torch 2.13 wheel. torch 2.14.1 + torchvision 0.29.1 (both wheels on this
# machine's disk; CUDA builds, which run on the CPU) do. Used by tests/test_interop.py, which runs
# tests/interop_check.py here, and by perf/bench_transfer.py. ~5.6 GB, a few minutes once.
#
# The checkout goes on PYTHONPATH, never installed: catlip.models and kernels import only torch, so
# none of the project's other dependencies (DeepSpeed, DALI, NLTK) are needed here.
#
# Like scripts/env.sh it lives outside the checkout, keyed by a hash of the pins below and the
# interpreter, and is built in place under a lock (CI, clean clones and parallel shells share it):
#   ${CATLIP_CACHE:-~/.cache/catlip-engine}/venv-interop-<hash>
set -euo pipefail
CATLIP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CATLIP_CACHE=${CATLIP_CACHE:-$HOME/.cache/catlip-engine}
PYI=${CATLIP_PYTHON:-$(command -v python3.11 || command -v python3)}
INTEROP_PINS=(
  torch==2.14.1
  torchvision==0.29.1
  timm==1.0.31
  open_clip_torch==3.3.0
  safetensors==0.8.0
  numpy==2.4.6
  pytest==9.2.0
  # what those pull in, as resolved once (exact, so the environment does not drift)
  setuptools==84.2.1  # torch 2.14.1 needs >= 77.0.3; the venv starts with 65.5
  anyio==4.16.0
  click==8.5.1
  cuda-bindings==13.5.0
  cuda-pathfinder==1.9.1
  cuda-toolkit==13.0.3.0
  filelock==4.3.1
  fsspec==2026.9.0
  ftfy==6.3.1
  h11==0.16.0
  hf-xet==1.8.0
  httpcore2==2.16.2
  httpx2==2.16.2
  huggingface_hub==2.4.0
  idna==3.20
  iniconfig==2.3.1
  Jinja2==3.1.6
  MarkupSafe==3.0.4
  mpmath==1.3.0
  networkx==3.6.1
  nvidia-cublas==13.1.1.3
  nvidia-cuda-cupti==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cudnn-cu13==9.24.0.43
  nvidia-cufft==12.0.0.61
  nvidia-cufile==1.15.1.6
  nvidia-curand==10.4.0.35
  nvidia-cusolver==12.0.4.66
  nvidia-cusparse==12.6.3.3
  nvidia-cusparselt-cu13==0.8.1
  nvidia-nccl-cu13==2.30.7
  nvidia-nvjitlink==13.5.37
  nvidia-nvshmem-cu13==3.4.5
  nvidia-nvtx==13.0.85
  packaging==26.4
  pillow==13.0.0
  pluggy==1.7.0
  Pygments==2.21.0
  PyYAML==6.0.4
  regex==2026.11.19
  sympy==1.14.0
  tqdm==4.70.1
  triton==3.8.0
  truststore==0.10.5
  typing_extensions==4.16.0
  wcwidth==0.9.4
)
hashi=$({ printf '%s\n' "${INTEROP_PINS[@]}"; "$PYI" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
VENVI=$CATLIP_CACHE/venv-interop-$hashi
# shellcheck source=scripts/venv.sh
source "$CATLIP_ROOT/scripts/venv.sh"
install_interop_pins() {
  pip_quiet "$1" -m pip install -q --no-deps "${INTEROP_PINS[@]}" \
    || { echo "[catlip] building $VENVI failed" >&2; return 1; }
  "$1" -m pip check >/dev/null || { "$1" -m pip check >&2; echo "[catlip] $VENVI: the pins above are incomplete" >&2; return 1; }
}
catlip_venv "$PYI" "$VENVI" "torch 2.14.1, timm, open_clip for interop checks; a few minutes, once" install_interop_pins
export CATLIP_VENV_INTEROP=$VENVI
export PYTHONPATH=$CATLIP_ROOT${PYTHONPATH:+:$PYTHONPATH}
# shellcheck disable=SC1091
source "$VENVI/bin/activate"
