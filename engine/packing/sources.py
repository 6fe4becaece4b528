r"""Where packing reads samples from: each source yields :class:`RawSample`\ s, before validation.

COCO caption JSON + image folder, ``file<TAB>caption`` TSV + image folder, or img2dataset shards
(``NNNNNNNNN.jpg`` + ``.txt`` + ``.json``). COCO and TSV samples are shuffled with a fixed seed:
DALI's shuffle buffer is local (``initial_fill`` samples), and in source order the five captions
of a COCO image would land in one batch.
"""

from __future__ import annotations

import hashlib
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # what the loader's reader accepts, in this order
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")  # DALI splits a member name at its first dot


@dataclass
class RawSample:
    """One image-caption pair as a source yields it, before validation.

    ``data`` holds the image bytes for sources that have them in memory (tars); otherwise the
    image is read from ``path``. ``problem`` rejects the sample before any decode (e.g. no image
    member in the tar); ``image`` names the image in messages."""

    key: str
    image: str
    caption: object
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None


def sanitize_key(key: str) -> str:
    """A tar member stem DALI reads back as one sample: ASCII letters, digits, ``_``, ``-`` only.

    Dots would split the key (DALI takes the extension from the first dot); other characters
    would need PAX headers, which ``wds2idx`` and DALI's reader count as members."""
    clean = _KEY_BAD.sub("_", key)
    if len(clean) > 80:  # ustar names are at most 100 bytes with the extension
        clean = clean[:60] + "_" + hashlib.sha1(key.encode()).hexdigest()[:16]
    return clean


class _FolderSource:
    """Captions naming image files in a folder: keys ``<image stem>_<caption ordinal>``, samples
    shuffled with a fixed seed (see the module docstring), sized and re-iterable."""

    def __init__(self, images: Path | str, rows: Iterable[tuple[str, str]], shuffle_seed: int | None) -> None:
        self.images = Path(images)
        seen: Counter[str] = Counter()
        self.items: list[RawSample] = []
        for name, caption in rows:  # (file name relative to the folder, caption)
            stem = Path(name).with_suffix("").as_posix()
            key = sanitize_key(f"{stem}_{seen[stem]}")
            seen[stem] += 1
            self.items.append(RawSample(key, name, caption, path=self.images / name))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawSample]:
        return iter(self.items)


class CocoSource(_FolderSource):
    """COCO ``captions_*.json`` + image folder: one sample per caption annotation.

    The image of an annotation is the ``file_name`` the JSON's ``images`` list gives its
    ``image_id``, else ``f"{image_id:012d}.jpg"``. Keys are ``<image stem>_<caption ordinal>``."""

    def __init__(self, json_path: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, load_coco

        self.json_path = path = Path(json_path)
        if not path.is_file():
            raise CaptionFileError(f"{path}: no such file")
        data, annotations = load_coco(path)
        files = {img.get("id"): img["file_name"] for img in data.get("images") or [] if "file_name" in img}

        def rows() -> Iterator[tuple[str, str]]:
            for i, ann in enumerate(annotations):
                if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
                    raise CaptionFileError(
                        f"{path}: annotations[{i}] lacks 'image_id' or 'caption': {ann!r:.80}"
                    )
                ident = ann["image_id"]
                yield (
                    files.get(ident) or (f"{ident:012d}.jpg" if isinstance(ident, int) else f"{ident}.jpg"),
                    ann["caption"],
                )

        super().__init__(images, rows(), shuffle_seed)


class TsvSource(_FolderSource):
    """``file<TAB>caption`` TSV + image folder; ``file`` is relative to the folder."""

    def __init__(self, tsv: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, iter_tsv_rows

        self.tsv = Path(tsv)
        if not self.tsv.is_file():
            raise CaptionFileError(f"{self.tsv}: no such file")
        super().__init__(images, iter_tsv_rows(self.tsv), shuffle_seed)


class Img2DatasetSource:
    """img2dataset output: tars of ``KEY.jpg`` (or png/webp) + ``KEY.txt`` + ``KEY.json``.

    ``paths`` is a folder (its ``*.tar``, sorted) or tar files. Members of a sample are contiguous
    in a WebDataset tar, so the tars are streamed, never extracted; source order is kept."""

    def __init__(self, paths: Path | str | Iterable[Path | str]) -> None:
        from catlip.captions import CaptionFileError

        if isinstance(paths, (str, Path)):
            paths = [paths]
        tars: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                tars += sorted(p.glob("*.tar"))
            elif p.is_file():
                tars.append(p)
            else:
                raise CaptionFileError(f"{p}: no such file or folder")
        if not tars:
            raise CaptionFileError(f"no .tar shards in {', '.join(map(str, paths))}")
        self.tars = tars

    def __iter__(self) -> Iterator[RawSample]:
        from catlip.captions import CaptionFileError

        for tar_path in self.tars:
            try:
                with tarfile.open(tar_path, mode="r|*") as tar:
                    group: dict[str, bytes] = {}
                    last = None
                    for member in tar:
                        if not member.isfile():
                            continue
                        dot = member.name.find(".", member.name.rfind("/") + 1)  # as DALI splits it
                        if dot <= member.name.rfind("/") + 1:
                            continue  # no extension, or a hidden file
                        key, ext = member.name[:dot], member.name[dot + 1 :]
                        if key != last and last is not None:
                            yield self._sample(tar_path, last, group)
                            group = {}
                        last = key
                        group[ext.lower()] = tar.extractfile(member).read()
                    if last is not None:
                        yield self._sample(tar_path, last, group)
            except (tarfile.TarError, EOFError, OSError) as err:
                raise CaptionFileError(f"{tar_path}: unreadable tar shard ({err})") from err

    @staticmethod
    def _sample(tar_path: Path, key: str, group: dict[str, bytes]) -> RawSample:
        name = f"{tar_path.name}:{key}"
        ext = next((e for e in IMAGE_EXTS if e in group), None)
        problem = None
        caption: object = None
        if "txt" not in group:
            problem = "missing caption"
        else:
            try:
                caption = group["txt"].decode("utf-8")
            except UnicodeDecodeError:
                problem = "caption not UTF-8"
        if ext is None:
            problem = "missing image"
        data = group.get(ext) if ext else None
        return RawSample(sanitize_key(key), name, caption, data=data, problem=problem)
