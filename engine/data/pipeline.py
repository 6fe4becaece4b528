"""The DALI graph of one rank: packed WebDataset shards -> normalised images and padded labels.

Pipeline (``engine/packing/`` makes the shards)::

    readers.webdataset(ext=["jpg;jpeg;png;webp", "lbl"|"cls"], shard_id=rank, num_shards=world_size,
                       pad_last_batch=True, missing_component_behavior="skip")
      -> guard: magic bytes (JPEG FFD8FF...FFD9, PNG, RIFF....WEBP), then the pixel count its header
         gives (at most the packer's MAX_PIXELS), in-pipeline conditionals
      -> decode on "mixed" (nvJPEG) where a GPU is visible, else "cpu"
           train: random-area ROI decode (RandomResizedCrop) -> resize, random horizontal flip
           eval:  resize the shorter side -> center crop (:func:`eval_resize`, :func:`normalize`)
      -> crop_mirror_normalize to float CHW with the CLIP mean and std
    labels: the .lbl (caption packs) or .cls (class packs) bytes read as int32, padded to
            max_labels with -1

The label member is the one the pack's ``dataset.json`` names in ``label_member`` ("lbl" when it
names none): a caption pack's ``.lbl`` holds vocabulary rows (ids < ``vocab_size``), a class
pack's ``.cls`` holds class indices (ids < ``num_classes``) into its ``CLASSES.json``.

Samples that fail the guard become zero images with ``valid=False`` (DALI has no skip-on-error:
one undecodable image raises and invalidates the whole pipeline); what the loader does when DALI
raises anyway is engine/data/loader.py's. With ``PipelineSpec.multiscale`` an external source gives
every iteration's (h, w) (engine/multiscale.py plans them).

The eval transform (:func:`eval_resize` then :func:`normalize`) is also zero-shot's on loose files
(:class:`ImageTransform`, ``catlip predict``), so both see the same pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.packing.shards import MAX_PIXELS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXT = "jpg;jpeg;png;webp"
STATE_VERSION = 2  # the DALI graph's operators (2: the pixel-count guard); DALI's checkpoint names them
MAX_CAPTION_BYTES = 1024  # captions are cut here (CLIP's 77 tokens are ~300 bytes of English)


def cuda_device_count() -> int:
    """CUDA devices DALI can see; 0 (not an exception) where there is no driver."""
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return GetCUDADeviceCount()
    except Exception:  # noqa: BLE001 - any failure to reach a driver means no GPU
        return 0


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


def build_graph(spec: PipelineSpec, keep_source: Any, size_source: Any = None) -> tuple:
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
            image = eval_resize(img, (h, w), spec.decode_device)  # (h, w, 3)
    else:
        if spec.multiscale:  # fn.constant's shape is fixed at build time: a zero tile resized
            image = fn.constant(idata=0, shape=[8, 8, 3], dtype=types.UINT8, layout="HWC")
            image = fn.resize(image, size=size)  # (h, w, 3) zeros
        else:
            image = fn.constant(idata=0, shape=[h, w, 3], dtype=types.UINT8, layout="HWC")  # (h, w, 3)
        if spec.decode_device == "mixed":
            image = image.gpu()
    # centred: the eval center crop; a no-op on the training branch
    crop = {"crop_h": h, "crop_w": w} if spec.multiscale else {"crop": (h, w)}
    image = normalize(image, spec.mean, spec.std, mirror, **crop)  # (3, h, w) float32
    labels = fn.pad(lbl[0 : spec.max_labels], axes=[0], shape=[spec.max_labels], fill_value=-1)  # (L,)
    count = fn.cast(lbl.shape()[0], dtype=types.INT64)  # () labels before truncation
    outputs = (image, labels, count, valid, img.source_info())  # source_info: "tar:offset:member" bytes
    if spec.captions:
        txt = components[2]
        text = fn.pad(txt[0:MAX_CAPTION_BYTES], axes=[0], shape=[MAX_CAPTION_BYTES], fill_value=0)  # (T,)
        outputs += (text, fn.cast(txt.shape()[0], dtype=types.INT64))  # bytes before truncation
    return outputs


def eval_resize(encoded: Any, size: tuple[int, int], device: str) -> Any:
    """The eval transform's first half: decode to RGB, resize the shorter side to
    ``S = min(size)`` (bilinear, antialiased) and cut the centred ``size`` = (h, w) window ->
    (h, w, 3) uint8; :func:`normalize` then normalises.

    The sizes are torchvision's (``Resize(S)`` then ``CenterCrop(S)``, which timm's and open_clip's
    eval transforms are): the longer side is ``int(S * long / short)`` (DALI's ``resize_shorter``
    rounds it and keeps the exact scale with a sub-pixel window) and the crop starts at
    ``round((side - crop) / 2)``, halves to even (Python's ``round``); a 640 x 480 photo at 64 px is
    85 px wide either way, but DALI's own crop would start at 11 where torchvision's starts at 10.
    So a PIL transform of those sizes (catlip.api.eval_transform) sees these pixels."""
    from nvidia.dali import fn, types

    image = fn.decoders.image(encoded, device=device, output_type=types.RGB)
    short_side = min(size)
    shape = fn.peek_image_shape(encoded, dtype=types.INT64)  # (H, W, C), EXIF-rotated as decoded
    h, w = shape[0], shape[1]
    short = fn.cast(h <= w, dtype=types.INT64) * h + fn.cast(h > w, dtype=types.INT64) * w
    new_h, new_w = short_side * h // short, short_side * w // short  # the shorter one is S exactly
    image = fn.resize(
        image,
        resize_x=fn.cast(new_w, dtype=types.FLOAT),
        resize_y=fn.cast(new_h, dtype=types.FLOAT),
        subpixel_scale=False,
        antialias=True,
    )  # (new_h, new_w, 3)
    top, left = _half_even_half(new_h - size[0]), _half_even_half(new_w - size[1])
    anchor = fn.cast(fn.stack(top, left), dtype=types.INT32)  # (2,): y, x
    return fn.slice(image, anchor, list(size), axes=[0, 1], out_of_bounds_policy="pad")  # (h, w, 3)


def _half_even_half(d: Any) -> Any:
    """round(d / 2) with halves to even, as Python's round, for a non-negative integer DataNode."""
    half = d // 2
    odd = d - 2 * half
    return half + odd * (half - 2 * (half // 2))


def normalize(image: Any, mean: Sequence[float], std: Sequence[float], mirror: Any, **crop: Any) -> Any:
    """Crop (centred: ``crop=(h, w)`` or ``crop_h``/``crop_w``), mirror where ``mirror``, and
    normalise with ``mean`` and ``std`` (0-255 units) -> (3, h, w) float32."""
    from nvidia.dali import fn, types

    return fn.crop_mirror_normalize(
        image,
        dtype=types.FLOAT,
        output_layout="CHW",
        **crop,
        mean=list(mean),
        std=list(std),
        mirror=mirror,
    )


def make_pipeline(
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
        return build_graph(spec, keep_source, size_source)

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


def to_torch(out: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) into a new torch tensor."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensor = out.as_tensor()
    t = torch.empty(tensor.shape(), dtype=dtype, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(tensor, t, cuda_stream=stream)
    return t


def pick_decode_device(device: str, device_id: int | None) -> tuple[str, int | None]:
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


class ImageTransform:
    """The eval transform (:func:`eval_resize`, :func:`normalize`; the loader's with ``train=False``)
    on encoded images in memory: DALI decode, resize of the shorter side, center crop, CLIP
    normalisation -> (B, 3, S, S). Zero-shot's ``predict`` runs it on loose files."""

    def __init__(self, image_size: int, *, batch_size: int = 16, num_threads: int = 2) -> None:
        self.size, self.batch_size, self.num_threads = image_size, batch_size, num_threads
        self.mean = [255.0 * m for m in CLIP_MEAN]
        self.std = [255.0 * s for s in CLIP_STD]
        self._pipe = None
        self._feed: list[np.ndarray] = []

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        # one run per call, in step: a pipelined executor calls the source ahead and would hand
        # each batch the images of the batch before it
        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=None,
            exec_pipelined=False,
            exec_async=False,
        )
        def pipe():
            data = fn.external_source(source=lambda: self._feed, batch=True, dtype=types.UINT8)
            image = eval_resize(data, (self.size, self.size), "cpu")
            return normalize(image, self.mean, self.std, 0, crop=(self.size, self.size))  # (3, S, S) float32

        p = pipe()
        p.build()
        return p

    def __call__(self, encoded: Sequence[bytes]) -> torch.Tensor:
        """Images DALI can decode (check them first with engine.packing.check_image) -> (B, 3, S, S)."""
        if not 0 < len(encoded) <= self.batch_size:
            raise ValueError(f"1 to {self.batch_size} images per call, got {len(encoded)}")
        if self._pipe is None:
            self._pipe = self._build()
        self._feed = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
        try:
            (out,) = self._pipe.run()
        except RuntimeError:
            self._pipe = None  # a pipeline that raised is no longer usable
            raise
        return torch.stack([torch.from_numpy(np.array(out[i])) for i in range(len(encoded))])
