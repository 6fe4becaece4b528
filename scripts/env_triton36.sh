# Source this file: it creates (once) and activates a second virtualenv shaped like the lent GPU
# machine's stack, for what the project's own venv (scripts/env.sh) cannot check:
#   * the kernels compiled by Triton 3.6 (the GPU machine's Triton; ours pins 3.8):
#     perf/compile_kernels.py, run by tests/test_compiled_kernels.py;
#   * perf/gpu_suite.sh --dry-run: the whole GPU suite on the CPU, with no DeepSpeed, DALI, NLTK or
#     ftfy installed (the GPU machine has none of them), the checkout on PYTHONPATH, never installed.
#
# The GPU machine runs Python 3.12 and torch 2.11 (CUDA). Here the nearest installable stack is
# Python 3.11 with torch 2.13.0 (CPU): the only CPU build on this project's machines is the local
# cp311 wheel, and PyPI's torch 2.11 / Python 3.12 wheels are CUDA builds of several GB. Triton,
# the part whose version changes the kernels, is the GPU machine's 3.6.0.
#
# Like scripts/env.sh it lives outside the checkout, keyed by a hash of the pins below and the
# interpreter, and is built in place under a lock (CI, clean clones and parallel shells share it):
#   ${CATLIP_CACHE:-~/.cache/catlip-engine}/venv-triton36-<hash>
set -euo pipefail
CATLIP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CATLIP_CACHE=${CATLIP_CACHE:-$HOME/.cache/catlip-engine}
PY36=${CATLIP_PYTHON:-$(command -v python3.11 || command -v python3)}
TRITON36_PINS=(
  torch==2.13.0
  triton==3.6.0
  numpy==2.2.6  # not 2.4: Triton 3.6's interpreter takes int() of 1-element arrays, an error in numpy 2.4
  pytest==9.0.3
  regex==2026.9.29
  pillow==12.3.0
  torchvision==0.28.0
  # what those pull in, as resolved once (exact, so the environment does not drift)
  filelock==4.3.1
  fsspec==2026.9.0
  iniconfig==2.3.1
  Jinja2==3.1.6
  MarkupSafe==3.0.4
  mpmath==1.3.0
  networkx==3.6.1
  packaging==26.4
  pluggy==1.7.0
  Pygments==2.21.0
  sympy==1.14.0
  typing_extensions==4.16.0
)
hash36=$({ printf '%s\n' "${TRITON36_PINS[@]}"; "$PY36" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
VENV36=$CATLIP_CACHE/venv-triton36-$hash36
# shellcheck source=scripts/venv.sh
source "$CATLIP_ROOT/scripts/venv.sh"
install_triton36_pins() {
  pip_quiet "$1" -m pip install -q "${TRITON36_PINS[@]}" || { echo "[catlip] building $VENV36 failed" >&2; return 1; }
}
catlip_venv "$PY36" "$VENV36" "Triton 3.6 like the GPU machine; about a minute, once" install_triton36_pins
export CATLIP_VENV36=$VENV36
# shellcheck disable=SC1091
source "$VENV36/bin/activate"
