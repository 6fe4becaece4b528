#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job on its out-of-the-box default:
# CatLIP pre-training of a tiny ViT on the real COCO photos of ../shared/data, on the CPU with
# DeepSpeed ZeRO-2 over 2 gloo ranks:
#   1. the synset vocabulary of the COCO val2017 captions (25,014 captions, min count 5);
#   2. the 255 COCO photos with their 1,275 captions packed into WebDataset shards with labels,
#      20% of the photos held out;
#   3. a few hundred training steps (configs/coco_tiny_cpu.yaml), printing the falling loss and
#      the held-out mAP over the vocabulary next to the chance level.
# Outputs go to runs/coco/. Extra arguments go to the trainer, e.g. --set run.steps=100.
source "$(dirname "$0")/env.sh"
SHARED=${CATLIP_SHARED:-$CATLIP_ROOT/../shared}
DATA=$SHARED/data
RUN=runs/coco
if [ ! -f "$DATA/coco_captions_val2017.json" ]; then
  echo "catlip: the default job reads $DATA (real COCO captions and photos), which is absent." >&2
  echo "        Set CATLIP_SHARED to the folder that holds data/, or run catlip vocab/pack/train on your data." >&2
  exit 2
fi
catlip setup-nltk
mkdir -p "$RUN"
echo "[catlip] 1/3 vocabulary"
catlip vocab --captions "$DATA/coco_captions_val2017.json" --min-count 5 --out "$RUN/vocab.tsv"
echo "[catlip] 2/3 shards"
rm -rf "$RUN/shards"
catlip pack --tsv "$DATA/coco_photos/captions.tsv" --images "$DATA/coco_photos" --vocab "$RUN/vocab.tsv" \
  --out "$RUN/shards" --shard-size 256 --holdout-fraction 0.2
echo "[catlip] 3/3 training: tiny ViT, ZeRO-2, 2 CPU ranks (gloo)"
rm -rf "$RUN/train"
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml "$@"
