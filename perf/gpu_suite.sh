#!/usr/bin/env bash
# The one GPU run: the goal benchmarks first, then the kernels' correctness on the device (bf16
# included), CSVs and logs under $OUT. Every stage has its own time limit (they sum to 350 s,
# compilation included), so one slow stage cannot take the others' time and a rerun still fits in
# the lease's 15 minutes; a failed stage is reported and the suite goes on. Installs nothing but
# carried wheels.
#
#   device tool:  run(command="bash perf/gpu_suite.sh", carry=[".whl", ".gpu_data"], timeout_s=420)
#   by hand:      OUT=/tmp/gpu bash perf/gpu_suite.sh
#   prepare:      bash perf/gpu_suite.sh --prepare    # once, on the CPU host: .whl/ and .gpu_data/
#   dry run:      bash perf/gpu_suite.sh --dry-run    # the whole suite on the CPU (below)
#
# That machine has Python 3.12, torch 2.11, Triton 3.6 and no DeepSpeed, DALI, NLTK or ftfy. The
# suite runs from the checkout (PYTHONPATH), never `pip install`; nothing on its path imports
# those four (the CLIP tokenizer imports ftfy only when the step benchmark's CLIP objective
# tokenises). Carried (both folders are git-ignored and travel only through `carry`):
#   .whl/       open-clip-torch (the BPE vocabulary the CLIP tokenizer reads), ftfy and wcwidth (the
#               tokenizer's cleaning), pure-Python or abi3 wheels for Python 3.12, ~2 MB
#   .gpu_data/  64 COCO JPEGs for the decode benchmark (../shared does not travel)
#
# --dry-run runs every stage on the CPU in scripts/env_triton36.sh's environment (Triton 3.6 as
# there; torch 2.13 CPU and Python 3.11, the nearest installable here; no DeepSpeed, DALI, NLTK or
# ftfy) with the carried wheels installed as the GPU run installs them: the benchmarks at tiny
# shapes through the same entry points and arguments (Triton's interpreter; fp16 where the GPU
# uses bf16, which the interpreter cannot run), and the test stages collected with the same -m
# selection (each must import and select tests; CI runs them all under the interpreter anyway).
# It finds an import, argument or selection error before a GPU is spent on it
# (tests/test_gpu_suite.py).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  "") ;;
  *) echo "usage: bash perf/gpu_suite.sh [--dry-run | --prepare]" >&2; exit 2 ;;
esac
WHEELS=(open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.1)

prepare() {  # the carried folders, from this host's package index and ../shared
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl "${WHEELS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
  if [ -d ../shared/data/coco_photos ] && [ ! -d .gpu_data/coco_photos ]; then
    mkdir -p .gpu_data/coco_photos
    find ../shared/data/coco_photos -name '*.jpg' | sort | head -64 | xargs -I{} cp {} .gpu_data/coco_photos/
  fi
  ls .whl
}
if [ "$MODE" = prepare ]; then prepare; exit $?; fi

if [ "$MODE" = dry ]; then
  # shellcheck disable=SC1091
  source scripts/env_triton36.sh
  set +e
  compgen -G ".whl/*.whl" >/dev/null || prepare >/dev/null
  export TRITON_INTERPRET=1 OUT=${OUT:-/tmp/catlip_gpu_suite_dryrun}
  DRY=1
else
  unset TRITON_INTERPRET
  export OUT=${OUT:-perf/results/gpu_$(date -u +%Y%m%d)}
  DRY=
fi
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CATLIP_RESULTS=$OUT
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels, installed out of the way, no deps
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$OUT/site" .whl/*.whl \
    && export PYTHONPATH=$OUT/site:$PYTHONPATH
fi
status=0
total_limit=0
stage() {  # stage NAME SECONDS CMD...: run, log to $OUT/NAME.log, remember a failure
  local name=$1 secs=$2
  shift 2
  total_limit=$((total_limit + secs))
  [ -n "$DRY" ] && secs=$((secs * 4))  # the CPU and the interpreter are slower; the limit is the GPU's
  echo "=== $name (limit ${secs}s)"
  local t0=$SECONDS
  timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/suite.log"
  [ "$rc" = 0 ] || status=1
}
tests() {  # tests NAME SECONDS FILE: one test file, minus the grids the CPU covers (slow), bf16 in
  local name=$1 secs=$2 file=$3
  if [ -n "$DRY" ]; then  # collect: the selection must be valid and non-empty
    stage "$name" "$secs" bash -c "set -o pipefail; python3 -m pytest -q -p no:cacheprovider -o addopts='' -m 'not slow' --collect-only $file | tail -3 | grep -E '[0-9]+ tests? collected'"
  else
    stage "$name" "$secs" python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" \
      --durations=15 -W ignore::DeprecationWarning "$file"
  fi
}

{
  if [ -n "$DRY" ]; then echo "dry run on $(uname -n) (CPU, Triton interpreter)"; else
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; fi
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
} | tee "$OUT/device.txt"

# 1. benchmarks, the goal measurements, side by side with the alternatives; each writes its CSV in $OUT
LBCE_DRY=(--device cpu --B 8 --D 32 --V 300 --warmup 0 --seconds 0.01
  --providers triton triton-nocheck triton-addmm triton-cublas triton-autotune triton-eval eager gemm3)
stage bench_linear_bce 90 python3 perf/bench_linear_bce.py --quick --seconds 0.5 ${DRY:+"${LBCE_DRY[@]}"}
stage bench_attention 70 python3 perf/bench_attention.py --quick --warmup 10 --rep 40 --out "$OUT" \
  ${DRY:+--device cpu --dtype fp16 --shapes tiny --warmup 0 --rep 1}
stage bench_step 40 python3 perf/bench_step.py --device cuda --model vit_b16 --batch 128 --vocab 24320 \
  --steps 4 --out "$OUT" ${DRY:+--device cpu --model vit_tiny --image-size 32 --batch 4 --vocab 500 --steps 1 --warmup 0}
stage bench_decode 15 python3 perf/bench_decode_gpu.py --images .gpu_data/coco_photos --out "$OUT"

# 2. correctness on the device: one stage per test file; -m "not slow" leaves out the grids the CPU
#    covers (fp32/fp16 under the interpreter), keeps the bf16 and GPU-only cases
tests test_linear_bce 60 tests/test_linear_bce.py
tests test_flash_attention 45 tests/test_flash_attention.py
tests test_models 15 tests/test_models.py
tests test_kernel_dispatch 15 tests/test_kernel_dispatch.py

echo "stage limits sum to $total_limit s (GPU); results in $OUT:" | tee -a "$OUT/suite.log"
ls -l "$OUT"
exit $status
