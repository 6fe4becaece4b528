#!/usr/bin/env bash
# The one GPU run: correctness of every kernel on the device (bf16 included), then every benchmark,
# CSVs and logs under $OUT. Sized for one H200 in under 8 minutes (stage limits sum to 470 s);
# installs nothing but carried wheels.
#
#   device tool:  run(command="bash perf/gpu_suite.sh", carry=[".whl", ".gpu_data"], timeout_s=540)
#   by hand:      OUT=/tmp/gpu bash perf/gpu_suite.sh
#
# Prepare on the CPU host first (both folders are git-ignored, and travel only through `carry`):
#   .whl/       the CLIP tokenizer's vocabulary ships in open-clip-torch, absent there:
#               python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                 --platform manylinux2014_x86_64 -d .whl open-clip-torch==3.3.0   (pure Python, ~1.5 MB)
#   .gpu_data/  JPEGs for the decode benchmark (../shared does not travel):
#               mkdir -p .gpu_data/coco_photos && cp $(ls ../shared/data/coco_photos/*.jpg | head -64) .gpu_data/coco_photos/
#
# That machine has Python 3.12, torch 2.11, Triton 3.6 (no DeepSpeed, DALI or NLTK): the suite runs
# the kernel and model tests and the benchmarks that need only torch/Triton, from the checkout
# (PYTHONPATH), never `pip install`. Each stage has its own timeout so one slow stage cannot eat
# the others' time; a failed stage is reported and the suite goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-perf/results/gpu_$(date -u +%Y%m%d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CATLIP_RESULTS=$OUT
unset TRITON_INTERPRET
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels, installed out of the way, no deps
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
status=0
stage() {  # stage NAME SECONDS CMD...: run, log to $OUT/NAME.log, remember a failure
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s)"
  local t0=$SECONDS
  timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/suite.log"
  [ "$rc" = 0 ] || status=1
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
} | tee "$OUT/device.txt"

# 1. correctness on the device: the kernels in every dtype (bf16 included), the model's backends
stage gpu_tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_linear_bce.py tests/test_flash_attention.py tests/test_models.py

# 2. benchmarks, side by side with the alternatives; each writes its CSV under $OUT
stage bench_linear_bce 120 python3 perf/bench_linear_bce.py --quick  # writes $OUT/linear_bce.csv
stage bench_attention 100 python3 perf/bench_attention.py --quick --out "$OUT"
stage bench_step 70 python3 perf/bench_step.py --device cuda --model vit_b16 --batch 128 --vocab 24320 --out "$OUT"  # --max-batch: a longer run of its own
stage bench_decode 30 python3 perf/bench_decode_gpu.py --images .gpu_data/coco_photos --out "$OUT"

echo "results in $OUT:"
ls -l "$OUT"
exit $status
