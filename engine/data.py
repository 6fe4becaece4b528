"""The DALI loader: packed WebDataset shards -> normalised image batches and padded label lists.

Pipeline (one per rank, ``engine/packing/`` makes the shards)::

    readers.webdataset(ext=["jpg;jpeg;png;webp", "lbl"|"cls"], shard_id=rank, num_shards=world_size,
                       pad_last_batch=True, missing_component_behavior="skip")
      -> guard: magic bytes (JPEG FFD8FF...FFD9, PNG, RIFF....WEBP), then the pixel count its header
         gives (at most the packer's MAX_PIXELS), in-pipeline conditionals
      -> decode on "mixed" (nvJPEG) where a GPU is visible, else "cpu"
           train: random-area ROI decode (RandomResizedCrop) -> resize, random horizontal flip
           eval:  resize the shorter side -> center crop
      -> crop_mirror_normalize to float CHW with the CLIP mean and std
    labels: the .lbl (caption packs) or .cls (class packs) bytes read as int32, padded to
            max_labels with -1

The label member is the one the pack's ``dataset.json`` names in ``label_member`` ("lbl" when it
names none): a caption pack's ``.lbl`` holds vocabulary rows (ids < ``vocab_size``), a class
pack's ``.cls`` holds class indices (ids < ``num_classes``) into its ``CLASSES.json``.

Samples that fail the guard become zero images with ``valid=False`` (DALI has no skip-on-error:
one undecodable image raises and invalidates the whole pipeline). What passes the guard and still
fails to decode (a well-framed JPEG corrupt inside) raises in DALI; the loader logs it, counts it,
rebuilds the pipeline from the checkpoint taken before that batch and replays the batch with every
sample routed to the placeholder, so the batch comes out with ``valid`` all False. Lost: the real
samples of that one batch (counted in ``lost_samples``), and from then on this rank's random crops
and flips differ from those of a run that never failed (the reader position is the same). Every
rank still yields the same number of batches, which data-parallel training needs.

Sharding: DALI splits the sample list into ``world_size`` contiguous ranges and moves each rank to
the next range every epoch (``stick_to_shard=False``). ``pad_last_batch=True`` repeats a range's
last sample so every rank produces ``ceil(ceil(N / world_size) / batch_size)`` batches per epoch.
With ``drop_last`` (training) only the batches all ranks have in full are yielded; without it
(evaluation) every batch is yielded and the repeated padding samples have ``valid=False``.

Resume: DALI's own checkpointing (``enable_checkpointing=True``) works on CPU pipelines in DALI
2.4, conditionals and random operators included, so ``state_dict()`` holds the pipeline's
checkpoint (reader position, shuffle buffer and RNG states, ~1 kB) and ``load_state_dict()``
rebuilds the pipeline from it: the batches after a restore are those the uninterrupted run would
have seen, with no fast-forward. The state is per rank.

Multi-scale (``multiscale``, training only; engine/multiscale.py draws each batch's (h, w, batch)):
the pipeline's batch is a fixed ``chunk`` (the gcd of the table's batches, 8 for the recipes),
an external source feeds every iteration's (h, w), which the random-resized crop is resized to
(and the placeholder made at), and a batch of ``b`` samples is ``b / chunk`` iterations
concatenated. The source's sizes are a pure function of the position (chunk in the epoch, batch
index), so a pipeline rebuilt from a checkpoint (resume, or the replay after a decode error, even
in the middle of a batch) gets a new source started at that position. An epoch ends at the first
draw that no longer fits in its full chunks (that draw opens the next epoch), which drops at most
one largest batch less a chunk per epoch. Why this and not the alternatives (perf/bench_multiscale.py
``--part dali``, 255 COCO photos x 5, CPU decoding, 2 threads, 9 sizes 32-96 px, base batch 32):
  * a variable batch in one pipeline: DALI 2.4 readers refuse it ("Batch size has to be uniform
    across one iteration": the reader always gives max_batch_size), so the reader would have to
    leave DALI for an external source, losing its sharding, shuffle and checkpoint;
  * one pipeline per scale: each has its own reader, shuffle buffer and prefetch queue, so the
    epochs of the scales are independent (samples repeated or skipped, no single resumable
    position); measured: build 1.48 s vs 0.16 s, +628 MB resident vs +199 MB (shuffle buffer 256),
    and the prefetch queues scale with the table: 2 batches x 13 scales x ~0.6 GB (1024 x 224^2 x 3
    float32) ~ 16 GB for the ViT-B recipe, against 2 x 8 x 320^2 x 3 x 4 B = 20 MB for chunks of 8;
  * chunks (chosen): 0.16 s to build, one reader; chunks of 8 at the fixed size run at 160
    images/s against 179 for whole batches of 32 (the per-iteration overhead, ~10% on 2 CPU
    threads; a GPU decoder prefers bigger iterations: a table with ``multiple: 32`` gives chunks
    of 32 at a pixel error under 2% at ViT-B sizes).
"""

from __future__ import annotations

import base64
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catlip.readers import load_json
from engine.multiscale import MultiScale, Scale
from engine.packing.shards import MAX_PIXELS

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXT = "jpg;jpeg;png;webp"
MAX_CONSECUTIVE_FAILURES = 8  # a pipeline that fails this often in a row is not a bad sample
STATE_VERSION = 2  # the DALI graph's operators (2: the pixel-count guard); DALI's checkpoint names them
_PACK_KIND = {"lbl": "caption pack", "cls": "class pack"}
LABEL_MEMBERS = ("lbl", "cls")  # caption labels (vocabulary rows); class indices (CLASSES.json)
MAX_CAPTION_BYTES = 1024  # captions are cut here (CLIP's 77 tokens are ~300 bytes of English)


def cuda_device_count() -> int:
    """CUDA devices DALI can see; 0 (not an exception) where there is no driver."""
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return GetCUDADeviceCount()
    except Exception:  # noqa: BLE001 - any failure to reach a driver means no GPU
        return 0


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Tar paths from a packed folder (its ``dataset.json``, else its ``*.tar``), a tar, or a list."""
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        if path.is_dir():
            meta_path = path / "dataset.json"
            if meta_path.is_file():
                meta = load_json(meta_path, DataError)
                if not isinstance(meta, dict):
                    raise DataError(f"{meta_path}: not a dataset.json of `catlip pack` (not an object)")
                if "shard_names" not in meta:
                    splits = ", ".join(str(path / s) for s in meta.get("splits", {}))
                    raise ValueError(f"{path} holds the splits {splits}: give one of them")
                paths = [path / name for name in meta["shard_names"]]
            else:
                paths = sorted(path.glob("*.tar"))
        else:
            paths = [path]
    else:
        paths = [Path(p) for p in shards]
    if not paths:
        raise ValueError(f"no .tar shards in {shards}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shards not found: {', '.join(missing[:5])}")
    return paths


def _index_paths(paths: list[Path]) -> list[str] | None:
    """The ``.idx`` beside each tar, or None (DALI then scans every tar: slow) if any is missing."""
    idx = [p.with_suffix(".idx") for p in paths]
    if all(p.is_file() for p in idx):
        return [str(p) for p in idx]
    warnings.warn(
        "some shards have no .idx beside them; DALI will scan the tars at start-up (re-pack with "
        "`catlip pack`, or run DALI's wds2idx)",
        stacklevel=3,
    )
    return None


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that defines the DALI graph of one rank (the checkpoint must match it)."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...] | None
    decode_device: str  # "cpu" or "mixed"
    train: bool
    size: tuple[int, int]  # (H, W)
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, float, float]  # in 0-255 units
    std: tuple[float, float, float]
    max_labels: int
    shard_id: int
    num_shards: int
    shuffle_buffer: int
    keys: bool  # return the sample keys with each batch
    captions: bool = False  # also read the .txt member (contrastive objectives tokenise it)
    label_ext: str = "lbl"  # the label member: "lbl" (caption labels) or "cls" (class indices)
    multiscale: bool = False  # each iteration's (h, w) comes from an external source (train only)


def _build_graph(spec: PipelineSpec, keep_source: Any, size_source: Any = None) -> tuple:
    """The DALI graph (called inside ``pipeline_def``); returns the pipeline outputs.

    With ``spec.multiscale``, ``size_source`` gives each iteration's (h, w) per sample (B, 2)
    float32 (the same for the whole iteration): the crop is resized to it, the placeholder made at
    it, and ``spec.size`` is not used."""
    from nvidia.dali import fn, types

    components = fn.readers.webdataset(
        paths=list(spec.paths),
        index_paths=list(spec.index_paths) if spec.index_paths else None,
        ext=[IMAGE_EXT, spec.label_ext] + (["txt"] if spec.captions else []),
        # .lbl / .cls are little-endian int32 (x86 and ARM alike); .txt is UTF-8 bytes
        dtypes=[types.UINT8, types.INT32] + ([types.UINT8] if spec.captions else []),
        missing_component_behavior="skip",
        shard_id=spec.shard_id,
        num_shards=spec.num_shards,
        random_shuffle=spec.train,
        initial_fill=spec.shuffle_buffer,
        pad_last_batch=True,
        stick_to_shard=False,
        name="Reader",
    )
    img, lbl = components[0], components[1]
    keep = fn.external_source(source=keep_source, batch=True, dtype=types.BOOL)  # (B,) scalars
    # The guard reads 12 head bytes and 2 tail bytes; pad makes both safe on short or empty data.
    head = fn.pad(img[0:12], axes=[0], shape=[12], fill_value=0)
    tail = fn.pad(img[-2:], axes=[0], shape=[2], fill_value=0)
    is_jpeg = (
        (head[0] == 0xFF) & (head[1] == 0xD8) & (head[2] == 0xFF) & (tail[0] == 0xFF) & (tail[1] == 0xD9)
    )
    is_png = (head[0] == 0x89) & (head[1] == 0x50) & (head[2] == 0x4E) & (head[3] == 0x47)
    is_riff = (head[0] == 0x52) & (head[1] == 0x49) & (head[2] == 0x46) & (head[3] == 0x46)
    is_webp = is_riff & (head[8] == 0x57) & (head[9] == 0x45) & (head[10] == 0x42) & (head[11] == 0x50)
    magic = (is_jpeg | is_png | is_webp) & keep
    if magic:  # the size its header gives, before any decode: a 388 KB PNG can hold 20000 x 20000 pixels
        shape = fn.peek_image_shape(img, dtype=types.INT64)  # (H, W, C)
        small = shape[0] * shape[1] <= MAX_PIXELS  # the packer's limit
    else:
        small = magic
    valid = magic & small
    h, w = spec.size
    if spec.multiscale:
        size = fn.external_source(source=size_source, batch=True, dtype=types.FLOAT)  # (B, 2): h, w
        h, w = size[0], size[1]
    mirror = fn.random.coin_flip(probability=0.5) if spec.train else 0
    if valid:
        if spec.train:
            image = fn.decoders.image_random_crop(
                img,
                device=spec.decode_device,
                output_type=types.RGB,
                random_area=list(spec.scale),
                random_aspect_ratio=list(spec.ratio),
                num_attempts=10,
            )
            image = fn.resize(image, size=size if spec.multiscale else [h, w], antialias=True)  # (h, w, 3)
        else:
            image = fn.decoders.image(img, device=spec.decode_device, output_type=types.RGB)
            image = fn.resize(image, resize_shorter=min(h, w), antialias=True)  # (>=h, >=w, 3)
    else:
        if spec.multiscale:  # fn.constant's shape is fixed at build time: a zero tile resized
            image = fn.constant(idata=0, shape=[8, 8, 3], dtype=types.UINT8, layout="HWC")
            image = fn.resize(image, size=size)  # (h, w, 3) zeros
        else:
            image = fn.constant(idata=0, shape=[h, w, 3], dtype=types.UINT8, layout="HWC")  # (h, w, 3)
        if spec.decode_device == "mixed":
            image = image.gpu()
    image = fn.crop_mirror_normalize(
        image,
        dtype=types.FLOAT,
        output_layout="CHW",
        # centred: the eval center crop; a no-op on the training branch
        **({"crop_h": h, "crop_w": w} if spec.multiscale else {"crop": (h, w)}),
        mean=list(spec.mean),
        std=list(spec.std),
        mirror=mirror,
    )  # (3, h, w) float32
    labels = fn.pad(lbl[0 : spec.max_labels], axes=[0], shape=[spec.max_labels], fill_value=-1)  # (L,)
    count = fn.cast(lbl.shape()[0], dtype=types.INT64)  # () labels before truncation
    outputs = (image, labels, count, valid, img.source_info())  # source_info: "tar:offset:member" bytes
    if spec.captions:
        txt = components[2]
        text = fn.pad(txt[0:MAX_CAPTION_BYTES], axes=[0], shape=[MAX_CAPTION_BYTES], fill_value=0)  # (T,)
        outputs += (text, fn.cast(txt.shape()[0], dtype=types.INT64))  # bytes before truncation
    return outputs


def _make_pipeline(
    spec: PipelineSpec,
    *,
    batch_size: int,
    num_threads: int,
    seed: int,
    device_id: int | None,
    checkpoint: bytes | None,
    skip_batches: int,
    size_source: Any = None,
) -> Any:
    """Build one pipeline; its first ``skip_batches`` batches route every sample to the placeholder."""
    from nvidia.dali import pipeline_def

    remaining = [skip_batches]

    def keep_source() -> np.ndarray:
        # Called once per iteration, in order (prefetching only calls it earlier), so counting
        # calls is counting batches since this pipeline was built.
        keep = remaining[0] <= 0
        remaining[0] -= 1
        return np.full((batch_size,), keep, dtype=np.bool_)  # (B,)

    @pipeline_def(enable_conditionals=True)
    def pipe():
        return _build_graph(spec, keep_source, size_source)

    with warnings.catch_warnings():
        # The keep flags are ours to set on a restore; DALI warns that it does not checkpoint them.
        warnings.filterwarnings("ignore", message="Checkpointing enabled in a pipeline with external source")
        p = pipe(
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            seed=seed,
            prefetch_queue_depth=2,
            enable_checkpointing=True,
            checkpoint=checkpoint,
        )
        p.build()
    return p


def _to_torch(out: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) into a new torch tensor."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensor = out.as_tensor()
    t = torch.empty(tensor.shape(), dtype=dtype, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(tensor, t, cuda_stream=stream)
    return t


def _decode_device(device: str, device_id: int | None) -> tuple[str, int | None]:
    """ "auto" -> "mixed" (nvJPEG) where a GPU is visible, else "cpu"; "gpu" means "mixed"."""
    if device == "auto":
        device = "mixed" if cuda_device_count() > 0 else "cpu"
    if device == "gpu":
        device = "mixed"
    if device not in ("cpu", "mixed"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'mixed', got {device!r}")
    if device == "mixed" and device_id is None:
        device_id = torch.cuda.current_device()
    return device, device_id


class DaliLoader:
    """Batches of one rank from packed shards; see the module docstring. Build with ``make_loader``.

    Iterating yields the rest of the current epoch: dicts with ``image`` (B, 3, H, W) float32,
    ``labels`` (B, max_labels) int64 padded with -1, ``label_counts`` (B,) int64, ``valid`` (B,)
    bool, and ``key`` (list of B sample keys) when asked for."""

    def __init__(
        self,
        paths: list[Path],
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        device: str,
        device_id: int | None,
        train: bool,
        image_size: int | tuple[int, int],
        seed: int,
        max_labels: int,
        num_threads: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        mean: Sequence[float],
        std: Sequence[float],
        drop_last: bool,
        shuffle_buffer: int,
        keys: bool,
        captions: bool = False,
        num_classes: int | None = None,
        expected_samples: int | None = None,
        label_member: str = "lbl",
        multiscale: MultiScale | None = None,
    ) -> None:
        if multiscale is not None and not (train and drop_last):
            raise ValueError("multi-scale batches are for training (train=True, drop_last=True) only")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or max_labels < 1:
            raise ValueError("batch_size and max_labels must be >= 1")
        device, device_id = _decode_device(device, device_id)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.spec = PipelineSpec(
            paths=tuple(str(p) for p in paths),
            index_paths=(tuple(idx) if (idx := _index_paths(paths)) else None),
            decode_device=device,
            train=train,
            size=(int(size[0]), int(size[1])),
            scale=(float(scale[0]), float(scale[1])),
            ratio=(float(ratio[0]), float(ratio[1])),
            mean=tuple(255.0 * float(m) for m in mean),
            std=tuple(255.0 * float(s) for s in std),
            max_labels=max_labels,
            shard_id=rank,
            num_shards=world_size,
            shuffle_buffer=shuffle_buffer,
            keys=keys,
            captions=captions,
            label_ext=label_member,
            multiscale=multiscale is not None,
        )
        self.multiscale = multiscale  # None: every batch is batch_size at image_size
        self._scales = multiscale or MultiScale((Scale(*self.spec.size, batch_size),), seed=0)
        self._chunk = self._scales.chunk  # samples per pipeline iteration (batch_size when fixed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.num_threads, self.drop_last = seed, num_threads, drop_last
        self.num_classes = num_classes  # labels outside [0, num_classes) stop the run, naming the sample
        self.device = device
        # DALI device_id None = a CPU-only pipeline; images then come out on the CPU.
        self._device_id = device_id if device == "mixed" else None
        self._image_device = torch.device("cuda", device_id) if device == "mixed" else torch.device("cpu")
        # Per-rank seed: augmentations and the shuffle buffer differ between ranks.
        self._pipe_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] & 0x7FFFFFFF)
        self._epoch = 0  # the reader's epoch
        self._pos = 0  # pipeline iterations (chunks) taken in this epoch (yielded or dropped)
        self._batches = 0  # batches yielded over the run: the index of the next scale draw
        self._epoch_first = 0  # self._batches when this epoch began
        self._batch_start = 0  # the chunk the batch being assembled began at (== _pos between batches)
        self.invalid_samples = 0  # real samples that failed the guard (zero image, valid=False)
        self.failed_batches = 0  # batches DALI raised on (replayed as all-placeholder)
        self.lost_samples = 0  # real samples in those batches
        self.truncated_labels = 0  # real samples with more than max_labels labels
        self._reader_chunks = self._full_chunks = 1  # set below, once the reader has counted
        self._len_cache: tuple[int, int] = (-1, 0)  # (epoch_first, batches in that epoch)
        try:
            self._pipe = self._build(checkpoint=None, skip_batches=0)
        except RuntimeError as err:
            named = _index_error(err, label_member)
            if named is None:
                raise
            raise named from None
        self.samples = int(self._pipe.reader_meta("Reader")["epoch_size"])  # N, all ranks
        if self.samples == 0:
            raise ValueError(f"no samples with an image and a .{label_member} in {len(paths)} shard(s)")
        self.missing_members = self._missing(expected_samples)
        shard_max = math.ceil(self.samples / world_size)
        self._reader_chunks = math.ceil(shard_max / self._chunk)  # what DALI produces per epoch
        full = (self.samples // world_size) // self._chunk
        self._full_chunks = full if drop_last else self._reader_chunks
        largest = max(s.batch for s in self._scales.table)
        if full * self._chunk < largest and drop_last:
            raise ValueError(
                f"{self.samples} samples over {world_size} rank(s) make no full batch of {largest}: "
                "lower batch_size or set drop_last=False"
            )
        # The size source was made before the reader counted the epoch: its plan reads the counts
        # when DALI first calls it (at the first run, not at build).
        self._checkpoint: bytes = self._pipe.checkpoint()

    def _build(self, checkpoint: bytes | None, skip_batches: int) -> Any:
        """A pipeline that continues at the current position (its size source too)."""
        sizes = None
        if self.multiscale is not None:
            plan = self._plan(self._batch_start, self._batches)
            for _ in range(self._pos - self._batch_start):  # a rebuild in the middle of a batch
                next(plan)
            chunk = self._chunk

            def sizes() -> np.ndarray:
                return np.tile(np.asarray(next(plan), dtype=np.float32), (chunk, 1))  # (chunk, 2)

        return _make_pipeline(
            self.spec,
            batch_size=self._chunk,
            num_threads=self.num_threads,
            seed=self._pipe_seed,
            device_id=self._device_id,
            checkpoint=checkpoint,
            skip_batches=skip_batches,
            size_source=sizes,
        )

    def _chunks(self, batch: int) -> int:
        """Pipeline iterations of the batch at draw ``batch``."""
        return self._scales.draw(batch).batch // self._chunk

    def _fitting(self, pos: int, batch: int) -> Iterator[int]:
        """The draws from ``batch`` on that fit, one after the other, in this epoch's full chunks
        from chunk ``pos``."""
        while pos + self._chunks(batch) <= self._full_chunks:
            yield batch
            pos, batch = pos + self._chunks(batch), batch + 1

    def _plan(self, pos: int, batch: int) -> Iterator[tuple[int, int]]:
        """(h, w) of every pipeline iteration from chunk ``pos`` of this epoch on, where batch
        ``batch`` begins: each drawn batch takes ``batch / chunk`` iterations while it fits in the
        epoch's full chunks; the rest of the epoch (dropped, as with drop_last) is decoded at the
        smallest size; then the next epoch, which starts with the draw that did not fit."""
        tail = self._scales.smallest
        while True:
            for b in self._fitting(pos, batch):
                scale = self._scales.draw(b)
                for _ in range(self._chunks(b)):
                    yield scale.height, scale.width
                pos, batch = pos + self._chunks(b), b + 1
            for _ in range(pos, self._reader_chunks):
                yield tail.height, tail.width
            pos = 0

    def _fits(self) -> bool:
        """Whether the next batch (the draw at ``_batches``) still fits in this epoch."""
        return self._pos + self._chunks(self._batches) <= self._full_chunks

    # -------------------------------------------------------------------------------- iteration
    def __len__(self) -> int:
        """Batches in the current epoch for this rank (the same on every rank; with multi-scale
        it depends on the epoch's draws)."""
        if self.multiscale is None:
            return self._full_chunks
        if self._len_cache[0] != self._epoch_first:
            self._len_cache = (self._epoch_first, sum(1 for _ in self._fitting(0, self._epoch_first)))
        return self._len_cache[1]

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (an epoch whose batches were all yielded is done)."""
        return self._epoch + (not self._fits())

    def _real_in_chunk(self) -> int:
        """Real (not padding) samples in the iteration at ``self._pos`` of this rank's current range."""
        shard = (self.rank + self._epoch) % self.world_size  # DALI moves ranks one range per epoch
        n, w = self.samples, self.world_size
        shard_size = n * (shard + 1) // w - n * shard // w
        return max(0, min(self._chunk, shard_size - self._pos * self._chunk))

    def _run(self) -> tuple[Any, bool]:
        """The next pipeline outputs, recovering from a DALI error by replaying that batch as
        placeholders; returns (outputs, whether the batch was replayed)."""
        for attempt in range(MAX_CONSECUTIVE_FAILURES + 1):
            try:
                outputs = self._pipe.run()
                self._checkpoint = self._pipe.checkpoint()
                return outputs, attempt > 0
            except RuntimeError as err:
                if attempt == MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"DALI failed {attempt + 1} times in a row at epoch {self._epoch}, batch "
                        f"{self._pos} (rank {self.rank}): not a bad sample; see the error above"
                    ) from err
                self.failed_batches += 1
                log.warning(
                    "DALI raised on epoch %d batch %d (rank %d); the batch is replayed as "
                    "placeholders (valid=False) and training goes on. DALI said: %s",
                    self._epoch,
                    self._pos,
                    self.rank,
                    _error_summary(err),
                )
                self._pipe = None  # a failed DALI pipeline is no longer valid; free it first
                self._pipe = self._build(checkpoint=self._checkpoint, skip_batches=1)
        raise AssertionError("unreachable")

    def _missing(self, expected_samples: int | None) -> int:
        """Samples DALI skips for a missing member (``missing_component_behavior="skip"``): the
        count dataset.json lists less what the reader found; said once, kept in the counters."""
        missing = max(0, (expected_samples or 0) - self.samples)
        if missing and self.rank == 0:
            log.warning(
                "%d of the %d samples dataset.json lists lack an image or a .%s member and are skipped",
                missing,
                expected_samples,
                self.spec.label_ext,
            )
        return missing

    def _check_labels(self, labels: torch.Tensor, is_real: torch.Tensor, source_info: Any) -> None:
        """Host-side (labels stay on the CPU until the step): an id outside the vocabulary, or one
        listed twice, names its shard and sample, instead of failing later inside the loss."""
        bad = ((labels >= self.num_classes) | (labels < -1)) & is_real.view(-1, 1)
        ordered = labels.sort(dim=1).values  # (B, L)
        twice = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0) & is_real.view(-1, 1)
        if bool(twice.any()) and not bool(bad.any()):
            row = int(twice.any(dim=1).nonzero()[0])
            where = bytes(np.array(source_info[row])).decode("utf-8", "replace").rsplit(":", 2)
            what = "class" if self.spec.label_ext == "cls" else "label id"
            raise DataError(
                f"{where[0]}: sample {where[-1].split('.', 1)[0]} lists {what} {int(ordered[row, 1:][twice[row]][0])} "
                f"twice: its .{self.spec.label_ext} member is corrupt (`catlip pack` writes each id once, "
                "sorted); re-pack the shard"
            )
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0])
            where = bytes(np.array(source_info[row])).decode("utf-8", "replace").rsplit(":", 2)
            sample, label = where[-1].split(".", 1)[0], int(labels[row][bad[row]][0])
            if self.spec.label_ext == "cls":
                raise DataError(
                    f"{where[0]}: sample {sample} has class {label}, outside the {self.num_classes} "
                    "classes of the pack's CLASSES.json: the .cls member is corrupt, or the shards are "
                    "of another class set"
                )
            raise DataError(
                f"{where[0]}: sample {sample} has label id {label}, "
                f"outside the vocabulary of {self.num_classes} synsets: these shards were packed with "
                "another vocabulary, or the .lbl member is corrupt"
            )

    def _next_batch(self) -> dict[str, Any]:
        """The batch at the next draw: ``batch / chunk`` pipeline iterations put together."""
        k = self._chunks(self._batches)
        self._batch_start = self._pos
        parts = [self._next_chunk() for _ in range(k)]
        self._batches += 1
        self._batch_start = self._pos
        if k == 1:
            return parts[0]
        batch = {}
        for name, first in parts[0].items():
            if isinstance(first, torch.Tensor):
                batch[name] = torch.cat([p[name] for p in parts])
            else:  # key, caption: lists of strings
                batch[name] = [x for p in parts for x in p[name]]
        return batch

    def _next_chunk(self) -> dict[str, Any]:
        outputs, replayed = self._run()
        real = self._real_in_chunk()
        self._pos += 1
        image, labels, count, valid, source_info = outputs[:5]
        if replayed:
            log.warning(
                "the replayed batch held: %s", ", ".join(_sample_key(np.array(s)) for s in source_info)
            )
        cpu = torch.device("cpu")
        batch: dict[str, Any] = {
            "image": _to_torch(image, torch.float32, self._image_device),  # (B, 3, H, W)
            "labels": _to_torch(labels, torch.int32, cpu).long(),  # (B, max_labels), -1 padded
        }
        raw_count = _to_torch(count, torch.int64, cpu)  # (B,)
        valid_t = _to_torch(valid, torch.bool, cpu)  # (B,)
        is_real = torch.arange(self._chunk) < real  # (B,)
        if replayed:
            self.lost_samples += real
        else:
            self.invalid_samples += int((~valid_t & is_real).sum())
        self.truncated_labels += int(((raw_count > self.spec.max_labels) & is_real).sum())
        valid_t &= is_real
        if not bool(valid_t.all()):  # placeholders and padding come out as zero images
            invalid = ~valid_t.to(self._image_device, non_blocking=True)
            batch["image"].masked_fill_(invalid.view(-1, 1, 1, 1), 0.0)  # no host sync on a GPU
        if self.num_classes is not None:
            self._check_labels(batch["labels"], is_real, source_info)
        batch["label_counts"] = raw_count.clamp(max=self.spec.max_labels)  # (B,) entries in labels
        batch["valid"] = valid_t  # (B,)
        if self.spec.keys:
            batch["key"] = [_sample_key(np.array(s)) for s in source_info]
        if self.spec.captions:
            text = _to_torch(outputs[5], torch.uint8, cpu).numpy()  # (B, MAX_CAPTION_BYTES)
            lengths = _to_torch(outputs[6], torch.int64, cpu).clamp(max=MAX_CAPTION_BYTES).tolist()
            batch["caption"] = [
                bytes(row[:n]).decode("utf-8", "replace") for row, n in zip(text, lengths, strict=True)
            ]
        return batch

    def _finish_epoch(self) -> None:
        """Take the padded batches ``drop_last`` does not yield (and, with multi-scale, the chunks
        too few for the next draw), and move to the next epoch."""
        while self._pos < self._reader_chunks:
            self._run()
            self._pos += 1
        self._epoch, self._pos = self._epoch + 1, 0
        self._epoch_first = self._batch_start = self._batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._fits():
            self._finish_epoch()
        while self._fits():
            yield self._next_batch()

    # ----------------------------------------------------------------------------------- resume
    def _identity(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "train": self.spec.train,
            "drop_last": self.drop_last,
            "multiscale": None if self.multiscale is None else self.multiscale.identity(),
        }

    def state_dict(self) -> dict[str, Any]:
        """This rank's data position: DALI's pipeline checkpoint (base64), epoch, batch, counters."""
        return {
            "version": STATE_VERSION,
            **self._identity(),
            "epoch": self._epoch,
            "position": self._pos,
            "batches": self._batches,
            "epoch_first": self._epoch_first,
            "dali_checkpoint": base64.b64encode(self._checkpoint).decode("ascii"),
            "counters": self.counters(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same shards, batch size, seed and rank)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"data state version {state.get('version')} is not {STATE_VERSION}: saved by another version of "
                "the loader's pipeline (continue with the engine that wrote it, or start a new run)"
            )
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if mismatched:
            shown = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"the data state was saved by a different loader setup ({shown})")
        checkpoint = base64.b64decode(state["dali_checkpoint"])
        self._epoch, self._pos = int(state["epoch"]), int(state["position"])
        self._batches = int(state.get("batches", 0))  # states from before multi-scale: fixed size
        self._epoch_first = int(state.get("epoch_first", 0))
        self._batch_start = self._pos
        self._pipe = None
        self._pipe = self._build(checkpoint=checkpoint, skip_batches=0)
        self._checkpoint = checkpoint
        for name, value in state.get("counters", {}).items():
            setattr(self, name, int(value))

    def counters(self) -> dict[str, int]:
        """Samples that were not trained on as they should have been, by cause."""
        return {
            "invalid_samples": self.invalid_samples,
            "failed_batches": self.failed_batches,
            "lost_samples": self.lost_samples,
            "truncated_labels": self.truncated_labels,
            "missing_members": self.missing_members,
        }


class DataError(ValueError):
    """Shards whose content cannot be trained on as they are (e.g. labels of another vocabulary)."""


def _index_error(err: RuntimeError, label_member: str = "lbl") -> DataError | None:
    """DALI's start-up check of an index line ("component size and dtype incompatible": a .lbl
    or .cls whose length is not a multiple of 4) as a message naming the shard and the sample."""
    import re

    found = re.search(r'index file at "([^"]+)" line (\d+) - component size and dtype incompatible', str(err))
    if not found:
        return None
    idx, line = Path(found.group(1)), int(found.group(2))
    try:
        fields = idx.read_text().splitlines()[line].split()  # DALI counts the header as line 0
    except (OSError, IndexError):
        fields = []
    members = dict(zip(fields[3::4], fields[2::4], strict=False))  # member name -> size
    lbl = next((name for name in members if name.endswith(f".{label_member}")), "?")
    return DataError(
        f"{idx.with_suffix('.tar')}: sample {lbl.split('.', 1)[0]}: its .{label_member} has "
        f"{members.get(lbl, '?')} bytes, not a multiple of 4 (int32 label ids): the shard is corrupt; re-pack it"
    )


def _error_summary(err: BaseException) -> str:
    """The informative lines of a DALI error: the operator and what it encountered."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept, after = [], False
    for ln in lines:
        if ln.startswith("Error in"):
            kept.append(ln.rstrip(","))
        elif ln.startswith("encountered"):
            after = True
        elif after and not ln.startswith(("Current pipeline", "Critical error")):
            kept.append(ln)
    return " ".join(dict.fromkeys(kept))[:500] or " ".join(lines)[:500]


def _sample_key(source_info: np.ndarray) -> str:
    """``/path/shard-000000.tar:OFFSET:KEY.jpg`` -> ``KEY``."""
    name = bytes(source_info).decode("utf-8", "replace").rsplit(":", 1)[-1]
    return name.split(".", 1)[0]


def make_loader(
    shards: str | Path | Sequence[str | Path],
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str = "auto",
    device_id: int | None = None,
    train: bool = True,
    image_size: int | tuple[int, int] = 224,
    seed: int = 0,
    max_labels: int = 32,
    num_threads: int = 2,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    drop_last: bool | None = None,
    shuffle_buffer: int = 1024,
    keys: bool = False,
    captions: bool = False,
    num_classes: int | None = None,
    expected_samples: int | None = None,
    label_member: str | None = None,
    multiscale: MultiScale | None = None,
) -> DaliLoader:
    """A DALI loader over packed shards (a folder with ``dataset.json``, or tar paths) for one rank.

    ``device`` "auto" decodes on the GPU ("mixed") where one is visible, else on the CPU;
    ``device_id`` defaults to the current CUDA device. ``drop_last`` defaults to ``train``.
    ``shuffle_buffer`` is DALI's ``initial_fill``: samples held for the local shuffle (raw bytes,
    ~150 kB each for COCO-sized JPEGs). ``keys=True`` adds each sample's key to the batches;
    ``captions=True`` adds the ``.txt`` captions (``caption``: list of B strings).
    ``label_member`` ("lbl" or "cls") defaults to the folder's dataset.json ``label_member``, else
    "lbl"; ``num_classes`` (None: unchecked) bounds the label ids. ``multiscale`` (training
    only): each batch's size and resolution from its draws (engine/multiscale.py), ``batch_size``
    and ``image_size`` being those of the base."""
    if label_member is None:
        label_member = "lbl"
        if isinstance(shards, (str, Path)) and (Path(shards) / "dataset.json").is_file():
            meta = load_json(Path(shards) / "dataset.json", DataError)
            label_member = meta.get("label_member", "lbl") if isinstance(meta, dict) else "lbl"
    if label_member not in LABEL_MEMBERS:
        raise ValueError(f"label_member must be one of {', '.join(LABEL_MEMBERS)}, got {label_member!r}")
    return DaliLoader(
        resolve_shards(shards),
        batch_size,
        rank=rank,
        world_size=world_size,
        device=device,
        device_id=device_id,
        train=train,
        image_size=image_size,
        seed=seed,
        max_labels=max_labels,
        num_threads=num_threads,
        scale=scale,
        ratio=ratio,
        mean=mean,
        std=std,
        drop_last=train if drop_last is None else drop_last,
        shuffle_buffer=shuffle_buffer,
        keys=keys,
        captions=captions,
        num_classes=num_classes,
        expected_samples=expected_samples,
        label_member=label_member,
        multiscale=multiscale,
    )


def class_pack_loader(
    folder: str | Path,
    batch_size: int,
    *,
    image_size: int | tuple[int, int] = 224,
    device: str = "auto",
    device_id: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_threads: int = 2,
    keys: bool = True,
    train: bool = False,
    seed: int = 0,
) -> tuple[DaliLoader, dict[str, Any]]:
    """A loader over a class pack (``catlip pack --imagefolder/--coco-instances/--yolo``: one split
    folder with its ``dataset.json``), with the eval transform unless ``train``, and that
    ``dataset.json`` (``num_classes``, ``multi_label``, ``classes`` {path, sha256, names},
    ``vocab_sha256``, ``samples``, ...).

    Batches are as :class:`DaliLoader` yields them: ``labels`` (B, L) int64 class indices padded
    with -1, L = the most classes of one sample in the pack (never truncated); ``valid`` (B,) is
    False for the samples repeated to fill the last batch (eval keeps every batch: mask with
    ``valid``), and ``key`` names each sample. ``ValueError`` when ``folder`` is not a class pack."""
    from engine.config import ConfigError

    meta = read_dataset_meta(folder, "class pack")
    if "shard_names" not in meta:
        splits = ", ".join(str(Path(folder) / s) for s in meta.get("splits", {}))
        raise ConfigError(f"{folder} holds the splits {splits}: give one of them")
    if meta.get("label_member") != "cls":
        raise ConfigError(
            f"{folder} is a caption pack (labels over a vocabulary), not a class pack: pack the labelled "
            "set with `catlip pack --imagefolder/--coco-instances/--yolo ... --classes CLASSES.json`"
        )
    loader = make_loader(
        folder, batch_size, rank=rank, world_size=world_size, device=device, device_id=device_id,
        train=train, image_size=image_size, seed=seed, max_labels=max(1, int(meta.get("max_labels_per_sample", 1))),
        num_threads=num_threads, keys=keys, num_classes=int(meta["num_classes"]),
        expected_samples=meta.get("samples"), label_member="cls",
    )  # fmt: skip
    return loader, meta


def read_dataset_meta(folder: str | Path, option: str) -> dict[str, Any]:
    """``dataset.json`` of a ``catlip pack`` output folder, or a ConfigError naming the option."""
    from engine.config import ConfigError

    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise ConfigError(
            f"{option}: {folder} has no dataset.json (point it at a folder made by `catlip pack`)"
        )
    try:
        meta = load_json(path)
    except ValueError as err:
        raise ConfigError(f"{option}: {err}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{option}: {path} is not a dataset.json of `catlip pack` (not a JSON object)")
    return meta


def _check_labelers(meta: dict, val_meta: dict, d: Any) -> None:
    """Train and val shards labelled by one labeler (a dataset.json without a record was packed
    before labelers had names: catlip-1 or corenet, by its settings)."""
    from catlip.labels import LabelerMismatch, LabelerSpec
    from engine.config import ConfigError

    try:
        LabelerSpec.of_meta(meta, where=f"{d.train}/dataset.json").check_same(
            LabelerSpec.of_meta(val_meta, where=f"{d.val}/dataset.json"),
            f"data.train ({d.train})",
            f"data.val ({d.val})",
        )
    except (LabelerMismatch, ValueError) as err:
        raise ConfigError(str(err)) from None


def loaders_from_config(
    cfg: Any, rank: int, world_size: int, image_size: int, captions: bool, patch_size: int | None = None
):
    """DALI loaders over ``data.train`` / ``data.val`` and the train shards' dataset.json.

    Caption packs: labels are vocabulary rows, bounded by ``vocab_size``. Class packs
    (``label_member`` "cls"): class indices, bounded by ``num_classes``, padded to at least the
    most classes of one sample (so none is cut). Train and val must agree: the same vocabulary (its
    size and, where dataset.json records it, its SHA-256), and for class packs the same
    ``CLASSES.json``; a mismatch stops here, naming both folders. ``data.multiscale`` makes the
    train loader's batches variable (engine/multiscale.py; sides checked against ``patch_size``);
    the val loader stays at ``image_size``."""
    from engine.config import ConfigError
    from engine.multiscale import from_config

    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is empty: point it at a directory made by `catlip pack`")
    meta = read_dataset_meta(d.train, "data.train")
    label_member = meta.get("label_member", "lbl")
    if label_member == "cls" and captions:
        raise ConfigError(
            f"data.train ({d.train}) is a class pack (no captions): this objective needs a caption pack"
        )
    metas = [meta]
    if d.val and not captions:
        val_meta = read_dataset_meta(d.val, "data.val")
        metas.append(val_meta)
        val_member = val_meta.get("label_member", "lbl")
        if val_member != label_member:
            raise ConfigError(
                f"data.train ({d.train}) is a {_PACK_KIND[label_member]} but data.val ({d.val}) is a "
                f"{_PACK_KIND[val_member]}: give two packs of the same kind"
            )
        keys = ("vocab_size", "vocab_sha256") + (("classes",) if label_member == "cls" else ())
        for key in keys:
            a, b = meta.get(key), val_meta.get(key)
            if key == "classes":
                key, a, b = "CLASSES.json sha256", (a or {}).get("sha256"), (b or {}).get("sha256")
            if a is not None and b is not None and a != b:
                what = "class sets" if key.startswith("CLASSES") else "vocabularies"
                raise ConfigError(
                    f"data.train ({d.train}) and data.val ({d.val}) were packed with different {what} "
                    f"({key} {a} vs {b}): pack both with the same "
                    + ("CLASSES.json" if what == "class sets" else "vocab.tsv")
                )
        if label_member == "lbl":
            _check_labelers(meta, val_meta, d)
    if label_member == "cls":
        num_classes = int(meta["num_classes"])
        max_labels = max([d.max_labels] + [int(m.get("max_labels_per_sample", 1)) for m in metas])
    else:
        num_classes, max_labels = int(meta["vocab_size"]), d.max_labels
    common = dict(
        rank=rank,
        world_size=world_size,
        device=d.decode_device,
        image_size=image_size,
        seed=cfg.run.seed,
        max_labels=max_labels,
        num_threads=d.num_threads,
        num_classes=num_classes,
        label_member=label_member,
    )
    for folder in (d.train, d.val if not captions else None):
        if folder:
            try:
                resolve_shards(folder)
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"data: {err}") from None
    try:
        multiscale = from_config(cfg, image_size, patch_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    train = make_loader(
        d.train, d.batch_size, train=True, scale=tuple(d.scale), captions=captions,
        expected_samples=meta.get("samples"), multiscale=multiscale, **common,
    )  # fmt: skip
    val = None
    if d.val and not captions:
        val = make_loader(
            d.val, d.batch_size, train=False, expected_samples=metas[1].get("samples"), **common
        )
    return train, val, meta


class TensorLoader:
    """Batches held in memory, behind the trainer's loader interface (iteration that ends with the
    epoch, ``len``, and a resumable position): for tests, benchmarks and synthetic runs."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.pos = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]
