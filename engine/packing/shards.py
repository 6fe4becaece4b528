"""Validation and writing: every image is checked by DALI's own CPU decoder before it goes into a
shard, and the shard writer produces WebDataset tars with DALI's index files.

DALI has no skip-on-error: one undecodable image stops a training pipeline (``engine/data/pipeline.py``
guards against what still gets through). So an image is kept only if DALI decodes it, and as
cheaply as that can be known (``perf/bench_prep.py`` measures the alternatives on the same images,
and which bad files each lets through):

- a JPEG whose entropy-coded data holds no marker but restart markers (one baseline or extended
  scan, the kind img2dataset and most cameras write) is decoded as an 8x8 region at its top-left
  corner. libjpeg-turbo's fatal errors for such a file all come from the headers it parses before
  the first row (tables, frame, scan header); damage inside the scan data is a warning and a grey
  block, never an exception. About 25x cheaper than a full decode.
- any other image (progressive or multi-scan JPEGs, a marker inside the scan data, PNG, WebP) is
  decoded in full, as ``fn.decoders.image`` does in the loader.

A JPEG with bytes after its end marker is trimmed to end at the marker, as the loader's guard
requires; a JPEG with no end marker is rejected as truncated. PIL's full decode is not used: on
damaged JPEGs it rejects files DALI decodes and lets through files that stop DALI (measured).
With ``resize_shorter`` (``catlip pack --resize-shorter``) an image is then decoded in full by DALI
and, when larger, stored resized (:func:`shrink_image`). Beside each ``shard-NNNNNN.tar`` goes ``shard-NNNNNN.idx``, the index
``fn.readers.webdataset(index_paths=...)`` reads, byte for byte what DALI's ``wds2idx`` writes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHARD_PATTERN = "shard-{:06d}.tar"
MAX_PIXELS = 178_956_970  # twice PIL's decompression-bomb limit; larger images are refused
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # what the loader reads
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker; anything else is a
# marker (another scan, a table, damage), after which libjpeg may stop with an error.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_SEQUENTIAL_SOF = {0xC0, 0xC1}  # baseline and extended sequential, Huffman-coded


def image_format(data: bytes) -> str | None:
    """The format named by the file's first bytes, or None for no known image format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def jpeg_layout(data: bytes) -> tuple[bool, int]:
    """``(single_scan, pixels)`` of a JPEG ending at its end marker, from its marker segments.

    ``single_scan``: one sequential Huffman scan of at least 8x8 pixels with no marker but RSTn in
    its entropy-coded data; then only its headers can make a decoder fail, and the corner decode
    reads all of them. ``pixels``: width x height of its frame header (0 if none is reached)."""
    pos, n, sequential, pixels = 2, len(data), False, 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False, pixels
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its header
            start = pos + 2 + length
            return sequential and _MARKER_IN_SCAN.search(data, start, n - 2) is None, pixels
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            sequential = marker in _SEQUENTIAL_SOF and height >= 8 and width >= 8
            pixels = height * width
        pos += 2 + length
    return False, pixels


class _DaliCheck:
    """DALI's CPU image decoders, called eagerly (DALI's dynamic mode) on one image at a time.

    One image per call: with a bad image in a batch, DALI 2.4 aborted the process (eager mode) or
    corrupted its heap so that the next pipeline build crashed (pipeline mode); single eager calls
    raised cleanly on all of 2,640 damaged files (perf/notes_prep.md)."""

    def __init__(self) -> None:
        import nvidia.dali.experimental.dynamic as ndd

        ndd.set_num_threads(1)  # one core per worker process; the executor runs the processes
        self.ndd = ndd

    def decodes(self, data: bytes, corner: bool) -> tuple[int, int] | None:
        """The decoded (height, width) (the corner's, for a corner decode), or None if DALI raises."""
        image = self.pixels(data, corner)
        return None if image is None else image.shape[:2]

    def pixels(self, data: bytes, corner: bool = False) -> np.ndarray | None:
        """The (H, W, 3) uint8 RGB image the loader's ``fn.decoders.image`` gives (its 8x8 top-left
        corner with ``corner``), or None if DALI raises."""
        decoders = self.ndd.decoders
        raw = np.frombuffer(data, np.uint8)
        try:
            with _quiet_stderr():  # the decoders' own messages for each bad file; ours name it
                if corner:
                    image = decoders.image_crop(
                        raw, device="cpu", crop=(8, 8), crop_pos_x=0.0, crop_pos_y=0.0
                    )
                else:
                    image = decoders.image(raw, device="cpu")
                return np.asarray(image)  # evaluation is lazy: errors surface here
        except RuntimeError:
            return None


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration (libjpeg and nvImageCodec write there)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_checks: dict[int, _DaliCheck] = {}


def _dali() -> _DaliCheck:
    """The decoders of this process (made again in a forked worker: DALI objects are per process)."""
    pid = os.getpid()
    if pid not in _checks:
        _checks.clear()
        _checks[pid] = _DaliCheck()
    return _checks[pid]


def check_images(datas: Sequence[bytes]) -> list[tuple[str | None, bytes, str | None]]:
    """For each image: ``(extension, bytes to store, None)`` if DALI decodes it, else
    ``(None, data, reason)``. A JPEG is trimmed to end at its last end marker."""
    return [_check(data) for data in datas]


def _check(data: bytes) -> tuple[str | None, bytes, str | None]:
    fmt = image_format(data) if data else None
    if not data:
        return None, data, "empty file"
    if fmt is None:
        return None, data, "not an image"
    if fmt not in _EXT:
        return None, data, f"unsupported format {fmt}"
    original = data
    if fmt == "JPEG" and not data.endswith(b"\xff\xd9"):
        end = data.rfind(b"\xff\xd9")
        if end < 0:
            return None, data, "truncated"
        data = data[: end + 2]
    corner, pixels = jpeg_layout(data) if fmt == "JPEG" else (False, 0)
    if fmt == "PNG" and len(data) >= 24:  # IHDR
        pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if pixels > MAX_PIXELS:
        return None, original, "too large"
    shape = _dali().decodes(data, corner)
    if shape is None:
        return None, original, "corrupt"
    if not corner and shape[0] * shape[1] > MAX_PIXELS:
        return None, original, "too large"
    return _EXT[fmt], data, None


def check_image(data: bytes) -> tuple[str | None, bytes, str | None]:
    """:func:`check_images` for one image."""
    return check_images([data])[0]


RESIZE_QUALITY = 95  # JPEG quality of resized images (img2dataset's default)


def shrink_image(data: bytes, shorter: int) -> bytes | None:
    """A checked image with its shorter side at most ``shorter`` pixels, as img2dataset's
    ``--resize_mode keep_ratio --resize_only_if_bigger`` stores it: the image DALI decodes from
    ``data`` (the loader's pixels, EXIF orientation applied) resized with PIL's antialiased
    Lanczos filter, longer side rounded, and written as a baseline JPEG of quality 95 without
    metadata. ``data`` itself when its shorter side is already <= ``shorter``; None if DALI's full
    decode raises (a JPEG whose scan data is damaged passes the corner check)."""
    from PIL import Image

    pixels = _dali().pixels(data)
    if pixels is None:
        return None
    height, width = pixels.shape[:2]
    if min(height, width) <= shorter:
        return data
    scale = shorter / min(height, width)
    size = (max(shorter, round(width * scale)), max(shorter, round(height * scale)))  # (w, h) for PIL
    out = io.BytesIO()
    Image.fromarray(pixels[..., :3]).resize(size, Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=RESIZE_QUALITY
    )
    return out.getvalue()


_HEADER_MID = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
_HEADER_TAIL = b"        0" + bytes(100) + b"ustar\x0000" + bytes(64) + b"\x00" * 16  # chksum..devminor


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header ``tarfile`` writes for a regular file of mode 0644, uid/gid 0, no
    owner names, mtime 0 (byte for byte, tested), built without a TarInfo; ``name`` < 100 bytes."""
    raw = name.encode("utf-8")
    if len(raw) >= 100 or size >= 8**11:
        raise ValueError(f"member {name!r} of {size:,} bytes does not fit a plain ustar header")
    head = raw.ljust(100, b"\0") + _HEADER_MID + b"%011o\x00" % size + b"00000000000\x00" + _HEADER_TAIL
    head = head.ljust(tarfile.BLOCKSIZE, b"\0")
    return head[:148] + b"%06o\x00 " % sum(head) + head[156:]


class TarShard:
    """One ``shard-NNNNNN.tar`` and its DALI index, written as ``.tmp`` files and renamed into
    place on :meth:`close`: a shard under its real name is always complete.

    Tars are ustar with fixed owner, mode and mtime, so the same samples give the same bytes. The
    index (``v1.2 N`` then one line per sample of ``ext offset size name`` per member) is the one
    ``wds2idx`` writes; offsets are of the data, one 512-byte header after the member's start."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.samples = 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._offset = 0
        self._index: list[str] = []

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        line = []
        for ext, data in members:
            name = f"{key}.{ext}"
            pad = -len(data) % tarfile.BLOCKSIZE
            self._file.write(ustar_header(name, len(data)))
            self._file.write(data)
            self._file.write(bytes(pad))
            line.append(f"{ext} {self._offset + tarfile.BLOCKSIZE} {len(data)} {name}")
            self._offset += tarfile.BLOCKSIZE + len(data) + pad
        self._index.append(" ".join(line))
        self.samples += 1

    def close(self) -> None:
        end = self._offset + 2 * tarfile.BLOCKSIZE  # two zero blocks, then zeros to a full record
        self._file.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
        self._file.close()
        idx = self.path.with_suffix(".idx")
        idx_tmp = idx.with_name(idx.name + ".tmp")
        idx_tmp.write_text(f"v1.2 {len(self._index)}\n" + "".join(f"{line}\n" for line in self._index))
        idx_tmp.replace(idx)
        self._tmp.replace(self.path)


class ShardWriter:
    """Writes samples into ``shard-NNNNNN.tar`` of ``shard_size`` samples each (:class:`TarShard`)."""

    def __init__(self, out: Path, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out, self.shard_size = Path(out), shard_size
        self.out.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.counts: list[int] = []
        self._shard: TarShard | None = None

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if self._shard is None or self._shard.samples >= self.shard_size:
            self._close_shard()
            self.names.append(SHARD_PATTERN.format(len(self.names)))
            self._shard = TarShard(self.out / self.names[-1])
        self._shard.write(key, members)

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self.counts.append(self._shard.samples)
            self._shard = None

    def close(self) -> None:
        self._close_shard()
