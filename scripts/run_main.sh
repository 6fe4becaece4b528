#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job on its out-of-the-box default:
# CatLIP pre-training of a tiny ViT on real photos, on the CPU, with DeepSpeed ZeRO-2 over 2 gloo
# ranks:
#   1. the synset vocabulary of the COCO val2017 captions (25,014 captions, min count 5);
#   2. the 255 COCO photos of ../shared/data with their 1,275 captions packed into WebDataset
#      shards with label indices, 20% of the photos held out;
#   3. 300 training steps (configs/coco_tiny_cpu.yaml), printing the falling loss and the held-out
#      mAP over the vocabulary next to the chance level.
# Where ../shared is absent, steps 1-2 use scikit-image's 19 documented photos from PyPI instead
# (engine/sample_data.py). Each invocation writes a new folder runs/main/<date-time>/ (vocabulary,
# shards, training) and points runs/main/latest at it; nothing earlier is deleted. With
# `--set run.resume=auto` it continues the newest run in that run's folder instead (its shards are
# reused). Extra arguments go to the trainer, e.g. --set run.steps=100.
source "$(dirname "$0")/env.sh"
SHARED=${CATLIP_SHARED:-$CATLIP_ROOT/../shared}
DATA=$SHARED/data
ROOT_RUNS=${CATLIP_RUNS:-runs/main}  # where the run folders go
catlip setup-nltk
resume=0
for arg in "$@"; do [[ "$arg" == *run.resume=auto* ]] && resume=1; done
if [ "$resume" = 1 ] && [ -e "$ROOT_RUNS/latest" ]; then
  RUN=$ROOT_RUNS/$(readlink "$ROOT_RUNS/latest")
  echo "[catlip] continuing the newest run in $RUN"
else
  RUN=$ROOT_RUNS/$(date +%Y%m%d-%H%M%S)
  while [ -e "$RUN" ]; do RUN=${RUN}_; done  # two runs started within one second
  mkdir -p "$RUN"
  ln -sfn "$(basename "$RUN")" "$ROOT_RUNS/latest"
  echo "[catlip] new run in $RUN (earlier runs are kept; runs/main/latest points here)"
fi
extra=()
if [ -f "$RUN/shards/train/dataset.json" ]; then
  echo "[catlip] 1-2/3 vocabulary and shards of this run exist: reused"
  extra=($(cat "$RUN/extra_args" 2>/dev/null || true))
elif [ -f "$DATA/coco_captions_val2017.json" ]; then
  echo "[catlip] 1/3 vocabulary of the COCO val2017 captions"
  catlip vocab --captions "$DATA/coco_captions_val2017.json" --min-count 5 --out "$RUN/vocab.tsv"
  TSV=$DATA/coco_photos/captions.tsv
  IMAGES=$DATA/coco_photos
else
  echo "[catlip] $DATA is absent: using scikit-image's documented photos from PyPI instead"
  python -m engine.sample_data --out "$RUN/sample_data"
  TSV=$RUN/sample_data/captions.tsv
  IMAGES=$RUN/sample_data/images
  echo "[catlip] 1/3 vocabulary of their captions"
  catlip vocab --captions "$TSV" --min-count 1 --out "$RUN/vocab.tsv"
  extra=(--set data.batch_size=4 --set run.steps=150)
fi
if [ ! -f "$RUN/shards/train/dataset.json" ]; then
  echo "[catlip] 2/3 shards"
  catlip pack --tsv "$TSV" --images "$IMAGES" --vocab "$RUN/vocab.tsv" --out "$RUN/shards" \
    --shard-size 256 --holdout-fraction 0.2
  echo "${extra[*]}" > "$RUN/extra_args"
fi
echo "[catlip] 3/3 training: tiny ViT, ZeRO-2, 2 CPU ranks (gloo)"
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml \
  --set data.train="$RUN/shards/train" --set data.val="$RUN/shards/val" --set run.out_dir="$RUN/train" \
  "${extra[@]}" "$@"
