"""Packing image-caption pairs (or class-labelled images) into WebDataset shards for the DALI loader.

sources.py  where samples come from (COCO JSON, TSV, img2dataset tars) as RawSample, and the tasks
classsets.py  class-labelled sources (ImageFolder, COCO instances, YOLO) against a CLASSES.json
shards.py   image validation (DALI's CPU decoder) and the shard writer with DALI index files
worker.py   one task on a worker: read, check, label, write its shard, mark it done
pack.py     the orchestration: plan, build beside the target (resumable), merge, publish
"""

from engine.packing.classsets import (
    ClassSet,
    ClassSetError,
    CocoInstancesSource,
    ImageExclusion,
    ImageFolderSource,
    YoloSource,
)
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
    "ClassSet",
    "ClassSetError",
    "CocoInstancesSource",
    "CocoSource",
    "ImageExclusion",
    "ImageFolderSource",
    "YoloSource",
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
