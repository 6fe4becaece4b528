r"""Class-labelled sources for downstream shards: an ImageFolder, COCO instances annotations, or
YOLO detection labels, each read against a class set (``CLASSES.json`` from ``catlip classes``).

Every sample is one image and its classes: the sorted unique indices into ``CLASSES.json``'s
``classes`` list, packed as ``KEY.cls`` (int32 little-endian) beside the image. Source names are
matched to classes by name (an ImageFolder's folder also by the class's ``wnid``, for ImageNet's
``n01440764/`` layout). A source name that is no class is an error naming it, unless
``CLASSES.json`` lists it under ``unmapped`` (``catlip classes --allow-unmapped`` skipped it):
then its labels are dropped and counted.

- :class:`ImageFolderSource`: ``ROOT/<class>/**/<file>``, single-label. Every non-hidden file of
  a class folder is a sample; the image check rejects what is not an image (counted in
  ``rejects.tsv``). A class folder with no file is an error (a broken copy, usually) unless
  ``allow_empty``; files directly under ``ROOT`` and hidden files or folders are not samples.
- :class:`CocoInstancesSource`: ``instances_*.json`` + image folder, multi-label. An image's
  classes are the categories of its annotations (crowd ones included, as pycocotools counts them).
- :class:`YoloSource`: ``ROOT/images/SPLIT/**``, ``ROOT/labels/SPLIT/<same stem>.txt`` with
  ``class cx cy w h`` lines (or a segment's ``class x1 y1 ...``; only the class is read),
  class ids named by ``ROOT/names.yaml``, multi-label.

Images with no class (a COCO image with no annotation; a YOLO image with no label file, YOLO's
"background" image) are kept with an empty ``.cls``, as torchvision's ``CocoDetection`` keeps
them: they are true negatives for every class in a multi-label mAP. ``drop_empty`` leaves them
out instead (the protocol of ML-GCN / ASL / Query2Label on COCO, which count only images with at
least one label); either way they are counted. Label files are parsed here, in the driver, so a
bad line stops the pack before any shard is written, naming the file and the line.

:class:`ImageExclusion` leaves out images named in lists or folders (``--exclude``): e.g. the
coco128 val2017 images that are also in ``coco_photos``, which a model pre-trained on
``coco_photos`` has seen.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from catlip.readers import load_json, load_yaml
from engine.packing.sources import ListedSource, RawSample, inside, sanitize_key

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ClassSetError(ValueError):
    """A class set or a class-labelled source that cannot be packed, saying what to do."""


# ------------------------------------------------------------------------------------ CLASSES.json
@dataclass(frozen=True)
class ClassSet:
    """What packing needs of ``CLASSES.json``: class names (index = position), their wnids, the
    names skipped as unmapped, the vocabulary's identity and the file's own SHA-256."""

    path: Path
    sha256: str
    names: tuple[str, ...]
    wnids: tuple[str | None, ...]
    unmapped: frozenset[str]
    vocab: dict

    @classmethod
    def load(cls, path: Path | str) -> ClassSet:
        """Read ``CLASSES.json`` with ``catlip classes``' own reader (``catlip.classes.ClassMap``,
        the one owner of the format), then check what packing adds: names that are unique (they
        are matched by name) and a vocabulary digest to copy. A ClassSetError says what is wrong."""
        from catlip.classes import ClassMap, ClassMapError

        path = Path(path)
        fix = "make it with `catlip classes --vocab VOCAB --names FILE --out CLASSES.json`"
        if not path.is_file():
            raise ClassSetError(f"{path}: no such class set ({fix})")
        raw = path.read_bytes()
        try:
            class_map = ClassMap.load(path)
        except ClassMapError as err:
            raise ClassSetError(f"{err}; {fix}") from None
        names = tuple(class_map.names)
        repeated = [n for n, k in Counter(names).items() if k > 1]
        if repeated:
            raise ClassSetError(
                f"{path}: class name(s) {', '.join(map(repr, repeated))} appear more than once; {fix}"
            )
        if not _SHA256.fullmatch(str(class_map.vocab.get("sha256"))):
            raise ClassSetError(f"{path}: its vocab sha256 is not 64 hex digits; {fix}")
        return cls(
            path.resolve(), hashlib.sha256(raw).hexdigest(), names,
            tuple(c.wnid or None for c in class_map.classes), frozenset(class_map.unmapped),
            dict(class_map.vocab),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str, *, by_wnid: bool = False) -> int | None:
        """The class called ``name`` (or, with ``by_wnid``, whose wnid it is), else None."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {n: i for i, n in enumerate(self.names)}
            wnid_lookup = {w: i for i, w in enumerate(self.wnids) if w}
            object.__setattr__(self, "_lookup", lookup)
            object.__setattr__(self, "_wnid_lookup", wnid_lookup)
        found = lookup.get(name)
        if found is None and by_wnid:
            found = self.__dict__["_wnid_lookup"].get(name)
        return found

    def metadata(self) -> dict:
        """dataset.json's ``classes``."""
        return {"path": str(self.path), "sha256": self.sha256, "names": list(self.names)}

    def unknown(self, names: Iterable[str], source: str) -> ClassSetError:
        """The error for source names that are no class of this set (nor unmapped)."""
        names = sorted(set(names))
        shown = ", ".join(map(repr, names[:20])) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        return ClassSetError(
            f"{source}: {len(names)} name(s) not in {self.path} ({len(self)} classes): {shown}. Make the "
            "class set from this source's names (`catlip classes --names ...`), or fix the names"
        )


# ---------------------------------------------------------------------------------------- exclude
class ImageExclusion:
    """Images to leave out, named by lists or folders.

    A folder names the files in it (not below); a file names one image per line (blank lines and
    ``#`` comments skipped; anything after a tab is ignored, so a ``file<TAB>caption`` TSV works).
    An entry with a ``/`` matches an image's path relative to the source's image folder; one
    without matches its file name, its file name without the extension, or its sample key."""

    def __init__(self, paths: Sequence[Path | str]) -> None:
        self.paths = [Path(p) for p in paths]
        self.entries: dict[str, Path] = {}  # entry -> where it came from
        self.from_lists: set[str] = set()  # entries of list files (unmatched ones are reported)
        for path in self.paths:
            if path.is_dir():
                names = [p.name for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
            elif path.is_file():
                try:
                    lines = path.read_text(encoding="utf-8").splitlines()
                except UnicodeDecodeError as err:
                    raise ClassSetError(f"--exclude {path}: not UTF-8 text ({err})") from None
                names = [ln.split("\t", 1)[0].strip() for ln in lines]
                names = [n for n in names if n and not n.startswith("#")]
                self.from_lists.update(n.strip("/") for n in names)
            else:
                raise ClassSetError(f"--exclude {path}: no such file or folder")
            for name in names:
                self.entries.setdefault(name.strip("/"), path)
        self.matched: set[str] = set()
        self.excluded: list[str] = []  # image names left out

    def excludes(self, rel: str, key: str) -> bool:
        """Whether the image at ``rel`` (relative to the image folder) with ``key`` is left out."""
        p = Path(rel)
        for candidate in (rel, p.name, p.stem, key):
            if candidate in self.entries:
                self.matched.add(candidate)
                self.excluded.append(rel)
                return True
        return False

    def notes(self) -> list[str]:
        out = [
            f"excluded {len(self.excluded):,} image(s) named in {', '.join(map(str, self.paths))}"
            + (f": {', '.join(sorted(self.excluded)[:12])}" if self.excluded else "")
            + (" ..." if len(self.excluded) > 12 else "")
        ]
        unmatched = sorted(self.from_lists - self.matched)
        if unmatched:
            out.append(
                f"warning: {len(unmatched):,} --exclude entr(y/ies) matched no image: "
                + ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
            )  # fmt: skip
        return out

    def describe(self) -> dict:
        lists = []
        for p in self.paths:
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            lists.append({"path": str(p.resolve()), "sha256": digest})
        return {"lists": lists, "images": len(self.excluded), "names": sorted(self.excluded)}


# ---------------------------------------------------------------------------------------- sources
@dataclass
class _Image:
    rel: str  # path relative to the image folder (posix)
    classes: tuple[int, ...]


@dataclass
class ClassSource(ListedSource):
    """Images and their classes, keyed, filtered by an exclusion and shuffled with a fixed seed
    (sorted sources would put one class, or one folder, in each shard); sized and re-iterable."""

    classes: ClassSet
    images: Path
    multi_label: bool
    shuffle_seed: int | None = 0
    exclude: ImageExclusion | None = None
    drop_empty: bool = False
    info: dict = field(default_factory=dict)  # source facts for dataset.json (counts, paths)
    notes: list[str] = field(default_factory=list)  # printed before packing
    items: list[RawSample] = field(default_factory=list)
    label_member = "cls"

    def _add(self, found: Iterable[_Image]) -> None:
        owner: dict[str, str] = {}
        empty = 0
        for image in sorted(found, key=lambda im: im.rel):
            key = sanitize_key(Path(image.rel).with_suffix("").as_posix().replace("/", "_"))
            if key in owner:  # x.jpg beside x.png, or a/b_c beside a_b/c: the whole path, hashed
                key = sanitize_key(image.rel)
            if key in owner:
                raise ClassSetError(
                    f"{self.images}: {image.rel!r} and {owner[key]!r} would share the key {key}"
                )
            owner[key] = image.rel
            if self.exclude is not None and self.exclude.excludes(image.rel, key):
                continue
            if not image.classes and self.drop_empty:
                empty += 1
                continue
            self.items.append(
                RawSample(key, image.rel, None, path=self.images / image.rel, classes=image.classes)
            )
        if self.exclude is not None:
            self.info["excluded"] = self.exclude.describe()
            self.notes += self.exclude.notes()
        if self.multi_label:
            no_class = sum(not s.classes for s in self.items)
            self.info["images_without_class"] = no_class
            if self.drop_empty:
                self.info["dropped_without_class"] = empty
                self.notes.append(f"left out {empty:,} image(s) with no class (--drop-empty)")
            elif no_class:
                self.notes.append(f"{no_class:,} image(s) have no class: kept, with an empty .cls")
        if not self.items:
            raise ClassSetError(f"{self.images}: no images to pack (after --exclude / --drop-empty)")
        self._shuffle()

    def describe(self) -> dict:
        """The source, for the plan (resume) and dataset.json."""
        return {
            "kind": type(self).__name__,
            "images": str(self.images.resolve()),
            "shuffle_seed": self.shuffle_seed,
            "drop_empty": self.drop_empty,
            **self.info,
        }


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, skipping hidden files and hidden folders."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if not any(part.startswith(".") for part in rel) and path.is_file():
            out.append(path)
    return out


class ImageFolderSource(ClassSource):
    """``ROOT/<class>/**/<file>``: single-label; see the module docstring."""

    def __init__(
        self,
        root: Path | str,
        classes: ClassSet,
        *,
        shuffle_seed: int | None = 0,
        exclude: ImageExclusion | None = None,
        allow_empty: bool = False,
    ) -> None:
        root = Path(root).absolute()
        super().__init__(classes, root, False, shuffle_seed, exclude)
        if not root.is_dir():
            raise ClassSetError(f"--imagefolder {root}: no such folder")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ClassSetError(f"--imagefolder {root}: no class folders (expected ROOT/<class>/<image>)")
        unknown = [f.name for f in folders if classes.index(f.name, by_wnid=True) is None]
        skipped = [n for n in unknown if n in classes.unmapped]
        unknown = [n for n in unknown if n not in classes.unmapped]
        if unknown:
            raise classes.unknown(unknown, f"--imagefolder {root}: class folder(s)")
        found, empty, present = [], [], set()
        for folder in folders:
            if folder.name in skipped:
                continue
            index = classes.index(folder.name, by_wnid=True)
            files = _files(folder)
            if files:
                present.add(index)
            else:
                empty.append(folder.name)
            found += [_Image(p.relative_to(root).as_posix(), (index,)) for p in files]
        if empty and not allow_empty:
            raise ClassSetError(
                f"--imagefolder {root}: class folder(s) with no files: {', '.join(empty)} (an incomplete "
                "copy?). Fix the copy, remove the folder, or give --allow-empty-classes to pack it as is"
            )
        self.info.update(root=str(root), folders=len(folders), empty_folders=empty, unmapped_folders=skipped)
        if skipped:
            self.notes.append(
                f"skipped the folder(s) of unmapped class(es) {', '.join(skipped)} (in {classes.path} 'unmapped')"
            )
        without = len(classes) - len(present)
        if without:
            self.notes.append(f"{without:,} of the {len(classes):,} classes have no images here")
        self._add(found)


def _load_json(path: Path, option: str) -> object:
    if not path.is_file():
        raise ClassSetError(f"{option} {path}: no such file")
    try:
        return load_json(f"{option} {path}", ClassSetError, text=path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ClassSetError(f"{option} {path}: not UTF-8 text ({err})") from None


class CocoInstancesSource(ClassSource):
    """COCO ``instances_*.json`` + image folder: multi-label; see the module docstring."""

    def __init__(
        self,
        json_path: Path | str,
        images: Path | str,
        classes: ClassSet,
        *,
        shuffle_seed: int | None = 0,
        exclude: ImageExclusion | None = None,
        drop_empty: bool = False,
    ) -> None:
        path, images = Path(json_path), Path(images).absolute()
        super().__init__(classes, images, True, shuffle_seed, exclude, drop_empty)
        if not images.is_dir():
            raise ClassSetError(f"--images {images}: no such folder")
        data = _load_json(path, "--coco-instances")
        where = f"--coco-instances {path}"
        lists = {
            k: data.get(k) if isinstance(data, dict) else None
            for k in ("images", "annotations", "categories")
        }
        missing = [k for k, v in lists.items() if not isinstance(v, list)]
        if missing:
            raise ClassSetError(
                f"{where}: not a COCO instances file (no {', '.join(repr(m) for m in missing)} list"
                + ("; a caption file goes to --coco" if "categories" in missing else "") + ")"
            )  # fmt: skip
        category: dict[object, int | None] = {}  # COCO category id -> class index (None: unmapped)
        unknown, names = [], {}
        for i, cat in enumerate(lists["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
                raise ClassSetError(f"{where}: categories[{i}] lacks 'id' or 'name': {cat!r:.80}")
            index = classes.index(cat["name"])
            if index is None and cat["name"] not in classes.unmapped:
                unknown.append(cat["name"])
            category[cat["id"]], names[cat["id"]] = index, cat["name"]
        if unknown:
            raise classes.unknown(unknown, f"{where}: categories")
        files: dict[object, str] = {}
        for i, img in enumerate(lists["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise ClassSetError(f"{where}: images[{i}] lacks 'id' or 'file_name': {img!r:.80}")
            if not inside(images, img["file_name"]):
                raise ClassSetError(
                    f"{where}: images[{i}]: {img['file_name']!r} is outside the image folder {images}"
                )
            if files.setdefault(img["id"], img["file_name"]) != img["file_name"]:
                raise ClassSetError(f"{where}: images[{i}]: image id {img['id']!r} appears twice")
        labels: dict[object, set[int]] = {ident: set() for ident in files}
        dropped: Counter[str] = Counter()
        for i, ann in enumerate(lists["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
                raise ClassSetError(
                    f"{where}: annotations[{i}] lacks 'image_id' or 'category_id': {ann!r:.80}"
                )
            if ann["image_id"] not in labels:
                raise ClassSetError(
                    f"{where}: annotations[{i}]: image_id {ann['image_id']!r} is in no 'images' entry"
                )
            if ann["category_id"] not in category:
                raise ClassSetError(
                    f"{where}: annotations[{i}]: category_id {ann['category_id']!r} is in no 'categories' entry"
                )
            index = category[ann["category_id"]]
            if index is None:
                dropped[names[ann["category_id"]]] += 1
            else:
                labels[ann["image_id"]].add(index)
        self.info.update(annotations=str(path.resolve()), annotations_dropped=dict(dropped.most_common()))
        if dropped:
            self.notes.append(
                f"dropped {sum(dropped.values()):,} annotation(s) of unmapped categories: {', '.join(dropped)}"
            )
        self._add(_Image(Path(files[i]).as_posix(), tuple(sorted(labels[i]))) for i in files)


def read_names_yaml(path: Path) -> dict[int, str]:
    """YOLO class ids -> names from a ``names:`` YAML (a mapping ``id: name`` or a list)."""
    if not path.is_file():
        raise ClassSetError(f"{path}: no such file (a YOLO set names its classes in ROOT/names.yaml)")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path), ClassSetError)
    except UnicodeDecodeError as err:
        raise ClassSetError(f"{path}: not valid YAML ({err})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ClassSetError(f"{path}: no 'names:' mapping (id: name) or list")
    out = {}
    for ident, name in names.items():
        if not isinstance(ident, int) or ident < 0 or not isinstance(name, str) or not name.strip():
            raise ClassSetError(f"{path}: names entry {ident!r}: {name!r} is not 'id: name' with an id >= 0")
        out[ident] = name
    return out


def parse_yolo_label(path: Path, known: dict[int, int | None], names: Path) -> list[int | None]:
    """The class entries (``known[id]``) of one YOLO label file; a ClassSetError names its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ClassSetError(f"{path}: not UTF-8 text; a YOLO label is 'class cx cy w h' lines") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
            coords = [float(f) for f in fields[1:]]
            ident = int(value)
            ok = value == ident and len(coords) >= 4 and len(coords) % 2 == 0
            ok = ok and all(math.isfinite(c) for c in coords)
        except ValueError:
            ok = False
        if not ok:
            raise ClassSetError(
                f"{path}:{number}: {line.strip()[:80]!r} is not a YOLO label line ('class cx cy w h', "
                "or 'class x1 y1 x2 y2 ...' for a segment; class an integer id)"
            )
        if ident not in known:
            raise ClassSetError(
                f"{path}:{number}: class id {ident} is not in {names} (ids {min(known)}-{max(known)})"
            )
        out.append(known[ident])
    return out


class YoloSource(ClassSource):
    """YOLO detection labels: ``ROOT/images/SPLIT``, ``ROOT/labels/SPLIT``, ``ROOT/names.yaml``;
    multi-label; see the module docstring."""

    def __init__(
        self,
        root: Path | str,
        split: str,
        classes: ClassSet,
        *,
        shuffle_seed: int | None = 0,
        exclude: ImageExclusion | None = None,
        drop_empty: bool = False,
    ) -> None:
        root = Path(root).absolute()
        images, labels = root / "images" / split, root / "labels" / split
        super().__init__(classes, images, True, shuffle_seed, exclude, drop_empty)
        if not images.is_dir():
            there = (
                sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
                if (root / "images").is_dir()
                else []
            )
            raise ClassSetError(
                f"--yolo {root} --split {split}: no folder {images}"
                + (f" (splits there: {', '.join(there)})" if there else " (expected ROOT/images/SPLIT)")
            )  # fmt: skip
        names_file = root / "names.yaml"
        names = read_names_yaml(names_file)
        known = {ident: classes.index(name) for ident, name in names.items()}
        unknown = [
            names[i] for i, index in known.items() if index is None and names[i] not in classes.unmapped
        ]
        if unknown:
            raise classes.unknown(unknown, f"{names_file}: names")
        found, stems, no_file, unmapped_objects = [], set(), 0, 0
        for path in _files(images):
            rel = path.relative_to(images)
            label = labels / rel.with_suffix(".txt")
            stems.add(rel.with_suffix("").as_posix())
            entries = parse_yolo_label(label, known, names_file) if label.is_file() else []
            no_file += not label.is_file()
            kept = {e for e in entries if e is not None}
            unmapped_objects += sum(e is None for e in entries)
            found.append(_Image(rel.as_posix(), tuple(sorted(kept))))
        orphans = (
            sorted(
                p.relative_to(labels).with_suffix("").as_posix()
                for p in _files(labels)
                if p.suffix == ".txt" and p.relative_to(labels).with_suffix("").as_posix() not in stems
            )
            if labels.is_dir()
            else []
        )
        self.info.update(
            root=str(root), split=split, names=str(names_file.resolve()),
            images_without_label_file=no_file, label_files_without_image=orphans,
            objects_of_unmapped_classes=unmapped_objects,
        )  # fmt: skip
        if no_file:
            self.notes.append(
                f"{no_file:,} image(s) have no label file in {labels}: no objects (YOLO convention)"
            )
        if orphans:
            self.notes.append(
                f"warning: {len(orphans):,} label file(s) in {labels} have no image, not packed: "
                + ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
            )  # fmt: skip
        if unmapped_objects:
            self.notes.append(f"dropped {unmapped_objects:,} object(s) of unmapped classes")
        self._add(found)
