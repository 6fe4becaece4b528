"""``catlip classes``, ``catlip predict`` and ``catlip evaluate``: a class set onto the synset head,
and the head's zero-shot readout.

The parsers and the commands; the work is :func:`catlip.classes.build_class_map` and
:mod:`engine.zeroshot` (imported when predict or evaluate runs: it imports torch and DALI).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from catlip.classes import build_class_map, format_table


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``classes``, ``predict`` and ``evaluate``."""
    p = sub.add_parser(
        "classes",
        help="map a class set (names or wnids) onto WordNet synsets and the vocabulary's rows",
        description="Give each class a WordNet noun synset (the name as a lemma, multi-word names "
        "joined with underscores or as one word; a name that is no lemma by its head noun; "
        "--overrides first), then the vocabulary rows its zero-shot score and synset-initialised "
        "classifier read: its own row, else the row of its word as captions labelled it, else the "
        "nearest synsets by hypernym/hyponym links that have one. Prints the table (index, name, "
        "synset, WordNet distance, rows, how) and writes CLASSES.json (format catlip-classes/1: "
        "per class its wnid, synset, rows, row wnids, distance and how; the vocabulary's path, "
        "size and SHA-256). A class that does not map is an error naming it.",
    )
    p.add_argument(
        "--vocab", type=Path, required=True, help="vocabulary TSV from `catlip vocab` (the checkpoint's)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--names",
        type=Path,
        metavar="FILE",
        help="class names: one a line, or a YOLO-style YAML with `names:` (a list or id: name)",
    )
    source.add_argument(
        "--wnids", type=Path, metavar="FILE", help="ImageNet-style wnids (n02084071), one a line"
    )
    p.add_argument(
        "--overrides",
        type=Path,
        metavar="TSV",
        help="name<TAB>wnid (or name<TAB>synset such as dog.n.01) lines that win over the automatic mapping",
    )
    p.add_argument(
        "--allow-unmapped",
        action="store_true",
        help="leave out (and list in the JSON's 'unmapped') classes that map to nothing, instead of failing",
    )
    p.add_argument("--out", type=Path, required=True, help="CLASSES.json to write")
    p.set_defaults(func=cmd_classes)

    p = sub.add_parser(
        "predict",
        help="top classes of image files, zero-shot, from a CatLIP checkpoint and CLASSES.json",
        description="Score each image on every class of CLASSES.json with the head's rows of the "
        "class's synsets (a class's score: the max logit over its rows; shown as sigmoid(score) "
        "and the logit) after the trainer's eval transform (resize, center crop, CLIP "
        "normalisation), and print the --top classes per image. Files that are not images are "
        "skipped with a message; the exit status is 1 when no image could be read.",
    )
    _add_model_inputs(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG or WebP files")
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="zero-shot mAP (and top-1/top-5 on single-label sets) on a class pack",
        description="Score every image of a class pack (`catlip pack --imagefolder/--coco-instances/"
        "--yolo ... --classes CLASSES.json`, one split folder) with the head's rows of each class "
        "(max logit over its rows) and report, as the last line, the mAP over the classes that "
        "have a positive image, the images, and chance (the mean positive rate); single-label "
        "sets add top-1 and top-5 accuracy.",
    )
    _add_model_inputs(p)
    p.add_argument(
        "--data", type=Path, required=True, help="the class pack's split folder (with dataset.json)"
    )
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _add_model_inputs(p: argparse.ArgumentParser) -> None:
    """The options predict and evaluate share: the model, the class set, the device."""
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a DeepSpeed checkpoint (tag dir, checkpoints/ dir or run out_dir), a `catlip export` "
        ".safetensors file or a `catlip export --out DIR` folder",
    )
    p.add_argument(
        "--classes", type=Path, required=True, help="CLASSES.json from `catlip classes` (same vocabulary)"
    )
    p.add_argument("--ema", action="store_true", help="a checkpoint directory's EMA weights")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")


def cmd_classes(args: argparse.Namespace) -> int:
    class_map = build_class_map(
        args.vocab,
        names=args.names,
        wnids=args.wnids,
        overrides=args.overrides,
        allow_unmapped=args.allow_unmapped,
    )
    print(format_table(class_map))
    class_map.save(args.out)
    print(f"wrote {args.out}: {class_map.summary()} onto {args.vocab} ({class_map.vocab['size']} synsets)")
    if class_map.unmapped:
        print(f"left out {len(class_map.unmapped)} unmapped: {', '.join(class_map.unmapped)}")
    return 0


def _zeroshot_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A zero-shot command's input errors as one line and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        from engine.zeroshot import ZeroShotError

        try:
            return func(args)
        except ZeroShotError as err:
            print(f"catlip {args.command}: error: {err}", file=sys.stderr)
            return 2

    return run


@_zeroshot_errors
def cmd_predict(args: argparse.Namespace) -> int:
    from engine.zeroshot import ZeroShotClassifier, predict

    if args.top < 1 or args.batch_size < 1:
        raise SystemExit("catlip predict: --top and --batch-size must be >= 1")
    classifier = ZeroShotClassifier.from_files(
        args.checkpoint, args.classes, device=args.device, ema=args.ema
    )
    done, skipped = predict(classifier, args.images, top=args.top, batch_size=args.batch_size)
    skipped_at = dict(skipped)
    for path in map(str, args.images):
        if path in skipped_at:
            print(f"{path}: skipped: {skipped_at[path]}", file=sys.stderr)
    width = max(len(n) for n in classifier.names)
    for p in done:
        print(f"{p.path}:")
        for rank, (name, prob, score) in enumerate(p.top, start=1):
            print(f"  {rank:>2}. {name:<{width}}  {prob:.4f}  (logit {score:+.3f})")
    if skipped:
        print(f"{len(done)} image(s) classified, {len(skipped)} skipped", file=sys.stderr)
    return 0 if done else 1


@_zeroshot_errors
def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.zeroshot import ZeroShotClassifier, evaluate

    if args.batch_size < 1:
        raise SystemExit("catlip evaluate: --batch-size must be >= 1")
    classifier = ZeroShotClassifier.from_files(
        args.checkpoint, args.classes, device=args.device, ema=args.ema
    )
    result = evaluate(
        classifier,
        args.data,
        batch_size=args.batch_size,
        num_threads=args.threads,
        progress=not args.no_progress,
    )
    print(result.summary())
    return 0
