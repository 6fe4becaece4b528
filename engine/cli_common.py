"""What several ``catlip`` commands share: the labeler options and the NLTK data check."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_labeler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labeling")
    g.add_argument(
        "--no-pos-filter",
        dest="pos_filter",
        action="store_false",
        help="look every token up in WordNet, not only those tagged NN* (faster, noisier)",
    )
    g.add_argument(
        "--official",
        action="store_true",
        help="reproduce the official CatLIP (corenet) labeling exactly: its caption cleaning, "
        "sentence splitting, and no POS filter",
    )
    g.add_argument(
        "--nltk-data",
        metavar="DIR",
        type=Path,
        help="extra directory to search for NLTK data (as NLTK_DATA does)",
    )


def require_nltk(args: argparse.Namespace) -> None:
    from catlip.nltk_setup import NltkDataError, add_to_nltk_path, check_nltk_data

    if getattr(args, "nltk_data", None):
        add_to_nltk_path(args.nltk_data)
    try:
        check_nltk_data()
    except NltkDataError as err:
        raise SystemExit(f"catlip: {err}") from err
