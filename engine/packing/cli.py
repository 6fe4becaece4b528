"""``catlip pack``: its arguments (:func:`add_pack_parser`) and the command (:func:`cmd_pack`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli_common import add_labeler_options, require_nltk

PACK_EPILOG = """examples:
  catlip pack --coco captions_val2017.json --images val2017/ --vocab vocab.tsv --out shards/coco
  catlip pack --tsv photos/captions.tsv --images photos/ --vocab vocab.tsv --out shards/photos \\
      --shard-size 500 --holdout-fraction 0.05
  catlip pack --img2dataset laion_part/ --vocab vocab.tsv --out shards/laion --workers 16
  catlip pack --img2dataset /shared/laion/ --vocab vocab.tsv --out /shared/shards --ray auto

Each sample is KEY.jpg|png|webp (original bytes), KEY.txt (caption) and KEY.lbl (sorted label
indices, int32 little-endian); each shard-NNNNNN.tar has a DALI index shard-NNNNNN.idx. Every
image is checked with DALI's own CPU decoder; bad ones are skipped with a message, counted by
reason in dataset.json, and listed in rejects.tsv.

The pack is built in OUT.partial and moved to OUT when complete; an existing OUT is replaced only
with --overwrite, and only then. Each finished shard is marked done: after an interruption (a
killed worker, a corrupt input tar), the same command packs only the missing shards. Shard k
holds the samples of input slice k (--coco/--tsv: --shard-size samples; --img2dataset: input tar
k), so the output is the same, byte for byte, on 1 or N workers or on Ray.
"""


def add_pack_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pack`` command to a CLI's subparsers; it runs :func:`cmd_pack`."""
    p = subparsers.add_parser(
        "pack",
        help="pack images + captions into labelled WebDataset shards for the DALI loader",
        description="Turn image-caption pairs into WebDataset tar shards with CatLIP labels\n"
        "(computed once here, so NLTK never runs while training) and DALI index files.\n"
        "Give one source: --coco JSON --images DIR, --tsv FILE --images DIR,\n"
        "or --img2dataset DIR_OR_TARS.",
        epilog=PACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (exactly one of --coco, --tsv, --img2dataset)")
    src.add_argument("--coco", type=Path, metavar="JSON", help="COCO caption JSON: one sample per caption")
    src.add_argument(
        "--tsv", type=Path, metavar="FILE", help="file<TAB>caption TSV, files relative to --images"
    )
    src.add_argument("--images", type=Path, metavar="DIR", help="image folder for --coco and --tsv")
    src.add_argument(
        "--img2dataset",
        type=Path,
        nargs="+",
        metavar="DIR_OR_TARS",
        help="img2dataset output: a folder of .tar shards, or the tars (NNNNNNNNN.jpg/.txt/.json)",
    )
    src.add_argument(
        "--keep-order",
        action="store_true",
        help="pack --coco/--tsv samples in source order (default: shuffled with a fixed seed, so "
        "the captions of one image do not sit together in a shard)",
    )
    p.add_argument("--vocab", type=Path, required=True, help="vocabulary TSV from `catlip vocab`")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and dataset.json")
    p.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        metavar="N",
        help="--coco/--tsv: samples read per shard, which keeps those that pass (default 1000); "
        "--img2dataset input keeps its sharding (one output shard per input tar)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty OUT (once the new pack is complete)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of images (by a hash of their bytes, so all captions of an "
        "image are on one side) into OUT/val; the rest go to OUT/train (default 0: no split)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from engine.executor import add_executor_arguments

    add_executor_arguments(p)
    add_labeler_options(p)
    p.set_defaults(func=cmd_pack)
    return p


def source_from_args(args: argparse.Namespace):
    """The source the ``pack`` arguments name; SystemExit with what to do when they do not."""
    from engine.packing import CocoSource, Img2DatasetSource, TsvSource

    given = [name for name in ("coco", "tsv", "img2dataset") if getattr(args, name)]
    if len(given) != 1:
        raise SystemExit(
            "catlip pack: give exactly one of --coco JSON, --tsv FILE, --img2dataset DIR_OR_TARS"
        )
    seed = None if args.keep_order else 0
    if args.img2dataset:
        return Img2DatasetSource(args.img2dataset)
    if args.images is None or not args.images.is_dir():
        raise SystemExit(
            f"catlip pack: --{given[0]} needs --images DIR, an existing folder (got {args.images})"
        )
    if args.coco:
        return CocoSource(args.coco, args.images, shuffle_seed=seed)
    return TsvSource(args.tsv, args.images, shuffle_seed=seed)


def cmd_pack(args: argparse.Namespace) -> int:
    """``catlip pack``: build the source, pack it, print the summary."""
    from engine.executor import WorkerDied, executor_from_args
    from engine.packing import PackError, pack

    source = source_from_args(args)
    if not args.vocab.is_file():
        raise SystemExit(f"catlip pack: {args.vocab}: no such vocabulary (build one with `catlip vocab`)")
    require_nltk(args)
    try:
        with executor_from_args(args) as executor:
            stats = pack(
                source,
                args.out,
                args.vocab,
                shard_size=args.shard_size,
                holdout_fraction=args.holdout_fraction,
                pos_filter=args.pos_filter,
                official=args.official,
                progress=not args.quiet,
                executor=executor,
                overwrite=args.overwrite,
                nltk_data=(str(args.nltk_data.resolve()),) if args.nltk_data else (),
            )
    except WorkerDied as err:
        raise SystemExit(
            f"catlip pack: {err}. The shards finished so far are kept in {args.out}.partial; "
            "run the same command again to pack only the missing ones"
        ) from err
    except PackError as err:
        raise SystemExit(f"catlip pack: {err}") from err
    print(stats.summary())
    print(f"wrote {args.out}/dataset.json and {args.out}/rejects.tsv")
    return 0
