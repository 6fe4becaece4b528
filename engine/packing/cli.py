"""``catlip pack``: its arguments (:func:`add_pack_parser`), the source they name
(:func:`source_from_args`) and the command (:func:`cmd_pack`); the work is :func:`engine.packing.pack`."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli_common import add_labeler_options, labeler_from_args, require_nltk
from engine.executor import WorkerDied, add_executor_arguments, executor_from_args
from engine.packing import (
    ClassSet,
    ClassSetError,
    CocoInstancesSource,
    CocoSource,
    ImageExclusion,
    ImageFolderSource,
    Img2DatasetSource,
    PackError,
    TsvSource,
    YoloSource,
    pack,
)

PACK_EPILOG = """examples:
  catlip pack --coco captions_val2017.json --images val2017/ --vocab vocab.tsv --out shards/coco
  catlip pack --tsv photos/captions.tsv --images photos/ --vocab vocab.tsv --out shards/photos \\
      --shard-size 500 --holdout-fraction 0.05
  catlip pack --img2dataset laion_part/ --vocab vocab.tsv --out shards/laion --workers 16
  catlip pack --img2dataset /shared/laion/ --vocab vocab.tsv --out /shared/shards --ray auto
class sets (downstream shards: no captions, no --vocab, no NLTK):
  catlip pack --imagefolder imagenet/val --classes in1k.json --out shards/in1k-val
  catlip pack --coco-instances instances_val2017.json --images val2017/ --classes coco.json \\
      --out shards/coco-ml
  catlip pack --yolo ../shared/data/coco128 --split val2017 --classes coco.json \\
      --exclude ../shared/data/coco_photos --out shards/coco128-val

Writes shard-NNNNNN.tar (KEY.jpg|png|webp, and KEY.txt + KEY.lbl, the caption's sorted label
indices, or KEY.cls, the image's class indices into CLASSES.json; int32 little-endian) with a DALI
index shard-NNNNNN.idx, dataset.json and rejects.tsv (images DALI cannot decode, captions that are
not text, each counted by reason; a caption over 4,096 characters is stored and labelled cut to
them, counted as captions_cut). It builds in OUT.partial and moves it to OUT when complete; run
again, the same command packs only the shards an interruption left undone, and 1 or N workers or
Ray give the same bytes. OUT may not be, hold or sit inside an input, and an existing OUT is
replaced only with --overwrite and only if it is an earlier pack. Everything it writes and checks:
docs/data.md (and engine/packing/pack.py's docstring).
"""


def add_pack_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pack`` command to a CLI's subparsers; it runs :func:`cmd_pack`."""
    p = subparsers.add_parser(
        "pack",
        help="pack images + captions (or class-labelled images) into WebDataset shards for DALI",
        description="Turn image-caption pairs into WebDataset tar shards with CatLIP labels\n"
        "(computed once here, so NLTK never runs while training) and DALI index files.\n"
        "Give one source: --coco JSON --images DIR, --tsv FILE --images DIR,\n"
        "or --img2dataset DIR_OR_TARS (with --vocab); or a class set: --imagefolder ROOT,\n"
        "--coco-instances JSON --images DIR, or --yolo ROOT --split NAME (with --classes).",
        epilog=PACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_caption_sources(p)
    _add_class_sources(p)
    _add_output_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(p)
    add_labeler_options(p, from_vocab=True)
    p.set_defaults(func=cmd_pack)
    return p


def _add_caption_sources(p: argparse.ArgumentParser) -> None:
    """--coco, --tsv, --images, --img2dataset, --keep-order."""
    src = p.add_argument_group(
        "caption source (one of --coco, --tsv, --img2dataset, or a class source below)"
    )
    src.add_argument("--coco", type=Path, metavar="JSON", help="COCO caption JSON: one sample per caption")
    src.add_argument(
        "--tsv", type=Path, metavar="FILE", help="file<TAB>caption TSV, files relative to --images"
    )
    src.add_argument(
        "--images", type=Path, metavar="DIR", help="image folder for --coco, --tsv and --coco-instances"
    )
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
        help="pack --coco/--tsv and class-set samples in source order (default: shuffled with a "
        "fixed seed, so the captions of one image, or the images of one class, do not sit together "
        "in a shard)",
    )


def _add_class_sources(p: argparse.ArgumentParser) -> None:
    """--imagefolder, --coco-instances, --yolo with --split and --classes; --exclude, --drop-empty,
    --allow-empty-classes."""
    cls = p.add_argument_group(
        "class source (one of --imagefolder, --coco-instances, --yolo; KEY.cls members, no NLTK)"
    )
    cls.add_argument(
        "--imagefolder",
        type=Path,
        metavar="ROOT",
        help="ROOT/<class>/<image> (nested folders too), single-label; a folder is matched to a "
        "class by name, or by wnid (ImageNet's n01440764/); files that are not images are rejected",
    )
    cls.add_argument(
        "--coco-instances",
        type=Path,
        metavar="JSON",
        help="COCO instances_*.json with --images DIR, multi-label: an image's classes are its "
        "annotations' categories (matched to classes by name)",
    )
    cls.add_argument(
        "--yolo",
        type=Path,
        metavar="ROOT",
        help="YOLO detection set with --split NAME, multi-label: ROOT/images/NAME/*, "
        "ROOT/labels/NAME/<stem>.txt ('class cx cy w h' lines; no file = no objects) and "
        "ROOT/names.yaml (class id -> name, matched to classes by name)",
    )
    cls.add_argument("--split", metavar="NAME", help="the --yolo split, e.g. train2017 or val2017")
    cls.add_argument(
        "--classes",
        type=Path,
        metavar="CLASSES.json",
        help="the class set from `catlip classes` (class index = position); required for class sources",
    )
    cls.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        metavar="LIST_OR_DIR",
        help="leave out images named in a file (one file name, stem or key per line; '#' comments; "
        "text after a tab ignored, so a file<TAB>caption TSV works; an entry with '/' matches the "
        "path under the image folder) or in a folder (the names of its files); repeatable. E.g. "
        "--exclude ../shared/data/coco_photos leaves out the coco128 val2017 images also in coco_photos",
    )
    cls.add_argument(
        "--drop-empty",
        action="store_true",
        help="--coco-instances/--yolo: leave out images with no class (default: keep them with an "
        "empty .cls, as torchvision's CocoDetection does; they are negatives for every class in a "
        "multi-label mAP). ML-GCN/ASL-style COCO multi-label counts only labelled images",
    )
    cls.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="--imagefolder: pack even if a class folder has no files (default: an error naming it)",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """--vocab, --labels, --out, --shard-size, --overwrite, --holdout-fraction, --resize-shorter."""
    p.add_argument(
        "--vocab",
        type=Path,
        help="vocabulary TSV from `catlip vocab`: required for caption sources (--coco, --tsv, "
        "--img2dataset); class sources take --classes instead",
    )
    p.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="caption sources: each caption's synsets from `catlip vocab --labels-out` of the same "
        "vocabulary, instead of labelling again (the same labels; a caption the file lacks is "
        "labelled here and counted, captions_labelled_here)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and dataset.json")
    p.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        metavar="N",
        help="--coco/--tsv and class sources: samples read per shard, which keeps those that pass "
        "(default 1000); "
        "--img2dataset input keeps its sharding (one output shard per input tar)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier pack at OUT (once the new pack is complete); a folder holding "
        "anything else is never replaced",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of images (by a hash of their bytes, so all captions of an "
        "image are on one side) into OUT/val; the rest go to OUT/train (default 0: no split)",
    )
    p.add_argument(
        "--resize-shorter",
        type=_non_negative,
        default=0,
        metavar="N",
        help="store images whose shorter side exceeds N pixels resized to N (aspect kept; Lanczos, "
        "JPEG quality 95), as img2dataset's --image_size N --resize_mode keep_ratio "
        "--resize_only_if_bigger does; smaller images keep their bytes. For training well below the "
        "photos' resolution: less to decode per step and smaller shards (the 255 COCO photos at 128: "
        "192 -> 20 MB). The holdout split hashes the original bytes, so N does not move images "
        "between train and val (default 0: every image as it is)",
    )


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


CAPTION_SOURCES = ("coco", "tsv", "img2dataset")
CLASS_SOURCES = ("imagefolder", "coco_instances", "yolo")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def source_from_args(args: argparse.Namespace):
    """The source the ``pack`` arguments name; SystemExit with what to do when they do not."""
    given = [name for name in CAPTION_SOURCES + CLASS_SOURCES if getattr(args, name, None)]
    if len(given) != 1:
        raise SystemExit(
            "catlip pack: give exactly one source: --coco JSON, --tsv FILE or --img2dataset DIR_OR_TARS "
            "(with --vocab), or --imagefolder ROOT, --coco-instances JSON or --yolo ROOT (with --classes)"
            + (f"; got {', '.join(map(_option, given))}" if given else "")
        )
    if given[0] in CLASS_SOURCES:
        return class_source_from_args(args, given[0])
    if args.vocab is None:
        raise SystemExit(
            f"catlip pack: {_option(given[0])} needs --vocab VOCAB.tsv (from `catlip vocab`) to label its "
            "captions; --vocab is required for caption sources only (--imagefolder, --coco-instances "
            "and --yolo take --classes CLASSES.json instead)"
        )
    misplaced = [
        o for o in ("classes", "split", "drop_empty", "allow_empty_classes", "exclude") if getattr(args, o)
    ]
    if misplaced:
        raise SystemExit(
            f"catlip pack: {', '.join(map(_option, misplaced))} applies to class sources (--imagefolder, "
            f"--coco-instances, --yolo), not to {_option(given[0])}"
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


def class_source_from_args(args: argparse.Namespace, kind: str):
    """The class source (``--imagefolder``, ``--coco-instances``, ``--yolo``) of the arguments."""
    option = _option(kind)
    if args.vocab is not None:
        raise SystemExit(
            f"catlip pack: {option} is labelled by its class set: give --classes CLASSES.json, not --vocab "
            "(the class set records its vocabulary)"
        )
    if args.classes is None:
        raise SystemExit(
            f"catlip pack: {option} needs --classes CLASSES.json (make it with `catlip classes --vocab "
            "VOCAB --names FILE --out CLASSES.json`)"
        )
    for flag, applies in (("split", "yolo"), ("allow_empty_classes", "imagefolder")):
        if getattr(args, flag) and kind != applies:
            raise SystemExit(f"catlip pack: {_option(flag)} applies to {_option(applies)} only")
    if args.drop_empty and kind == "imagefolder":
        raise SystemExit("catlip pack: --drop-empty applies to --coco-instances and --yolo only")
    seed = None if args.keep_order else 0
    try:
        classes = ClassSet.load(args.classes)
        exclude = ImageExclusion(args.exclude) if args.exclude else None
        if kind == "imagefolder":
            return ImageFolderSource(
                args.imagefolder, classes, shuffle_seed=seed, exclude=exclude,
                allow_empty=args.allow_empty_classes,
            )  # fmt: skip
        if kind == "coco_instances":
            if args.images is None:
                raise SystemExit("catlip pack: --coco-instances needs --images DIR, the folder of its images")
            return CocoInstancesSource(
                args.coco_instances, args.images, classes, shuffle_seed=seed, exclude=exclude,
                drop_empty=args.drop_empty,
            )  # fmt: skip
        if not args.split:
            raise SystemExit(f"catlip pack: --yolo needs --split NAME (a folder of {args.yolo}/images)")
        return YoloSource(
            args.yolo, args.split, classes, shuffle_seed=seed, exclude=exclude, drop_empty=args.drop_empty
        )
    except ClassSetError as err:
        raise SystemExit(f"catlip pack: {err}") from None


def cmd_pack(args: argparse.Namespace) -> int:
    """``catlip pack``: build the source, pack it, print the summary."""

    source = source_from_args(args)
    vocab = None
    if getattr(source, "label_member", "lbl") == "cls":
        for note in source.notes:
            print(note)
    else:
        if args.vocab is None or not args.vocab.is_file():
            raise SystemExit(f"catlip pack: {args.vocab}: no such vocabulary (build one with `catlip vocab`)")
        if args.labels is not None and not args.labels.is_file():
            raise SystemExit(
                f"catlip pack: --labels {args.labels}: no such file (write it with `catlip vocab --labels-out`)"
            )
        require_nltk(args)
        vocab = args.vocab
    try:
        with executor_from_args(args) as executor:
            stats = pack(
                source,
                args.out,
                vocab,
                shard_size=args.shard_size,
                holdout_fraction=args.holdout_fraction,
                labeler=labeler_from_args(args),
                labels=args.labels,
                progress=not args.quiet,
                executor=executor,
                overwrite=args.overwrite,
                nltk_data=(str(args.nltk_data.resolve()),) if args.nltk_data else (),
                resize_shorter=args.resize_shorter,
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
