"""Validation and writing: every image decoded in full before it goes into a shard, and the
shard writer that produces WebDataset tars with DALI's index files.

DALI has no skip-on-error: one undecodable image stops a training pipeline (``engine/data.py``
guards against what still gets through). A JPEG with bytes after its end marker is trimmed to end
at the marker, as the loader's in-pipeline guard requires; a JPEG with no end marker is rejected as
truncated. Beside each ``shard-NNNNNN.tar`` goes ``shard-NNNNNN.idx``, the index
``fn.readers.webdataset(index_paths=...)`` reads, byte for byte what DALI's ``wds2idx`` writes
(without it DALI would scan every tar at start-up).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

SHARD_PATTERN = "shard-{:06d}.tar"
_PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _has_image_magic(data: bytes) -> bool:
    """Whether ``data`` starts like an image file (so a parse failure means corrupt, not foreign)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def check_image(data: bytes) -> tuple[str | None, bytes, str | None]:
    """Decode ``data`` in full with PIL: ``(extension, bytes to store, None)`` for a good image,
    ``(None, data, reason)`` otherwise. A JPEG is trimmed to end at its last end marker."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, data, "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()  # structure and checksums (PNG CRCs); the image is unusable after this
        ext = _PIL_FORMATS.get(fmt or "")
        if ext is None:
            return None, data, f"unsupported format {fmt}"
        if ext == "jpg" and not data.endswith(b"\xff\xd9"):
            end = data.rfind(b"\xff\xd9")
            if end < 0:
                return None, data, "truncated"
            data = data[: end + 2]
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: truncated or corrupt scans fail here
            if img.width < 1 or img.height < 1:
                return None, data, "corrupt"
        return ext, data, None
    except UnidentifiedImageError:  # PIL found no format whose header parses
        return None, data, "corrupt" if _has_image_magic(data) else "not an image"
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for bad data
        return None, data, "truncated" if "truncated" in str(err).lower() else "corrupt"
    except Image.DecompressionBombError:
        return None, data, "too large"


class ShardWriter:
    """Writes samples into ``shard-NNNNNN.tar`` of ``shard_size`` samples, each with its DALI index.

    Tars are ustar with fixed owner, mode and mtime, so the same input gives the same bytes. The
    index (``v1.2 N`` then one line per sample of ``ext offset size name`` per member) is the one
    ``wds2idx`` writes; offsets are of the data, one 512-byte header after the member's start."""

    def __init__(self, out: Path, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out, self.shard_size = out, shard_size
        out.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.counts: list[int] = []
        self._tar: tarfile.TarFile | None = None
        self._index: list[str] = []

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if self._tar is None or len(self._index) >= self.shard_size:
            self._close_shard()
            name = SHARD_PATTERN.format(len(self.names))
            self.names.append(name)
            self._tar = tarfile.open(self.out / (name + ".tmp"), "w", format=tarfile.USTAR_FORMAT)
        line = []
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            line.append(f"{ext} {self._tar.offset - padded} {len(data)} {info.name}")
        self._index.append(" ".join(line))

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name = self.names[-1]
        idx = self.out / (name[: -len(".tar")] + ".idx")
        idx.write_text(f"v1.2 {len(self._index)}\n" + "".join(f"{line}\n" for line in self._index))
        (self.out / (name + ".tmp")).replace(self.out / name)
        self.counts.append(len(self._index))
        self._tar, self._index = None, []

    def close(self) -> None:
        self._close_shard()
