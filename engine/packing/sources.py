r"""Where packing reads image-caption pairs from (class-labelled images: ``classsets.py``): each
source yields :class:`RawSample`\ s, before validation, and cuts itself into tasks, one per
output shard.

COCO caption JSON + image folder, ``file<TAB>caption`` TSV + image folder, or img2dataset shards
(``NNNNNNNNN.jpg`` + ``.txt`` + ``.json``). COCO and TSV samples are shuffled with a fixed seed:
DALI's shuffle buffer is local (``initial_fill`` samples), and in source order the five captions
of a COCO image would land in one batch. A folder source's task ``k`` is its samples
``[k * shard_size, (k + 1) * shard_size)``; an img2dataset source's task ``k`` is its ``k``-th tar,
read by the worker itself. Either way the assignment of samples to shards is fixed by the input.

Sample keys are unique: a name that sanitising changes (``a b.jpg``, ``a.b.jpg``) gets a hash of
the original name, so it cannot become another file's key (``a_b.jpg``). File names that leave the
image folder (absolute, or through ``..``) are refused.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
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
    member in the tar); ``image`` names the image in messages. ``classes`` (sorted class indices)
    makes it a class-labelled sample, packed with a ``.cls`` member instead of ``.txt`` + ``.lbl``
    (``classsets.py``)."""

    key: str
    image: str
    caption: object
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None
    classes: tuple[int, ...] | None = None


def sanitize_key(key: str) -> str:
    """A tar member stem DALI reads back as one sample: ASCII letters, digits, ``_``, ``-`` only.

    Dots would split the key (DALI takes the extension from the first dot); other characters
    would need PAX headers, which ``wds2idx`` and DALI's reader count as members. A key that had
    to change ends in ``-`` and 12 hex digits of the original's SHA-1, so distinct names stay
    distinct; ustar names are at most 100 bytes with the extension, so long keys are cut first."""
    clean = _KEY_BAD.sub("_", key)
    if clean == key and len(clean) <= 80:
        return clean
    return clean[:60] + "-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def inside(folder: Path, name: str) -> bool:
    """Whether the relative file name ``name`` stays inside ``folder`` (no absolute path, no ``..``
    above it; judged on the name, so links inside the folder are the folder owner's choice)."""
    path = Path(name)
    return not path.is_absolute() and os.path.normpath(name).split(os.sep, 1)[0] != ".."


def chunk_tasks(samples: Iterable[RawSample], shard_size: int) -> Iterator[tuple[RawSample, ...]]:
    """Consecutive runs of ``shard_size`` samples: one task, and one output shard, each."""
    it = iter(samples)
    while chunk := tuple(itertools.islice(it, shard_size)):
        yield chunk


class ListedSource:
    """A source whose samples are all listed when it is built (``self.items``, in a fixed order
    after :meth:`_shuffle`): sized, re-iterable, cut into tasks of ``shard_size`` samples."""

    items: list[RawSample]
    shuffle_seed: int | None

    def _shuffle(self) -> None:
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawSample]:
        return iter(self.items)

    def tasks(self, shard_size: int) -> Iterator[tuple[RawSample, ...]]:
        return chunk_tasks(self.items, shard_size)


class _FolderSource(ListedSource):
    """Captions naming image files in a folder: keys ``<image stem>_<caption ordinal>``, samples
    shuffled with a fixed seed (see the module docstring), sized and re-iterable."""

    def __init__(
        self, images: Path | str, rows: Iterable[tuple[str, str, str]], shuffle_seed: int | None
    ) -> None:
        from catlip.captions import CaptionFileError

        self.images = Path(images).absolute()  # workers may run elsewhere (another cwd, a Ray node)
        self.shuffle_seed = shuffle_seed
        seen: Counter[str] = Counter()
        owner: dict[str, str] = {}  # key -> image name, to prove keys unique
        self.items: list[RawSample] = []
        for name, caption, where in rows:  # (file name relative to the folder, caption, "file:line")
            if not inside(self.images, name):
                raise CaptionFileError(
                    f"{where}: {name!r} is outside the image folder {self.images} (absolute, or "
                    "through '..'); name files relative to --images"
                )
            stem = Path(name).with_suffix("").as_posix()
            key = f"{sanitize_key(stem)}_{seen[stem]}"
            seen[stem] += 1
            if owner.setdefault(key, name) != name:
                raise CaptionFileError(
                    f"{where}: {name!r} and {owner[key]!r} would share the sample key {key}"
                )
            problem = None if isinstance(caption, str) else "caption not text"  # COCO: null, a number
            self.items.append(RawSample(key, name, caption, path=self.images / name, problem=problem))
        if not self.items:
            raise CaptionFileError(
                f"{self.captions_file}: no captions in it, so the pack would be empty; nothing written "
                "(check the file)"
            )
        self._shuffle()

    def describe(self) -> dict:
        """The source, for a resumed pack to recognise (each task checks its own samples)."""
        return {
            "kind": type(self).__name__,
            "captions": str(self.captions_file.resolve()),
            "images": str(self.images.resolve()),
            "shuffle_seed": self.shuffle_seed,
        }


class CocoSource(_FolderSource):
    """COCO ``captions_*.json`` + image folder: one sample per caption annotation.

    The image of an annotation is the ``file_name`` the JSON's ``images`` list gives its
    ``image_id``, else ``f"{image_id:012d}.jpg"``. Keys are ``<image stem>_<caption ordinal>``."""

    def __init__(self, json_path: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, load_coco

        self.json_path = self.captions_file = path = Path(json_path)
        if not path.is_file():
            raise CaptionFileError(f"{path}: no such file")
        data, annotations = load_coco(path)
        files = {img.get("id"): img["file_name"] for img in data.get("images") or [] if "file_name" in img}

        def rows() -> Iterator[tuple[str, str, str]]:
            for i, ann in enumerate(annotations):
                if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
                    raise CaptionFileError(
                        f"{path}: annotations[{i}] lacks 'image_id' or 'caption': {ann!r:.80}"
                    )
                ident = ann["image_id"]
                yield (
                    files.get(ident) or (f"{ident:012d}.jpg" if isinstance(ident, int) else f"{ident}.jpg"),
                    ann["caption"],
                    f"{path}: annotations[{i}]",
                )

        super().__init__(images, rows(), shuffle_seed)


class TsvSource(_FolderSource):
    """``file<TAB>caption`` TSV + image folder; ``file`` is relative to the folder."""

    def __init__(self, tsv: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, iter_tsv_rows

        self.tsv = self.captions_file = Path(tsv)
        if not self.tsv.is_file():
            raise CaptionFileError(f"{self.tsv}: no such file")
        rows = (
            (name, caption, f"{self.tsv}:{line}")
            for line, name, caption in iter_tsv_rows(self.tsv, lines=True)
        )
        super().__init__(images, rows, shuffle_seed)


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
        for tar_path in self.tars:
            yield from read_img2dataset_tar(tar_path)

    def tasks(self, shard_size: int) -> list[str]:
        """One task per input tar (``shard_size`` does not apply: output shard k is input tar k)."""
        return [str(p.resolve()) for p in self.tars]

    def describe(self) -> dict:
        return {"kind": "Img2DatasetSource", "tars": [str(p.resolve()) for p in self.tars]}


def read_img2dataset_tar(tar_path: Path | str) -> Iterator[RawSample]:
    """The samples of one img2dataset (WebDataset) tar, streamed: members of a sample are contiguous.
    A key seen twice in the tar is a sample with a problem, so keys stay unique in each shard."""
    from catlip.captions import iter_tar_files

    tar_path = Path(tar_path)
    group: dict[str, bytes] = {}
    last = None
    keys: set[str] = set()
    for name, data in iter_tar_files(tar_path):
        dot = name.find(".", name.rfind("/") + 1)  # as DALI splits it
        if dot <= name.rfind("/") + 1:
            continue  # no extension, or a hidden file
        key, ext = name[:dot], name[dot + 1 :]
        if key != last and last is not None:
            yield _img2dataset_sample(tar_path, last, group, keys)
            group = {}
        last = key
        group[ext.lower()] = data
    if last is not None:
        yield _img2dataset_sample(tar_path, last, group, keys)


def _img2dataset_sample(tar_path: Path, key: str, group: dict[str, bytes], keys: set[str]) -> RawSample:
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
    sample = RawSample(
        sanitize_key(key), name, caption, data=group.get(ext) if ext else None, problem=problem
    )
    if sample.key in keys:
        sample.problem = "duplicate key"
    keys.add(sample.key)
    return sample
