#!/usr/bin/env bash
# Set up everything on a fresh machine, then run the main job on its out-of-the-box default:
# build the CatLIP synset vocabulary of the real COCO val2017 captions (25,014) and label the
# 255 COCO photos' captions with it. Outputs go to runs/coco/ (override with CATLIP_RUN_DIR).
source "$(dirname "$0")/env.sh"
SHARED=${CATLIP_SHARED:-$CATLIP_ROOT/../shared}
DATA=$SHARED/data
RUN=${CATLIP_RUN_DIR:-$CATLIP_ROOT/runs/coco}
if [ ! -f "$DATA/coco_captions_val2017.json" ]; then
  echo "catlip: the default job reads $DATA/coco_captions_val2017.json, which is absent." >&2
  echo "        Set CATLIP_SHARED to the folder that holds data/, or run catlip vocab on your captions." >&2
  exit 2
fi
catlip setup-nltk
mkdir -p "$RUN"
catlip vocab --captions "$DATA/coco_captions_val2017.json" --min-count 5 --out "$RUN/vocab.tsv"
catlip labels --vocab "$RUN/vocab.tsv" --captions "$DATA/coco_photos/captions.tsv" --out "$RUN/photo_labels.jsonl"
echo "[catlip] a few captions of the photos and their labels:"
catlip labels --vocab "$RUN/vocab.tsv" \
  "$(sed -n 1p "$DATA/coco_photos/captions.tsv" | cut -f2)" \
  "$(sed -n 6p "$DATA/coco_photos/captions.tsv" | cut -f2)" \
  "$(sed -n 11p "$DATA/coco_photos/captions.tsv" | cut -f2)"
