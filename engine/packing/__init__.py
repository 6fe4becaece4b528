"""Packing image-caption pairs into labelled WebDataset shards for the DALI loader.

sources.py  where samples come from (COCO JSON, TSV, img2dataset tars) as RawSample
shards.py   image validation (a full decode) and the shard writer with DALI index files
pack.py     the orchestration: read, validate, label, split, write, dataset.json
"""

from engine.packing.pack import PackStats, SplitStats, pack
from engine.packing.shards import SHARD_PATTERN, ShardWriter, check_image
from engine.packing.sources import (
    IMAGE_EXTS,
    CocoSource,
    Img2DatasetSource,
    RawSample,
    TsvSource,
    sanitize_key,
)

__all__ = [
    "IMAGE_EXTS",
    "SHARD_PATTERN",
    "CocoSource",
    "Img2DatasetSource",
    "PackStats",
    "RawSample",
    "ShardWriter",
    "SplitStats",
    "TsvSource",
    "check_image",
    "pack",
    "sanitize_key",
]
