"""Class-set shards (``catlip pack --imagefolder | --coco-instances | --yolo --classes``): the
``.cls`` members, dataset.json, exclusions, the loader reading ``.cls`` batches, the real coco128,
and every bad input as a clear error or a counted reject.

Synthetic sets are a few tiny images written with PIL; CLASSES.json is written by hand here in
the format ``catlip classes`` writes (catlip-classes/1, catlip/classes.py)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from shard_utils import read_all

from engine.config import ConfigError
from engine.data import DataError, class_pack_loader, loaders_from_config
from engine.packing import (
    ClassSet,
    ClassSetError,
    CocoInstancesSource,
    ImageExclusion,
    ImageFolderSource,
    PackError,
    YoloSource,
    pack,
)
from engine.packing.cli import add_pack_parser

VOCAB_SHA = hashlib.sha256(b"a vocabulary").hexdigest()
COCO_PHOTOS_IN_COCO128_VAL = [  # the coco128 val2017 images that are also in coco_photos
    "000000000139.jpg", "000000000632.jpg", "000000000802.jpg", "000000001532.jpg", "000000002592.jpg",
    "000000006213.jpg", "000000010092.jpg", "000000011813.jpg", "000000012280.jpg",
]  # fmt: skip


def write_classes(path: Path, names: list[str], *, unmapped: tuple[str, ...] = (), wnids=None) -> Path:
    classes = [
        {
            "index": i, "name": n, "wnid": (wnids or {}).get(n, f"n{i:08d}"), "synset": f"{n}.n.01",
            "rows": [i], "row_wnids": [f"n{i:08d}"], "distance": 0, "how": "lemma",
        }
        for i, n in enumerate(names)
    ]  # fmt: skip
    data = {
        "format": "catlip-classes/1",
        "vocab": {"path": "vocab.tsv", "size": 99, "sha256": VOCAB_SHA},
        "source": {"path": "names.txt", "kind": "names"},
        "classes": classes,
        "unmapped": list(unmapped),
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def cls_of(sample: dict[str, bytes]) -> list[int]:
    assert "txt" not in sample and "lbl" not in sample
    return np.frombuffer(sample["cls"], "<i4").tolist()


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def pack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catlip")
    add_pack_parser(parser.add_subparsers(dest="command"))
    return parser


def run_pack(*argv: str | Path) -> int:
    args = pack_parser().parse_args(["pack", *map(str, argv), "--quiet"])
    return args.func(args)


# ------------------------------------------------------------------------------------ ImageFolder
@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    put(root / "cat" / "a.jpg", image_bytes(0))
    put(root / "cat" / "b.png", image_bytes(1, "PNG"))
    put(root / "dog" / "c.jpg", image_bytes(2))
    put(root / "dog" / "sub" / "d.jpg", image_bytes(3))
    put(root / "dog" / "notes.txt", "not a photo")  # rejected, counted
    put(root / "dog" / ".DS_Store", b"\0\0\0\1Bud1")  # hidden: not a sample
    put(root / "README.md", "top-level files are not samples")
    return root


def test_imagefolder_pack(imagefolder: Path, tmp_path: Path) -> None:
    classes = write_classes(tmp_path / "classes.json", ["bird", "cat", "dog"])
    out = tmp_path / "out"
    source = ImageFolderSource(imagefolder, ClassSet.load(classes))
    assert source.notes == ["1 of the 3 classes have no images here"]
    stats = pack(source, out, shard_size=2, progress=False)
    samples = read_all(out)
    assert {k: cls_of(s) for k, s in samples.items()} == {
        "cat_a": [1],
        "cat_b": [1],
        "dog_c": [2],
        "dog_sub_d": [2],
    }
    assert samples["cat_a"]["jpg"] == (imagefolder / "cat" / "a.jpg").read_bytes()
    assert samples["cat_b"]["png"] == (imagefolder / "cat" / "b.png").read_bytes()
    meta = meta_of(out)
    assert meta["label_member"] == "cls" and meta["num_classes"] == 3 and meta["multi_label"] is False
    assert meta["classes"] == {
        "path": str(classes.resolve()),
        "sha256": hashlib.sha256(classes.read_bytes()).hexdigest(),
        "names": ["bird", "cat", "dog"],
    }
    assert meta["vocab_sha256"] == VOCAB_SHA and "vocab_size" not in meta and "captions" not in meta
    assert meta["samples"] == meta["images"] == 4 and meta["class_samples"] == [0, 2, 2]
    assert meta["max_labels_per_sample"] == 1 and meta["labels_per_sample_mean"] == 1.0
    assert meta["rejects"] == {"not an image": 1} and dict(stats.rejects) == {"not an image": 1}
    assert (out / "rejects.tsv").read_text().splitlines()[1:] == ["dog_notes\tdog/notes.txt\tnot an image"]
    assert meta["shards"] == len(meta["shard_names"]) >= 2 and sum(meta["shard_samples"]) == 4
    assert "classes per sample: mean 1.00" in stats.summary()


def test_imagefolder_folders_match_by_name_or_wnid(tmp_path: Path) -> None:
    put(tmp_path / "f" / "n02084071" / "x.jpg", image_bytes(4))
    put(tmp_path / "f" / "cat" / "y.jpg", image_bytes(5))
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["cat", "dog"], wnids={"dog": "n02084071"}))
    source = ImageFolderSource(tmp_path / "f", classes, shuffle_seed=None)
    assert [(s.image, s.classes) for s in source] == [("cat/y.jpg", (0,)), ("n02084071/x.jpg", (1,))]
    put(tmp_path / "f" / "cat" / "y.png", image_bytes(6, "PNG"))  # the same stem: a key of its own
    keys = [s.key for s in ImageFolderSource(tmp_path / "f", classes, shuffle_seed=None)]
    assert keys[0] == "cat_y" and re.fullmatch(r"cat_y_png-[0-9a-f]{12}", keys[1]) and len(set(keys)) == 3


def test_imagefolder_empty_and_unknown_class_folders(imagefolder: Path, tmp_path: Path) -> None:
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["bird", "cat", "dog"]))
    (imagefolder / "bird").mkdir()
    put(imagefolder / "bird" / ".hidden", "x")  # only hidden files: still empty
    with pytest.raises(ClassSetError, match=r"class folder\(s\) with no files: bird .*--allow-empty-classes"):
        ImageFolderSource(imagefolder, classes)
    source = ImageFolderSource(imagefolder, classes, allow_empty=True)
    assert len(source) == 5 and source.info["empty_folders"] == ["bird"]
    (imagefolder / "horse").mkdir()
    put(imagefolder / "horse" / "h.jpg", image_bytes(6))
    with pytest.raises(
        ClassSetError, match=r"class folder\(s\): 1 name\(s\) not in .*c\.json \(3 classes\): 'horse'"
    ):
        ImageFolderSource(imagefolder, classes, allow_empty=True)
    # a class left unmapped by `catlip classes --allow-unmapped`: its folder is skipped, and said
    unmapped = ClassSet.load(write_classes(tmp_path / "u.json", ["bird", "cat", "dog"], unmapped=("horse",)))
    source = ImageFolderSource(imagefolder, unmapped, allow_empty=True)
    assert len(source) == 5 and any("horse" in note for note in source.notes)


# ---------------------------------------------------------------------------------- COCO instances
def coco_instances(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "coco"
    for i in range(1, 5):
        put(images / f"{i:012d}.jpg", image_bytes(10 + i))
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 32} for i in range(1, 5)],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 18, "bbox": [1, 1, 4, 4], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 5, "image_id": 4, "category_id": 90, "bbox": [0, 0, 4, 4], "iscrowd": 0},
        ],
    }
    return put(tmp_path / "instances.json", json.dumps(data)), images


def test_coco_instances_pack(tmp_path: Path) -> None:
    json_path, images = coco_instances(tmp_path)
    classes = write_classes(tmp_path / "c.json", ["dog", "car", "person"], unmapped=("toothbrush",))
    out = tmp_path / "out"
    source = CocoInstancesSource(json_path, images, ClassSet.load(classes))
    pack(source, out, progress=False)
    got = {k: cls_of(s) for k, s in read_all(out).items()}
    # image 3 has no annotation and image 4 only one of an unmapped category: kept, no class
    assert got == {"000000000001": [0, 2], "000000000002": [1], "000000000003": [], "000000000004": []}
    meta = meta_of(out)
    assert meta["multi_label"] is True and meta["num_classes"] == 3 and meta["class_samples"] == [1, 1, 1]
    assert meta["no_label_share"] == 0.5 and meta["max_labels_per_sample"] == 2
    assert meta["source"]["annotations_dropped"] == {"toothbrush": 1}
    assert meta["source"]["images_without_class"] == 2
    dropped = CocoInstancesSource(json_path, images, ClassSet.load(classes), drop_empty=True)
    assert sorted(s.key for s in dropped) == ["000000000001", "000000000002"]
    assert dropped.info["dropped_without_class"] == 2


def test_coco_instances_bad_input(tmp_path: Path) -> None:
    json_path, images = coco_instances(tmp_path)
    no_toothbrush = ClassSet.load(write_classes(tmp_path / "c.json", ["dog", "car", "person"]))
    with pytest.raises(
        ClassSetError, match=r"instances\.json: categories: 1 name\(s\) not in .*'toothbrush'"
    ):
        CocoInstancesSource(json_path, images, no_toothbrush)
    classes = ClassSet.load(write_classes(tmp_path / "c2.json", ["dog", "car", "person", "toothbrush"]))
    data = json.loads(json_path.read_text())
    data["annotations"].append({"id": 9, "image_id": 77, "category_id": 1})
    put(tmp_path / "bad.json", json.dumps(data))
    with pytest.raises(ClassSetError, match=r"annotations\[5\]: image_id 77 is in no 'images' entry"):
        CocoInstancesSource(tmp_path / "bad.json", images, classes)
    put(tmp_path / "captions.json", json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ClassSetError, match=r"no 'categories' list; a caption file goes to --coco"):
        CocoInstancesSource(tmp_path / "captions.json", images, classes)


# -------------------------------------------------------------------------------------------- YOLO
NAMES_YAML = "path: .\ntrain: images/train\nnames:\n  0: person\n  1: dog\n  2: hot dog\n"


def yolo_set(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    put(root / "names.yaml", NAMES_YAML)
    for i in range(5):
        put(root / "images" / "train" / f"im{i}.jpg", image_bytes(20 + i))
    put(root / "labels" / "train" / "im0.txt", "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n1 0.3 0.3 0.1 0.1\n")
    put(root / "labels" / "train" / "im1.txt", "2 0.5 0.5 0.2 0.2\n\n")  # a blank line is skipped
    put(root / "labels" / "train" / "im2.txt", "0 0.1 0.1 0.2 0.1 0.2 0.2\n")  # a segment
    put(root / "labels" / "train" / "im3.txt", "")  # no objects
    # im4 has no label file (YOLO: no objects); orphan.txt has no image
    put(root / "labels" / "train" / "orphan.txt", "0 0.5 0.5 0.1 0.1\n")
    return root


def test_yolo_pack_and_holdout(tmp_path: Path) -> None:
    root = yolo_set(tmp_path)
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["dog", "hot dog", "person"]))
    source = YoloSource(root, "train", classes)
    assert source.info["images_without_label_file"] == 1 and source.info["label_files_without_image"] == [
        "orphan"
    ]
    assert any("orphan" in n for n in source.notes)
    out = tmp_path / "out"
    pack(source, out, holdout_fraction=0.4, progress=False)
    got = {}
    for split in ("train", "val"):
        meta = meta_of(out / split)
        assert meta["label_member"] == "cls" and meta["split"] == split and meta["multi_label"] is True
        got.update({k: cls_of(s) for k, s in read_all(out / split).items()})
    assert got == {"im0": [0, 2], "im1": [1], "im2": [2], "im3": [], "im4": []}
    top = meta_of(out)
    assert set(top["splits"]) == {"train", "val"} and top["num_classes"] == 3
    assert top["splits"]["train"]["samples"] + top["splits"]["val"]["samples"] == 5
    with pytest.raises(ConfigError, match="holds the splits"):
        class_pack_loader(out, 2)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _LastTaskFails:
    """An executor whose last task fails, as a killed worker's would."""

    def map_unordered(self, fn, tasks, progress):
        tasks = list(tasks)
        for i, task in enumerate(tasks):
            yield (
                i,
                SimpleNamespace(error=RuntimeError("worker lost"))
                if i == len(tasks) - 1
                else fn(task, progress),
            )


def test_class_pack_resumes_and_restarts_for_another_class_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = yolo_set(tmp_path)
    names = ["dog", "hot dog", "person"]
    classes = ClassSet.load(write_classes(tmp_path / "c.json", names))
    out = tmp_path / "out"
    with pytest.raises(PackError, match=r"1 of 3 shard\(s\) failed"):
        pack(YoloSource(root, "train", classes), out, shard_size=2, progress=False, executor=_LastTaskFails())
    stats = pack(YoloSource(root, "train", classes), out, shard_size=2, progress=False)
    assert stats.shards_skipped == 2 and stats.samples == 5
    pack(YoloSource(root, "train", classes), tmp_path / "fresh", shard_size=2, progress=False)
    assert _tree(out) == _tree(tmp_path / "fresh")
    # a partial pack of another class set (here one more class) is discarded, not resumed
    more = ClassSet.load(write_classes(tmp_path / "more.json", [*names, "cat"]))
    with pytest.raises(PackError):
        pack(
            YoloSource(root, "train", classes),
            tmp_path / "o2",
            shard_size=2,
            progress=False,
            executor=_LastTaskFails(),
        )
    capsys.readouterr()
    stats = pack(YoloSource(root, "train", more), tmp_path / "o2", shard_size=2, progress=False)
    assert stats.shards_skipped == 0 and "discarding" in capsys.readouterr().out
    assert meta_of(tmp_path / "o2")["num_classes"] == 4


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("3 0.5 0.5 0.1 0.1", r"im1\.txt:2: class id 3 is not in .*names\.yaml \(ids 0-2\)"),
        ("-1 0.5 0.5 0.1 0.1", r"im1\.txt:2: class id -1 is not in"),
        ("dog 0.5 0.5 0.1 0.1", r"im1\.txt:2: 'dog 0\.5 0\.5 0\.1 0\.1' is not a YOLO label line"),
        ("1 0.5 0.5 0.1", r"im1\.txt:2: '1 0\.5 0\.5 0\.1' is not a YOLO label line"),
        ("1 0.5 0.5", r"im1\.txt:2: '1 0\.5 0\.5' is not a YOLO label line"),
        ("1.5 0.5 0.5 0.1 0.1", r"im1\.txt:2: .* is not a YOLO label line"),
        ("1 0.5 0.5 nan 0.1", r"im1\.txt:2: .* is not a YOLO label line"),
    ],
)
def test_yolo_bad_label_lines_name_file_and_line(tmp_path: Path, line: str, error: str) -> None:
    root = yolo_set(tmp_path)
    put(root / "labels" / "train" / "im1.txt", f"2 0.5 0.5 0.2 0.2\n{line}\n")
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["dog", "hot dog", "person"]))
    with pytest.raises(ClassSetError, match=error):
        YoloSource(root, "train", classes)


def test_yolo_names_and_split_errors(tmp_path: Path) -> None:
    root = yolo_set(tmp_path)
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["dog", "person"]))
    with pytest.raises(ClassSetError, match=r"names\.yaml: names: 1 name\(s\) not in .*'hot dog'"):
        YoloSource(root, "train", classes)
    with pytest.raises(ClassSetError, match=r"--split val: no folder .*images/val \(splits there: train\)"):
        YoloSource(root, "val", classes)
    put(root / "names.yaml", "nc: 3\n")
    with pytest.raises(ClassSetError, match=r"names\.yaml: no 'names:' mapping"):
        YoloSource(root, "train", classes)
    put(root / "names.yaml", "names: [person, dog, hot dog]\n")  # the list form is fine
    assert (
        len(
            YoloSource(
                root, "train", ClassSet.load(write_classes(tmp_path / "d.json", ["dog", "hot dog", "person"]))
            )
        )
        == 5
    )


# --------------------------------------------------------------------------------------- exclusion
def test_exclusion_by_name_stem_path_and_folder(tmp_path: Path) -> None:
    root = yolo_set(tmp_path)
    classes = ClassSet.load(write_classes(tmp_path / "c.json", ["dog", "hot dog", "person"]))
    listing = put(
        tmp_path / "skip.txt", "# seen in pre-training\nim0.jpg\nim1\t a caption after a tab\n\nnothing.jpg\n"
    )
    folder = tmp_path / "seen"
    put(folder / "im2.jpg", b"")  # a folder names its files
    exclude = ImageExclusion([listing, folder])
    source = YoloSource(root, "train", classes, exclude=exclude)
    assert sorted(s.key for s in source) == ["im3", "im4"]
    assert source.info["excluded"]["images"] == 3
    assert source.info["excluded"]["names"] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert any("matched no image: nothing.jpg" in n for n in source.notes)
    # an entry with a '/' matches the path under the image folder only
    imagefolder = tmp_path / "f"
    put(imagefolder / "cat" / "1.jpg", image_bytes(30))
    put(imagefolder / "dog" / "1.jpg", image_bytes(31))
    cats = ClassSet.load(write_classes(tmp_path / "cd.json", ["cat", "dog"]))
    by_path = ImageExclusion([put(tmp_path / "one.txt", "dog/1.jpg\n")])
    assert [s.image for s in ImageFolderSource(imagefolder, cats, exclude=by_path)] == ["cat/1.jpg"]
    by_key = ImageExclusion([put(tmp_path / "key.txt", "cat_1\n")])
    assert [s.image for s in ImageFolderSource(imagefolder, cats, exclude=by_key)] == ["dog/1.jpg"]
    for entry in ("1.jpg", "1"):  # a file name, or a stem, matches in every folder
        by_name = ImageExclusion([put(tmp_path / "both.txt", f"{entry}\n")])
        with pytest.raises(ClassSetError, match="no images to pack"):
            ImageFolderSource(imagefolder, cats, exclude=by_name)
    with pytest.raises(ClassSetError, match="--exclude .*absent: no such file or folder"):
        ImageExclusion([tmp_path / "absent"])


# ------------------------------------------------------------------------------------ CLASSES.json
def _entry(i: int, class_name: str, **changes) -> dict:
    entry = {
        "index": i, "name": class_name, "wnid": f"n{i:08d}", "synset": f"{class_name}.n.01", "rows": [i],
        "row_wnids": [f"n{i:08d}"], "distance": 0, "how": "lemma",
    }  # fmt: skip
    return {k: v for k, v in {**entry, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", r"c\.json: not a readable class map"),
        ("[1, 2]", r"c\.json: not a class map"),
        ('{"format": "catlip-classes/2"}', r"c\.json: not a class map \(no \"format\": 'catlip-classes/1'"),
        ({"vocab": {"size": 9}}, r"c\.json: malformed class map \(missing 'sha256'\)"),
        ({"vocab": {"size": 9, "sha256": "x"}}, r"c\.json: its vocab sha256 is not 64 hex digits"),
        ({"classes": []}, r"c\.json: holds no class"),
        ({"classes": [_entry(0, "a"), _entry(0, "b")]}, r"class 1 \('b'\) has a bad index"),
        ({"classes": [_entry(0, "a"), _entry(1, "a")]}, r"class name\(s\) 'a' appear more than once"),
        ({"classes": [_entry(0, "a", name=None)]}, r"malformed class map \(missing 'name'\)"),
        ({"classes": [_entry(0, "a", rows=[])]}, r"class 0 \('a'\) has a bad index or rows"),
        ({"classes": "a"}, r"malformed class map"),
    ],
)
def test_bad_classes_json(tmp_path: Path, content, error: str) -> None:
    path = tmp_path / "c.json"
    if not isinstance(content, str):
        data = {
            "format": "catlip-classes/1",
            "vocab": {"path": "v.tsv", "size": 9, "sha256": VOCAB_SHA},
            "classes": [_entry(0, "a")],
            **content,
        }
        content = json.dumps(data)
    path.write_text(content)
    with pytest.raises(ClassSetError, match=error + ".*make it with `catlip classes"):
        ClassSet.load(path)


# ----------------------------------------------------------------------------------------- loader
def test_loader_reads_cls_batches(tmp_path: Path) -> None:
    json_path, images = coco_instances(tmp_path)
    classes = write_classes(tmp_path / "c.json", ["dog", "car", "person"], unmapped=("toothbrush",))
    out = tmp_path / "out"
    pack(CocoInstancesSource(json_path, images, ClassSet.load(classes)), out, progress=False)
    loader, meta = class_pack_loader(out, 3, image_size=16, device="cpu")
    assert meta["num_classes"] == 3 and len(loader) == 2
    batches = list(loader)
    labels = {}
    for batch in batches:
        assert batch["image"].shape == (3, 3, 16, 16) and batch["labels"].shape == (3, 2)  # L = 2
        for key, row, count, valid in zip(
            batch["key"], batch["labels"], batch["label_counts"], batch["valid"], strict=True
        ):
            if valid:
                labels[key] = (row.tolist(), int(count))
    assert [b["valid"].tolist() for b in batches] == [[True] * 3, [True, False, False]]
    assert labels == {
        "000000000001": ([0, 2], 2),
        "000000000002": ([1, -1], 1),
        "000000000003": ([-1, -1], 0),
        "000000000004": ([-1, -1], 0),
    }
    # loaders_from_config on a class pack: label ids bounded by num_classes, not a vocabulary
    from engine.config import from_dict

    data = {"train": str(out), "val": str(out), "batch_size": 2, "max_labels": 1, "num_threads": 1}
    cfg = from_dict({"data": {**data, "decode_device": "cpu", "scale": [0.5, 1.0]}, "run": {"seed": 0}})
    train, val, train_meta = loaders_from_config(cfg, 0, 1, 16, captions=False)
    assert train.spec.label_ext == "cls" and train.num_classes == 3 and train.spec.max_labels == 2
    assert train_meta["label_member"] == "cls" and next(iter(val))["labels"].shape == (2, 2)
    with pytest.raises(ConfigError, match="is a class pack \\(no captions\\)"):
        loaders_from_config(cfg, 0, 1, 16, captions=True)
    meta_file = out / "dataset.json"
    meta_file.write_text(json.dumps({**meta, "num_classes": 2}))  # class 2 is now out of range
    with pytest.raises(DataError, match=r"has class 2, outside the 2 classes of the pack's CLASSES.json"):
        list(class_pack_loader(out, 4, image_size=16, device="cpu")[0])


def test_odd_length_cls_member_names_the_sample(tmp_path: Path) -> None:
    from engine.data import make_loader
    from engine.packing import ShardWriter

    writer = ShardWriter(tmp_path, 8)
    for i in range(4):
        cls = np.asarray([0, 1], "<i4").tobytes()
        writer.write(f"s{i}", [("jpg", image_bytes(40 + i)), ("cls", cls[:5] if i == 2 else cls)])
    writer.close()
    meta = {"label_member": "cls", "num_classes": 2, "shard_names": writer.names, "samples": 4}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match=r"shard-000000.tar: sample s2: its .cls has 5 bytes, not a multiple of 4"
    ):
        make_loader(
            tmp_path, 2, train=False, image_size=16, num_threads=1, device="cpu"
        )  # label_member from dataset.json


# --------------------------------------------------------------------------------------------- CLI
def test_pack_command_for_class_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pack_parser().parse_args(["pack", "--help"])
    helptext = capsys.readouterr().out
    for option in (
        "--imagefolder",
        "--coco-instances",
        "--yolo",
        "--split",
        "--classes",
        "--exclude",
        "--drop-empty",
    ):
        assert option in helptext
    root = yolo_set(tmp_path)
    classes = write_classes(tmp_path / "c.json", ["dog", "hot dog", "person"])
    out = tmp_path / "out"
    skip = put(tmp_path / "x.txt", "im4.jpg\n")
    assert (
        run_pack("--yolo", root, "--split", "train", "--classes", classes, "--out", out, "--exclude", skip)
        == 0
    )
    printed = capsys.readouterr().out
    assert "excluded 1 image(s)" in printed and "4 samples (4 images)" in printed
    assert meta_of(out)["samples"] == 4
    errors = [
        (["--yolo", root, "--split", "train", "--out", out], r"--yolo needs --classes CLASSES.json"),
        (["--yolo", root, "--classes", classes, "--out", out], r"--yolo needs --split NAME"),
        (
            ["--yolo", root, "--split", "train", "--classes", classes, "--vocab", classes, "--out", out],
            r"not --vocab",
        ),
        (
            ["--tsv", classes, "--images", tmp_path, "--out", out],
            r"--tsv needs --vocab .* required for caption sources only",
        ),
        (
            ["--imagefolder", tmp_path, "--yolo", root, "--out", out],
            r"exactly one source: .*got --imagefolder, --yolo",
        ),
        (
            ["--yolo", root, "--split", "train", "--classes", tmp_path / "none.json", "--out", out],
            r"none\.json: no such class set",
        ),
        (
            ["--imagefolder", root, "--classes", classes, "--out", out],
            r"class folder\(s\): 2 name\(s\) not in",
        ),
        (
            ["--imagefolder", root, "--classes", classes, "--drop-empty", "--out", out],
            r"--drop-empty applies to",
        ),
    ]
    for argv, error in errors:
        with pytest.raises(SystemExit, match=error):
            run_pack(*argv)


# -------------------------------------------------------------------------------------- real coco128
@pytest.fixture(scope="module")
def coco128(shared_data: Path) -> Path:
    root = shared_data / "coco128"
    if not (root / "names.yaml").is_file():
        pytest.skip(f"coco128 not found at {root}")
    return root


def yolo_classes(label: Path) -> list[int]:
    if not label.is_file():
        return []
    return sorted({int(line.split()[0]) for line in label.read_text().splitlines() if line.strip()})


def test_coco128_val_less_the_coco_photos(coco128: Path, shared_data: Path, tmp_path: Path) -> None:
    import yaml

    names = yaml.safe_load((coco128 / "names.yaml").read_text())["names"]
    classes = ClassSet.load(write_classes(tmp_path / "coco.json", [names[i] for i in range(80)]))
    exclude = ImageExclusion([shared_data / "coco_photos"])
    source = YoloSource(coco128, "val2017", classes, exclude=exclude)
    assert source.info["excluded"]["names"] == COCO_PHOTOS_IN_COCO128_VAL
    assert len(source) == 119 and source.info["images_without_label_file"] == 0
    out = tmp_path / "val"
    stats = pack(source, out, shard_size=64, progress=False)
    assert stats.samples == 119 and not stats.rejects
    samples = read_all(out)
    assert sorted(samples) == sorted(
        p.stem
        for p in (coco128 / "images" / "val2017").glob("*.jpg")
        if p.name not in COCO_PHOTOS_IN_COCO128_VAL
    )
    for key, sample in samples.items():  # names.yaml is in class order here: ids are indices
        assert cls_of(sample) == yolo_classes(coco128 / "labels" / "val2017" / f"{key}.txt"), key
        assert sample["jpg"] == (coco128 / "images" / "val2017" / f"{key}.jpg").read_bytes()
    meta = meta_of(out)
    assert meta["num_classes"] == 80 and meta["multi_label"] is True and sum(meta["class_samples"]) > 119
    # train2017: two images have no label file (no objects), two label files have no image
    train = YoloSource(coco128, "train2017", classes)
    assert len(train) == 128 and train.info["images_without_label_file"] == 2
    assert train.info["label_files_without_image"] == ["000000000656", "000000000659"]
    assert sum(not s.classes for s in train) == 2


def test_exclusion_list_matches_the_shared_folders(coco128: Path, shared_data: Path) -> None:
    photos = {p.name for p in (shared_data / "coco_photos").glob("*.jpg")}
    val = {p.name for p in (coco128 / "images" / "val2017").glob("*.jpg")}
    train = {p.name for p in (coco128 / "images" / "train2017").glob("*.jpg")}
    assert sorted(photos & val) == COCO_PHOTOS_IN_COCO128_VAL and not photos & train
    for name in COCO_PHOTOS_IN_COCO128_VAL:  # the same photos, byte for byte
        assert (shared_data / "coco_photos" / name).read_bytes() == (
            coco128 / "images" / "val2017" / name
        ).read_bytes()
    assert re.fullmatch(r"\d{12}\.jpg", COCO_PHOTOS_IN_COCO128_VAL[0])
