#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job on its out-of-the-box default:
# CatLIP pre-training of a tiny ViT on real photos, on the CPU, with DeepSpeed ZeRO-2 over 2 gloo
# ranks, then its transfer to COCO's 80 object classes:
#   1. the synset vocabulary of the COCO val2017 captions (25,014 captions, min count 5), with the
#      default labeler catlip-2 (fitted on those captions), each caption's synsets written once;
#   2. the 255 COCO photos of ../shared/data with their 1,275 captions packed into WebDataset
#      shards with label indices (the val2017 captions' from step 1's labels file, the others
#      labelled here), 20% of the photos held out, stored at shorter side 128
#      (`--resize-shorter`: the 64-px model needs no more, and decoding was a quarter of each step);
#   3. 300 training steps (configs/coco_tiny_cpu.yaml), printing the falling loss and the held-out
#      mAP over the vocabulary next to the chance level;
#   4. COCO's 80 names mapped to synsets of that vocabulary (`catlip classes`, CLASSES.json);
#   5. ../shared/data/coco128 packed as class sets (`catlip pack --yolo`): train2017 (128 images)
#      and val2017 less the 9 images that are also pre-training photos (119 images);
#      4-5 need only the vocabulary: they run in the background from step 1 on;
#   6. zero-shot mAP on those 119 images (`catlip evaluate`: the head's synset rows, no training),
#      and, on train2017, linear probes (configs/coco128_probe_cpu.yaml) and fine-tunes
#      (configs/coco128_finetune_cpu.yaml), each from a random and from the synset classifier at
#      equal steps, one CPU rank each, side by side; every mAP next to chance, and a summary block
#      (with the mAP along the way of each pair) closes the run.
# Where ../shared is absent, steps 1-2 use scikit-image's 19 documented photos from PyPI instead
# (provision/sample_data.py) and steps 4-6 are skipped (coco128 is part of ../shared). Each
# invocation writes a new folder runs/main/<date-time>/ (vocabulary, shards, training, transfer/)
# and points runs/main/latest at it; nothing earlier is deleted. With `--set run.resume=auto` it
# continues the newest run in that run's folder instead (its shards are reused; transfer/ is
# redone from the continued checkpoint). Extra arguments go to the pre-training, e.g.
# --set run.steps=100; CATLIP_TRANSFER_SET="--set run.steps=4 ..." reaches the probes and
# fine-tunes of step 6.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SHARED=${CATLIP_SHARED:-$CATLIP_ROOT/../shared}
DATA=$SHARED/data
ROOT_RUNS=${CATLIP_RUNS:-runs/main}  # where the run folders go
catlip setup-nltk
SECONDS=0  # the main job's own time, after set-up (venv, NLTK data)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT  # background steps end with the job
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
RESIZE=128  # shorter side of the stored photos: 2x the 64-px model's input (img2dataset-style)
COCO128=$DATA/coco128
T=$RUN/transfer

prepare_transfer() {  # steps 4-5, in the background from the vocabulary on: they need nothing else
  catlip classes --vocab "$RUN/vocab.tsv" --names "$COCO128/names.yaml" --out "$T/coco80.json" \
    > "$T/classes.txt" 2>&1 || return 1
  catlip pack --yolo "$COCO128" --split train2017 --classes "$T/coco80.json" --out "$T/train" --workers 1 \
    --resize-shorter "$RESIZE" > "$T/pack_train.txt" 2>&1 &
  local train_pack=$!
  catlip pack --yolo "$COCO128" --split val2017 --classes "$T/coco80.json" --exclude "$DATA/coco_photos" \
    --out "$T/val" --workers 1 --resize-shorter "$RESIZE" > "$T/pack_val.txt" 2>&1 || { wait; return 1; }
  wait "$train_pack"
}
start_transfer() {
  [ -f "$COCO128/names.yaml" ] || return 0
  rm -rf "$T"  # derived from this run's vocabulary and checkpoint: redone on every invocation
  mkdir -p "$T"
  echo "[catlip] 4-5/6 in the background: COCO's 80 names to synsets of the vocabulary, coco128 packed as class sets"
  prepare_transfer &
  prep=$!
}
if [ -f "$RUN/shards/train/dataset.json" ]; then
  echo "[catlip] 1-2/6 vocabulary and shards of this run exist: reused"
  extra=($(cat "$RUN/extra_args" 2>/dev/null || true))
elif [ -f "$DATA/coco_captions_val2017.json" ]; then
  echo "[catlip] 1/6 vocabulary of the COCO val2017 captions"
  catlip vocab --captions "$DATA/coco_captions_val2017.json" --min-count 5 --out "$RUN/vocab.tsv" \
    --labels-out "$RUN/labels.tsv"
  start_transfer
  TSV=$DATA/coco_photos/captions.tsv
  IMAGES=$DATA/coco_photos
else
  echo "[catlip] $DATA is absent: using scikit-image's documented photos from PyPI instead"
  python -m provision.sample_data --out "$RUN/sample_data"
  TSV=$RUN/sample_data/captions.tsv
  IMAGES=$RUN/sample_data/images
  echo "[catlip] 1/6 vocabulary of their captions"
  catlip vocab --captions "$TSV" --min-count 1 --out "$RUN/vocab.tsv"
  extra=(--set data.batch_size=4 --set run.steps=150)
fi
if [ ! -f "$RUN/shards/train/dataset.json" ]; then
  echo "[catlip] 2/6 shards (at ${SECONDS} s)"
  labels=()
  [ -f "$RUN/labels.tsv" ] && labels=(--labels "$RUN/labels.tsv")
  catlip pack --tsv "$TSV" --images "$IMAGES" --vocab "$RUN/vocab.tsv" --out "$RUN/shards" \
    --shard-size 256 --holdout-fraction 0.2 --resize-shorter "$RESIZE" "${labels[@]}"
  echo "${extra[*]}" > "$RUN/extra_args"
fi
[ -n "${prep:-}" ] || start_transfer  # the vocabulary came with the reused shards
echo "[catlip] 3/6 training: tiny ViT, ZeRO-2, 2 CPU ranks (gloo) (at ${SECONDS} s)"
OMP_NUM_THREADS=1 python -m engine.launch --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml \
  --set data.train="$RUN/shards/train" --set data.val="$RUN/shards/val" --set run.out_dir="$RUN/train" \
  "${extra[@]}" "$@" | tee "$RUN/pretrain.log"
pretrain=$(grep "^held-out mAP" "$RUN/pretrain.log" | tail -1 || true)

if [ ! -f "$COCO128/names.yaml" ]; then
  echo "[catlip] 4-6/6 transfer to COCO skipped: $COCO128 is absent (it comes with ../shared/data)"
  exit 0
fi
wait "$prep" || {
  echo "[catlip] 4-5/6 failed:"; tail -20 "$T/classes.txt" "$T"/pack_*.txt 2>/dev/null; exit 1
}
echo "[catlip] 4/6 $(tail -1 "$T/classes.txt")"
for split in train val; do echo "[catlip] 5/6 coco128 $split: $(grep " samples (" "$T/pack_$split.txt")"; done
echo "[catlip] 6/6 zero-shot readout; linear probes and fine-tunes from a random and a synset classifier (at ${SECONDS} s)"
OMP_NUM_THREADS=1 catlip evaluate --checkpoint "$RUN/train" --classes "$T/coco80.json" --data "$T/val" \
  --threads 1 --no-progress > "$T/zeroshot.txt" 2>&1 &
jobs_=("$!:zeroshot")
for task in probe finetune; do
  for init in random synset; do  # one rank each, side by side
    OMP_NUM_THREADS=1 python -m engine.train --config "configs/coco128_${task}_cpu.yaml" \
      --set objective.init_from="$RUN/train" --set objective.classifier_init=$init \
      --set data.train="$T/train" --set data.val="$T/val" --set run.out_dir="$T/${task}_$init" \
      ${CATLIP_TRANSFER_SET:-} > "$T/${task}_$init.txt" 2>&1 &
    jobs_+=("$!:${task}_$init")
  done
done
for job in "${jobs_[@]}"; do
  wait "${job%%:*}" || {
    echo "[catlip] ${job#*:} failed:"; tail -30 "$T/${job#*:}.txt"
    kill "${jobs_[@]%%:*}" 2>/dev/null || true; exit 1
  }
done
tail -1 "$T/zeroshot.txt"
python -m engine.main_job "$T" "$pretrain" "$SECONDS"
