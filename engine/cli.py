"""``catlip`` (also ``python -m engine``): the command-line entry point; ``catlip <command> --help``
explains each command.

One module per command group builds its parsers and runs its commands; the work is done by library
functions in ``catlip/`` and ``engine/``:

- ``engine/cli_labels.py``: ``setup-nltk``, ``vocab``, ``labels`` (captions to synsets);
- ``engine/packing/cli.py``: ``pack`` (images and captions, or class sets, to shards);
- ``engine/cli_train.py``: ``train``, ``export``, ``config`` (runs, their weights, their configs);
- ``engine/cli_transfer.py``: ``classes``, ``predict``, ``evaluate`` (class sets, zero-shot);
- ``engine/cli_common.py``: the labeler options and NLTK check several commands share.

Modules that import torch, DeepSpeed or DALI are imported by the command that needs them, so
``catlip --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catlip import __version__
from catlip.captions import CaptionFileError
from catlip.classes import ClassMapError
from catlip.labels import VocabularyError
from engine import cli_labels, cli_train, cli_transfer
from engine.packing.cli import add_pack_parser

EPILOG = """examples:
  catlip setup-nltk                                   # WordNet 3.0 + tagger, offline-capable
  catlip vocab --captions captions_val2017.json --min-count 5 --out vocab.tsv
  catlip labels --vocab vocab.tsv "A dog catches a frisbee." "two cats on a sofa"
  catlip labels --vocab vocab.tsv --captions photos/captions.tsv --out labels.jsonl
  catlip pack --tsv photos/captions.tsv --images photos --vocab vocab.tsv --out shards
  catlip train --config configs/coco_tiny_cpu.yaml --set run.steps=100
  catlip export runs/main/latest/train/checkpoints --out model.safetensors [--ema]
  catlip config list                                  # the shipped run configs (show NAME prints one)
  catlip classes --vocab vocab.tsv --names ../shared/data/coco128/names.yaml --out coco_classes.json
  catlip predict --checkpoint model.safetensors --classes coco_classes.json photo1.jpg photo2.jpg --top 3
  catlip evaluate --checkpoint runs/main/latest/train --classes coco_classes.json --data coco128_val
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catlip",
        description="CatLIP pre-training engine: caption-to-synset labels, vocabulary, training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"catlip-engine {__version__} ({Path(__file__).resolve().parents[1]})",
        help="print the version and the folder this code runs from, and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    cli_labels.add_parsers(sub)  # setup-nltk, vocab, labels
    add_pack_parser(sub)
    cli_train.add_parsers(sub)  # train, export, config
    cli_transfer.add_parsers(sub)  # classes, predict, evaluate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CaptionFileError, VocabularyError, ClassMapError) as err:
        print(f"catlip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
