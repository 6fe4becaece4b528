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
    from catlip.nltk_resources import NltkDataError, check_nltk_data

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


@pytest.fixture(scope="session")
def packed_photos(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, nltk_ready: None) -> Path:
    """The 255 COCO photos x 5 captions packed in shards of 64 with a min-count-2 vocabulary."""
    from shard_utils import PHOTO_SHARD_SIZE

    from catlip.captions import iter_captions
    from catlip.vocab import build_vocabulary, write_vocabulary
    from engine.packing import TsvSource, pack

    root = tmp_path_factory.mktemp("photos")
    photos = shared_data / "coco_photos"
    captions = [c for _, c in iter_captions(photos / "captions.tsv")]
    vocab, stats = build_vocabulary(captions, min_count=2, progress=False)
    write_vocabulary(root / "vocab.tsv", vocab, stats)
    pack(
        TsvSource(photos / "captions.tsv", photos),
        root / "shards",
        root / "vocab.tsv",
        shard_size=PHOTO_SHARD_SIZE,
        progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="session")
def photo_vocab(packed_photos: Path) -> Path:
    return packed_photos.parent / "vocab.tsv"
