"""Shared fixtures. Triton runs in interpreter mode on machines without a GPU (set before import)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # Triton kernels run on the CPU through the interpreter; it must be chosen before import.
    import torch

    _cuda = torch.cuda.is_available()
except ImportError:
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CATLIP_SHARED", ROOT.parent / "shared")) / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real COCO captions and photos), or skip where it is absent."""
    if not (SHARED_DATA / "coco_captions_val2017.json").is_file():
        pytest.skip(f"real COCO data not found at {SHARED_DATA} (set CATLIP_SHARED to the shared/ folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nltk_ready() -> None:
    """WordNet 3.0 and the tagger must be installed (`catlip setup-nltk`); fail loudly if not."""
    from catlip.nltk_setup import NltkDataError, check_nltk_data

    try:
        check_nltk_data()
    except NltkDataError as err:
        pytest.fail(f"{err} (the test command runs `catlip setup-nltk` first)")


@pytest.fixture(scope="session")
def coco_captions(shared_data: Path) -> list[str]:
    import json

    captions = []
    for name in ("coco_captions_val2017.json", "coco_captions_train2017_subset80.json"):
        data = json.loads((shared_data / name).read_text())
        captions += [a["caption"] for a in data["annotations"]]
    return captions
