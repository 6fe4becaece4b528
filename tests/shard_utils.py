"""Reading packed WebDataset shards back in tests."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

PHOTO_SHARD_SIZE = 64  # the session's packed COCO photos (conftest.packed_photos)


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of a WebDataset tar."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out[key][ext] = tar.extractfile(m).read()
    return dict(out)


def read_all(shards: Path) -> dict[str, dict[str, bytes]]:
    meta = json.loads((shards / "dataset.json").read_text())
    out: dict[str, dict[str, bytes]] = {}
    for name in meta["shard_names"]:
        out.update(read_shard(shards / name))
    return out


def labels_of(sample: dict[str, bytes]) -> list[int]:
    return np.frombuffer(sample["lbl"], "<i4").tolist()
