"""Packing image-caption pairs into labelled WebDataset shards for the DALI loader.

sources.py  where samples come from (COCO JSON, TSV, img2dataset tars) as RawSample, and the tasks
shards.py   image validation (DALI's CPU decoder) and the shard writer with DALI index files
worker.py   one task on a worker: read, check, label, write its shard, mark it done
pack.py     the orchestration: plan, build beside the target (resumable), merge, publish
"""

from engine.packing.pack import PackError, PackStats, SplitStats, pack
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
    "PackError",
    "PackStats",
    "RawSample",
    "ShardWriter",
    "SplitStats",
    "TsvSource",
    "check_image",
    "pack",
    "sanitize_key",
]
