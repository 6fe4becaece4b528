"""The data pipeline: packed WebDataset shards (``catlip pack``) -> DALI -> training batches.

pipeline.py  the DALI graph of one rank (reader, guard, decode, augment or eval transform,
             normalise, labels) and zero-shot's eval transform on loose files (ImageTransform)
loader.py    DaliLoader: iteration, failure replay, label checks, resume state; its options in
             one frozen LoaderOptions; make_loader
dataset.py   a packed folder's shards and dataset.json, and the train/val consistency checks
sources.py   the loaders of a run config (data.train, data.val) and of a class pack
tensors.py   TensorLoader: batches held in memory (tests, benchmarks, synthetic runs)
reshard.py   where an epoch goes on when a run resumes on another number of ranks, and what it
             repeats and skips

Multi-scale batches (``data.multiscale``): the draws and the chunk plan the loader runs are in
engine/multiscale.py.
"""

from engine.data.dataset import LABEL_MEMBERS, DataError, read_dataset_meta, resolve_shards
from engine.data.loader import DaliLoader, LoaderOptions, make_loader
from engine.data.pipeline import CLIP_MEAN, CLIP_STD, ImageTransform, PipelineSpec, cuda_device_count
from engine.data.sources import class_pack_loader, loaders_from_config
from engine.data.tensors import TensorLoader

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "LABEL_MEMBERS",
    "DaliLoader",
    "DataError",
    "ImageTransform",
    "LoaderOptions",
    "PipelineSpec",
    "TensorLoader",
    "class_pack_loader",
    "cuda_device_count",
    "loaders_from_config",
    "make_loader",
    "read_dataset_meta",
    "resolve_shards",
]
