"""Read (key, caption) pairs from COCO caption JSON, ``file<TAB>caption`` TSV, and WebDataset tars.

Errors name the file and, where the format has lines, the line. A caption that is null or not a
string is passed on as is: the labeler turns it into an empty label list, it does not stop a run
(``catlip pack`` rejects such a sample, counted). A UTF-8 byte-order mark at the start of a file is
not part of its first line. Captions longer than :data:`MAX_CAPTION_CHARS` are labelled on their
first :data:`MAX_CAPTION_CHARS` characters (:func:`cut_caption`); the commands count them.
"""

from __future__ import annotations

import gzip
import itertools
import tarfile
from collections.abc import Iterator
from pathlib import Path

Caption = tuple[str, object]  # (key, caption)
# Captions are cut here before labelling: tagging is linear in the text (a 10 MB caption line took
# `catlip vocab` 217 s), and alt-text or a long description is well under it (COCO's are ~50).
MAX_CAPTION_CHARS = 4096


def cut_caption(caption: object) -> tuple[object, bool]:
    """``(caption, False)``, or its first :data:`MAX_CAPTION_CHARS` characters and True."""
    if isinstance(caption, str) and len(caption) > MAX_CAPTION_CHARS:
        return caption[:MAX_CAPTION_CHARS], True
    return caption, False


class CaptionFileError(ValueError):
    """A caption source that cannot be read, naming the file and the line or member."""


def caption_format(path: Path | str) -> str:
    name = Path(path).name.lower()
    if name.endswith(".json"):
        return "coco"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    raise CaptionFileError(
        f"{path}: unknown caption format (expected COCO .json, file<TAB>caption .tsv, or .tar shards)"
    )


def iter_captions(path: Path | str) -> Iterator[Caption]:
    """Yield (key, caption) from one file, choosing the reader by extension."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: no such file")
    reader = {"coco": read_coco, "tsv": read_tsv, "webdataset": read_webdataset}
    yield from reader[caption_format(path)](path)


def load_coco(path: Path) -> tuple[dict, list]:
    """A COCO caption file's parsed JSON and its ``annotations`` list, or a CaptionFileError."""
    from catlip.readers import load_json

    try:
        data = load_json(path, CaptionFileError)
    except UnicodeDecodeError as err:
        raise CaptionFileError(f"{path}: not UTF-8 text ({err})") from err
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise CaptionFileError(f"{path}: not a COCO caption file (no 'annotations' list)")
    return data, annotations


def read_coco(path: Path) -> Iterator[Caption]:
    """COCO ``captions_*.json``: the ``annotations`` list of {image_id, caption}."""
    _, annotations = load_coco(path)
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "caption" not in ann:
            raise CaptionFileError(f"{path}: annotations[{i}] has no 'caption' field: {ann!r:.80}")
        yield str(ann.get("image_id", i)), ann["caption"]


def iter_tsv_rows(path: Path, *, lines: bool = False) -> Iterator[tuple]:
    """(file name, caption) of each ``file<TAB>caption`` line, ``(line number, file name, caption)``
    with ``lines``; blank lines and a header skipped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (Windows editors)
                raw = raw[3:]
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise CaptionFileError(f"{path}:{lineno}: not UTF-8 ({err.reason})") from err
            if not line.strip():
                continue
            name, tab, caption = line.partition("\t")
            if not tab or not name:
                raise CaptionFileError(f"{path}:{lineno}: expected 'file<TAB>caption', got {line!r:.80}")
            if lineno == 1 and (name.lower(), caption.lower()) in {
                ("file", "caption"),
                ("filename", "caption"),
            }:
                continue  # header
            yield (lineno, name, caption) if lines else (name, caption)


def read_tsv(path: Path) -> Iterator[Caption]:
    """``file<TAB>caption`` per line; the key is the file name's stem."""
    for name, caption in iter_tsv_rows(path):
        yield Path(name).stem, caption


def iter_tar_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each regular file of a tar, streamed; a CaptionFileError for a tar
    that is unreadable or truncated. Python's tarfile ends quietly at a cut inside a member header;
    a tar that is complete ends with zero blocks after its last member, so that is checked.

    Plain ustar tars (what WebDataset writers and this engine write) are read by a small parser,
    ~10x cheaper than ``tarfile``; others (compressed, PAX or GNU long-name headers) by tarfile."""
    done = 0
    if not str(path).lower().endswith((".gz", ".tgz")):
        try:
            yield from _iter_ustar(path)
            return
        except _NotPlainUstar as stop:  # tarfile takes over after the members already handed out
            done = stop.yielded
        except OSError as err:
            raise CaptionFileError(f"{path}: unreadable tar shard ({err})") from err
    yield from itertools.islice(_iter_tarfile(path), done, None)


class _NotPlainUstar(Exception):
    def __init__(self, yielded: int) -> None:
        self.yielded = yielded


_BLOCK = 512


def _iter_ustar(path: Path) -> Iterator[tuple[str, bytes]]:
    """The fast reader: ustar headers parsed by hand, checksums verified, data read as it comes."""
    yielded = 0
    with open(path, "rb") as f:
        while True:
            header = f.read(_BLOCK)
            if len(header) < _BLOCK:
                raise CaptionFileError(f"{path}: unreadable tar shard (truncated: no end-of-archive blocks)")
            if not header.strip(b"\0"):  # end of archive: a second zero block must follow
                if len(f.read(_BLOCK).strip(b"\0")) or f.tell() % _BLOCK:
                    raise CaptionFileError(
                        f"{path}: unreadable tar shard (truncated: no end-of-archive blocks)"
                    )
                return
            try:
                stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                raise CaptionFileError(
                    f"{path}: unreadable tar shard (bad header at byte {f.tell() - _BLOCK:,})"
                ) from None
            if stored != sum(header) - sum(header[148:156]) + 8 * 32:
                raise CaptionFileError(
                    f"{path}: unreadable tar shard (bad checksum at byte {f.tell() - _BLOCK:,})"
                )
            kind = header[156:157]
            if kind not in (b"0", b"\0", b"5") or header[257:262] not in (b"ustar", b"\0\0\0\0\0"):
                raise _NotPlainUstar(yielded)
            data = f.read(size)
            if len(data) < size:
                raise CaptionFileError(f"{path}: unreadable tar shard (unexpected end of data)")
            f.seek(-size % _BLOCK, 1)
            if kind != b"5":
                name = header[:100].split(b"\0", 1)[0]
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                yield (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape"), data
                yielded += 1


def _iter_tarfile(path: Path) -> Iterator[tuple[str, bytes]]:
    opener = gzip.open if str(path).lower().endswith((".gz", ".tgz")) else open
    try:
        with opener(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
            end = tar.offset  # just past the last member's data
            f.seek(end)
            tail = f.read(2 * tarfile.BLOCKSIZE)
            if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
                raise CaptionFileError(
                    f"{path}: unreadable tar shard (truncated: no end-of-archive blocks after byte {end:,})"
                )
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CaptionFileError(f"{path}: unreadable tar shard ({err})") from err


def read_webdataset(path: Path) -> Iterator[Caption]:
    """The ``.txt`` member of each sample of a WebDataset (or img2dataset) tar shard."""
    for name, data in iter_tar_files(path):
        if not name.endswith(".txt"):
            continue
        base = name.rsplit("/", 1)
        key = (base[0] + "/" if len(base) == 2 else "") + base[-1].split(".", 1)[0]
        try:
            yield key, data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CaptionFileError(f"{path}: member {name}: not UTF-8 ({err.reason})") from err
