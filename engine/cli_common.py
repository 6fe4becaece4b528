"""What several ``catlip`` commands share: the labeler options and the NLTK data check."""

from __future__ import annotations

import argparse
from pathlib import Path

from catlip.labels import (
    DEFAULT_LABELER,
    LABELER_HELP,
    LABELER_NAMES,
    LabelerSpec,
    VocabularyError,
    vocab_labeler,
)


def add_labeler_options(p: argparse.ArgumentParser, *, from_vocab: bool = False) -> None:
    """--labeler, --official, --no-pos-filter, --nltk-data. ``from_vocab``: the command labels with
    its vocabulary's labeler, and these only state which one is expected (a mismatch is refused)."""
    g = p.add_argument_group(
        "labeling",
        "the vocabulary's own labeler is used (vocab.tsv.json); naming one here checks it"
        if from_vocab
        else None,
    )
    g.add_argument(
        "--labeler",
        choices=LABELER_NAMES,
        default=None,
        help="how captions become synsets"
        + ("" if from_vocab else f" (default {DEFAULT_LABELER})")
        + "; "
        + "; ".join(f"{k}: {v}" for k, v in LABELER_HELP.items()),
    )
    g.add_argument(
        "--no-pos-filter",
        dest="pos_filter",
        action="store_false",
        default=None,
        help="look every token up in WordNet, not only those tagged NN* (faster, noisier)",
    )
    g.add_argument(
        "--official",
        action="store_true",
        help="the same as --labeler corenet: the official CatLIP (corenet) labeling exactly, its "
        "caption cleaning, sentence splitting, and no POS filter",
    )
    g.add_argument(
        "--nltk-data",
        metavar="DIR",
        type=Path,
        help="extra directory to search for NLTK data (as NLTK_DATA does)",
    )


def labeler_from_args(args: argparse.Namespace):
    """The LabelerSpec the options name, or None when they name none (--labeler, --official and
    --no-pos-filter all left out)."""
    name = args.labeler
    if args.official:
        if name not in (None, "corenet"):
            raise SystemExit(f"catlip {args.command}: --official is --labeler corenet, not --labeler {name}")
        name = "corenet"
    if name is None and args.pos_filter is None:
        return None
    return LabelerSpec(name or DEFAULT_LABELER, args.pos_filter is not False)


def vocab_labeler_for(args: argparse.Namespace, vocab: Path):
    """The labeler of ``vocab`` (its sidecar), checked against the one the options name; a
    vocabulary without a sidecar takes the named one. SystemExit with both named on a mismatch."""
    named = labeler_from_args(args)
    try:
        spec = vocab_labeler(vocab)
    except VocabularyError:
        if named is None:
            raise
        return named
    if named is not None and (named.name, named.pos_filter) != (spec.name, spec.pos_filter):
        raise VocabularyError(
            f"{vocab} was built with labeler {spec.id}, but --labeler/--official/--no-pos-filter name "
            f"{named.id}: labels of different labelers do not mix (leave them out to use the vocabulary's)"
        )
    return spec


def require_nltk(args: argparse.Namespace) -> None:
    from catlip.nltk_resources import NltkDataError, add_to_nltk_path, check_nltk_data

    if getattr(args, "nltk_data", None):
        add_to_nltk_path(args.nltk_data)
    try:
        check_nltk_data()
    except NltkDataError as err:
        raise SystemExit(f"catlip: {err}") from err
