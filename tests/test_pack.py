"""Packing into WebDataset shards: counts, labels, DALI index files, rejects, img2dataset input,
held-out split, and the ``pack`` command.

The COCO photos are packed once per session (``packed_photos`` in conftest.py)."""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shard_utils import PHOTO_SHARD_SIZE, labels_of, read_all, read_shard

from engine.data import resolve_shards
from engine.packing import CocoSource, Img2DatasetSource, TsvSource, check_image, pack
from engine.packing.cli import add_pack_parser

pytestmark = pytest.mark.usefixtures("nltk_ready")


# ------------------------------------------------------------------------------ the packed photos
def test_counts_and_dataset_json(packed_photos: Path, shared_data: Path) -> None:
    meta = json.loads((packed_photos / "dataset.json").read_text())
    n = sum(
        1 for line in (shared_data / "coco_photos" / "captions.tsv").read_text().splitlines() if line.strip()
    )
    assert meta["samples"] == meta["captions"] == n == 1275
    assert meta["images"] == 255
    assert meta["shards"] == len(meta["shard_names"]) == math.ceil(n / PHOTO_SHARD_SIZE)
    assert meta["shard_samples"] == [PHOTO_SHARD_SIZE] * (meta["shards"] - 1) + [
        n - PHOTO_SHARD_SIZE * (meta["shards"] - 1)
    ]
    assert meta["rejects"] == {} and meta["rejected_samples"] == 0
    assert meta["vocab_size"] == sum(1 for _ in open(meta["vocab"])) - 1
    assert 1.0 < meta["labels_per_sample_mean"] < 10.0 and 0.0 <= meta["no_label_share"] < 0.1
    for name in meta["shard_names"]:
        assert (packed_photos / name).is_file() and (packed_photos / name).with_suffix(".idx").is_file()


def test_members_and_labels_match_label_encoder(
    packed_photos: Path, photo_vocab: Path, shared_data: Path
) -> None:
    from catlip.labels import LabelEncoder

    encode = LabelEncoder(photo_vocab)
    samples = read_all(packed_photos)
    assert len(samples) == 1275
    photos = shared_data / "coco_photos"
    expected = Counter(line for line in (photos / "captions.tsv").read_text().splitlines() if line.strip())
    got: Counter[str] = Counter()
    for key, sample in samples.items():
        assert set(sample) == {"jpg", "txt", "lbl"}, key
        caption = sample["txt"].decode("utf-8")
        stem = key.rsplit("_", 1)[0]
        got[f"{stem}.jpg\t{caption}"] += 1
        assert labels_of(sample) == encode(caption), key
        assert sample["jpg"] == (photos / f"{stem}.jpg").read_bytes()  # original bytes
    assert got == expected


def test_index_is_what_wds2idx_writes_and_dali_reads(packed_photos: Path) -> None:
    wds2idx = pytest.importorskip("wds2idx")  # ships with DALI
    from nvidia.dali import fn, pipeline_def

    shard = packed_photos / "shard-000001.tar"
    ref = packed_photos.parent / "ref.idx"
    creator = wds2idx.IndexCreator(str(shard), str(ref), verbose=False)
    creator.create_index()
    creator.close()
    assert shard.with_suffix(".idx").read_text() == ref.read_text()

    @pipeline_def(batch_size=PHOTO_SHARD_SIZE, num_threads=1, device_id=None)
    def read():
        jpg, txt, lbl = fn.readers.webdataset(
            paths=[str(shard)], index_paths=[str(shard.with_suffix(".idx"))], ext=["jpg", "txt", "lbl"]
        )
        return jpg.source_info(), txt, lbl

    p = read()
    p.build()
    info, txt, lbl = p.run()
    samples = read_shard(shard)
    for i in range(PHOTO_SHARD_SIZE):
        key = bytes(np.array(info[i])).decode().rsplit(":", 1)[-1].split(".")[0]
        assert bytes(np.array(txt[i])) == samples[key]["txt"]
        assert bytes(np.array(lbl[i])) == samples[key]["lbl"]


# ------------------------------------------------------------------------------------------ rejects
def _png(color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


def _webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buf, "WEBP")
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


@pytest.fixture
def bad_folder(tmp_path: Path, shared_data: Path) -> Path:
    """Images good and bad, with a TSV that gives two captions to some."""
    good = (shared_data / "coco_photos" / "000000000139.jpg").read_bytes()
    sos = good.find(b"\xff\xda")
    dht = good.find(b"\xff\xc4")
    files = {
        "good.jpg": good,
        "tail.jpg": good + b"\x00" * 100,  # bytes after the end marker: trimmed, kept
        "good.png": _png(),
        "good.webp": _webp(),
        "truncated.jpg": good[: len(good) // 2],
        "headeronly.jpg": good[: sos + 20],
        "corrupt.jpg": good[: dht + 4] + b"\xff" * 40 + good[dht + 44 :],  # a broken Huffman table
        "text.jpg": b"this is not an image\n" * 20,
        "empty.jpg": b"",
        "anim.gif": _gif(),
    }
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    lines = [f"{name}\ta dog on a table" for name in files]
    lines += ["truncated.jpg\ttwo cats on a sofa", "missing.jpg\ta man with a frisbee", "good.jpg\ta cat"]
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_bad_images_are_rejected_with_reasons(
    bad_folder: Path, photo_vocab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    stats = pack(
        TsvSource(tmp_path / "captions.tsv", bad_folder), out, photo_vocab, shard_size=3, progress=False
    )
    assert dict(stats.rejects) == {
        "truncated": 3,  # truncated.jpg with its two captions, headeronly.jpg
        "corrupt": 1,
        "not an image": 1,
        "empty file": 1,
        "unsupported format GIF": 1,
        "missing file": 1,
    }
    printed = capsys.readouterr().out
    for name in (
        "truncated.jpg",
        "headeronly.jpg",
        "corrupt.jpg",
        "text.jpg",
        "empty.jpg",
        "anim.gif",
        "missing.jpg",
    ):
        assert f"skipped {name}:" in printed
    assert printed.count("skipped truncated.jpg") == 1  # one message per image, every caption counted
    rows = (out / "rejects.tsv").read_text().splitlines()
    assert len(rows) == 1 + 8
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["samples"] == 5 and meta["images"] == 3  # tail.jpg trimmed is good.jpg
    assert meta["rejects"] == dict(stats.rejects) and meta["rejected_samples"] == 8
    assert meta["trimmed_jpegs"] == 1
    samples = read_all(out)
    assert sorted(
        k.rsplit("_", 1)[0] + "." + next(e for e in s if e not in ("txt", "lbl")) for k, s in samples.items()
    ) == [
        "good.jpg",
        "good.jpg",
        "good.png",
        "good.webp",
        "tail.jpg",
    ]
    for key, s in samples.items():
        image = next(v for e, v in s.items() if e not in ("txt", "lbl"))
        assert check_image(image)[2] is None, key
        if key.startswith("tail"):
            assert image.endswith(b"\xff\xd9") and image == (bad_folder / "good.jpg").read_bytes()
    assert "rejected: 8 sample(s)" in stats.summary()


def test_coco_json_source(shared_data: Path, photo_vocab: Path, tmp_path: Path) -> None:
    data = json.loads((shared_data / "coco_captions_val2017.json").read_text())
    photos = {p.name for p in (shared_data / "coco_photos").glob("*.jpg")}
    present = [a for a in data["annotations"] if f"{a['image_id']:012d}.jpg" in photos][:40]
    absent = [a for a in data["annotations"] if f"{a['image_id']:012d}.jpg" not in photos][:7]
    images = [{"id": present[0]["image_id"], "file_name": f"{present[0]['image_id']:012d}.jpg"}]  # one given
    small = tmp_path / "coco.json"
    small.write_text(json.dumps({"images": images, "annotations": present + absent}))
    source = CocoSource(small, shared_data / "coco_photos")
    assert len(source) == 47
    stats = pack(source, tmp_path / "out", photo_vocab, shard_size=16, progress=False)
    assert stats.splits["all"].samples == 40 and dict(stats.rejects) == {"missing file": 7}
    samples = read_all(tmp_path / "out")
    captions = Counter(s["txt"].decode() for s in samples.values())
    assert captions == Counter(a["caption"] for a in present)


# ------------------------------------------------------------------------------------ img2dataset
def _write_img2dataset(folder: Path, photos: list[Path]) -> None:
    """Two tars in img2dataset's layout; the last sample of the second has no image."""
    folder.mkdir()
    for shard in range(2):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i, photo in enumerate(photos[shard::2]):
                key = f"{shard:05d}{i:04d}"
                members = {
                    "txt": f"a dog number {i} on a bench".encode(),
                    "json": json.dumps({"key": key}).encode(),
                }
                if not (shard == 1 and i == len(photos[shard::2]) - 1):
                    members = {"jpg": photo.read_bytes(), **members}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_img2dataset_input(shared_data: Path, photo_vocab: Path, tmp_path: Path) -> None:
    from catlip.labels import LabelEncoder

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:10]
    _write_img2dataset(tmp_path / "i2d", photos)
    stats = pack(
        Img2DatasetSource(tmp_path / "i2d"), tmp_path / "out", photo_vocab, shard_size=4, progress=False
    )
    assert stats.splits["all"].samples == 9 and dict(stats.rejects) == {"missing image": 1}
    samples = read_all(tmp_path / "out")
    assert sorted(samples) == sorted(f"{s:05d}{i:04d}" for s in range(2) for i in range(5))[:-1]
    encode = LabelEncoder(photo_vocab)
    for key, s in samples.items():
        assert labels_of(s) == encode(s["txt"].decode())
        assert s["jpg"] == photos[int(key[:5]) + 2 * int(key[5:])].read_bytes()
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["shard_names"] == ["shard-000000.tar", "shard-000001.tar"]  # one per input tar


# ------------------------------------------------------------------------------------------ holdout
def test_holdout_split_is_by_image(shared_data: Path, photo_vocab: Path, tmp_path: Path) -> None:
    lines = (shared_data / "coco_photos" / "captions.tsv").read_text().splitlines()[:300]  # 60 images
    photos = tmp_path / "photos"  # links to the 60 photos, and a copy of one
    photos.mkdir()
    for name in {line.split("\t")[0] for line in lines}:
        (photos / name).symlink_to(shared_data / "coco_photos" / name)
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    # A copy of one image under another name must land on the same side as the original.
    shutil.copy(photos / lines[0].split("\t")[0], photos / "copy.jpg")
    tsv.write_text(tsv.read_text() + "copy.jpg\ta copy\n")
    stats = pack(
        TsvSource(tsv, photos),
        tmp_path / "out",
        photo_vocab,
        shard_size=50,
        holdout_fraction=0.3,
        progress=False,
    )
    train, val = read_all(tmp_path / "out" / "train"), read_all(tmp_path / "out" / "val")
    assert len(train) + len(val) == 301 and stats.samples == 301
    stems = {side: {k.rsplit("_", 1)[0] for k in d} for side, d in (("train", train), ("val", val))}
    assert not stems["train"] & stems["val"]
    per_image = Counter(k.rsplit("_", 1)[0] for k in [*train, *val])
    assert all(per_image[s] == 5 for s in per_image if not s.endswith("copy"))
    first = lines[0].split("\t")[0][: -len(".jpg")]
    copy_side = "val" if any(k.endswith("copy_0") for k in val) else "train"
    assert first in stems[copy_side]
    assert 5 <= len(stems["val"]) <= 30  # 30% of 60 images, loosely
    for side in ("train", "val"):
        meta = json.loads((tmp_path / "out" / side / "dataset.json").read_text())
        assert meta["split"] == side and meta["samples"] == len(train if side == "train" else val)
    top = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert top["splits"]["val"]["samples"] == len(val)
    with pytest.raises(ValueError, match="holds the splits"):
        resolve_shards(tmp_path / "out")
    assert resolve_shards(tmp_path / "out" / "val") == [
        tmp_path / "out" / "val" / n for n in meta["shard_names"]
    ]
    # hash-based: packing again gives the same split
    pack(
        TsvSource(tsv, photos),
        tmp_path / "again",
        photo_vocab,
        shard_size=50,
        holdout_fraction=0.3,
        progress=False,
    )
    assert sorted(read_all(tmp_path / "again" / "val")) == sorted(val)


def _pack_resized(source, out: Path, vocab: Path, shorter: int, executor=None):
    return pack(
        source, out, vocab, shard_size=40, holdout_fraction=0.3, progress=False,
        resize_shorter=shorter, executor=executor,
    )  # fmt: skip


def test_resize_shorter_shrinks_large_images_only_and_keeps_the_split(
    shared_data: Path, photo_vocab: Path, tmp_path: Path
) -> None:
    from engine.executor import LocalExecutor

    lines = (shared_data / "coco_photos" / "captions.tsv").read_text().splitlines()[:100]  # 20 photos
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in {line.split("\t")[0] for line in lines}:
        (photos / name).symlink_to(shared_data / "coco_photos" / name)
    small_png, large = _png(), io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((300, 200)).save(large, "PNG")
    (photos / "small.png").write_bytes(small_png)  # 40 x 30: below any size used here
    (photos / "large.png").write_bytes(large.getvalue())
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("\n".join([*lines, "small.png\ta small red box", "large.png\ta grey disc"]) + "\n")
    source = TsvSource(tsv, photos)
    _pack_resized(source, tmp_path / "full", photo_vocab, 0)
    stats = _pack_resized(source, tmp_path / "s64", photo_vocab, 64)
    for side in ("train", "val"):
        full, small = read_all(tmp_path / "full" / side), read_all(tmp_path / "s64" / side)
        assert sorted(full) == sorted(small)  # the split hashes the original bytes
        resized, errors = 0, []
        for key, sample in small.items():
            stem = key.rsplit("_", 1)[0]
            if stem == "small":
                assert sample == full[key]  # stored as it is, PNG bytes and all
                continue
            assert set(sample) == {"jpg", "txt", "lbl"} and sample["lbl"] == full[key].get("lbl")
            got = Image.open(io.BytesIO(sample["jpg"]))
            original = Image.open(photos / (f"{stem}.png" if stem == "large" else f"{stem}.jpg"))
            w, h = original.size
            assert got.format == "JPEG" and min(got.size) == 64
            assert max(got.size) == round(max(w, h) * 64 / min(w, h)) and (got.width > got.height) == (w > h)
            want = io.BytesIO()  # PIL's decode of the original through the same resize and JPEG
            original.convert("RGB").resize(got.size, Image.Resampling.LANCZOS).save(want, "JPEG", quality=95)
            error = np.abs(np.asarray(got, np.float32) - np.asarray(Image.open(want), np.float32))
            errors.append(error.mean())
            assert check_image(sample["jpg"])[2] is None
            resized += 1
        assert max(errors) < 0.5  # DALI's decode and PIL's agree (both libjpeg-turbo; 0.0 here)
        meta = json.loads((tmp_path / "s64" / side / "dataset.json").read_text())
        assert meta["resized"] == resized == stats.splits[side].resized > 0
        assert meta["images"] == json.loads((tmp_path / "full" / side / "dataset.json").read_text())["images"]
    assert json.loads((tmp_path / "s64" / "dataset.json").read_text())["resize_shorter"] == 64
    # the same bytes from 2 worker processes and, in this process, at
    # another size (what is remembered of the 64-pixel pack must not leak into it)
    with LocalExecutor(2) as workers:
        _pack_resized(source, tmp_path / "again", photo_vocab, 64, workers)
    for side in ("train", "val"):
        assert read_all(tmp_path / "again" / side) == read_all(tmp_path / "s64" / side)
    _pack_resized(source, tmp_path / "s96", photo_vocab, 96)
    sizes = {
        min(Image.open(io.BytesIO(s["jpg"])).size)
        for s in read_all(tmp_path / "s96" / "train").values()
        if "jpg" in s
    }
    assert sizes == {96}
    with pytest.raises(ValueError, match="resize_shorter must be >= 0"):
        _pack_resized(source, tmp_path / "bad", photo_vocab, -1)


# ---------------------------------------------------------------------------------------------- CLI
def test_pack_command(
    shared_data: Path, photo_vocab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="catlip")
    add_pack_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["pack", "--help"])
    helptext = capsys.readouterr().out
    for option in (
        "--coco",
        "--tsv",
        "--img2dataset",
        "--images",
        "--vocab",
        "--out",
        "--shard-size",
        "--holdout-fraction",
        "--official",
        "--no-pos-filter",
        "--resize-shorter",
    ):
        assert option in helptext
    with pytest.raises(SystemExit):  # argparse's usage error, exit 2
        parser.parse_args(["pack", "--tsv", "t", "--out", "o", "--resize-shorter", "-1"])
    assert "--resize-shorter: must be >= 0, got -1" in capsys.readouterr().err
    photos = shared_data / "coco_photos"
    tsv = tmp_path / "c.tsv"
    tsv.write_text("\n".join((photos / "captions.tsv").read_text().splitlines()[:20]) + "\n")
    args = parser.parse_args(
        [
            "pack",
            "--tsv",
            str(tsv),
            "--images",
            str(photos),
            "--vocab",
            str(photo_vocab),
            "--out",
            str(tmp_path / "o"),
            "--shard-size",
            "8",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    assert "20 samples (4 images) in 3 shard(s)" in capsys.readouterr().out
    args = parser.parse_args(
        ["pack", "--tsv", str(tsv), "--vocab", str(photo_vocab), "--out", str(tmp_path / "o")]
    )
    with pytest.raises(SystemExit, match="needs --images"):
        args.func(args)


def test_shard_bytes_are_what_tarfile_writes(tmp_path: Path, shared_data: Path) -> None:
    from engine.packing.shards import TarShard

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:5]
    samples = [
        (f"{i:09d}", [("jpg", p.read_bytes()), ("txt", b"x" * i * 100), ("lbl", bytes(4 * i))])
        for i, p in enumerate(photos)
    ]
    shard = TarShard(tmp_path / "ours.tar")
    with tarfile.open(tmp_path / "tarfile.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            shard.write(key, members)
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(data))
    shard.close()
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "tarfile.tar").read_bytes()


# ------------------------------------------------------------------------------ the image check
def _damaged(photos: list[Path]) -> list[tuple[str, bytes]]:
    """Damaged and odd images, deterministic: what the DALI check must judge as DALI does."""
    import random

    rng = random.Random(0)
    out = []
    for i, photo in enumerate(photos):
        good = photo.read_bytes()
        sos = good.find(b"\xff\xda")
        for _ in range(3):
            d = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                d[rng.randint(2, sos + 10)] = rng.randint(0, 255)
            out.append(("header bytes", bytes(d)))
            cut = rng.randint(2, sos)
            out.append(("header cut", good[:cut] + good[cut + rng.randint(1, 30) :]))
        d = bytearray(good)
        for _ in range(20):
            d[rng.randint(sos + 20, len(d) - 3)] = rng.randint(0, 255)
        out.append(("scan bytes", bytes(d)))
        out.append(("scan cut + end marker", good[: rng.randint(sos + 20, len(good) - 3)] + b"\xff\xd9"))
        mid = (sos + len(good)) // 2
        out.append(("marker in scan", good[:mid] + b"\xff\xc0\x00\x11" + bytes(15) + good[mid:]))
        image = Image.open(photo).convert("RGB")
        for fmt, kw in (("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}), ("JPEG", {})):
            small = image if i % 2 else image.resize((rng.randint(1, 12), rng.randint(1, 12)))
            buf = io.BytesIO()
            small.save(buf, fmt, **kw)
            data = buf.getvalue()
            out.append((f"{fmt} {small.size}", data))
            out.append((f"{fmt} cut", data[: len(data) * 2 // 3] + (b"\xff\xd9" if fmt == "JPEG" else b"")))
    return out


def test_image_check_rejects_exactly_what_dalis_decoder_cannot_decode(shared_data: Path) -> None:
    import nvidia.dali.experimental.dynamic as ndd

    from engine.packing.shards import check_images, jpeg_layout

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:4]
    corpus = _damaged(photos)

    def dali_decodes(data: bytes) -> bool:  # the loader's decoder, on the whole image
        try:
            np.asarray(ndd.decoders.image(np.frombuffer(data, np.uint8), device="cpu"))
            return True
        except RuntimeError:
            return False

    verdicts = check_images([data for _, data in corpus])
    wrong = []
    for (what, data), (_ext, stored, reason) in zip(corpus, verdicts, strict=True):
        if (reason is None) != dali_decodes(
            stored if reason is None else data[: data.rfind(b"\xff\xd9") + 2]
        ):
            wrong.append((what, reason))
    assert not wrong
    rejected = sum(reason is not None for _, _, reason in verdicts)
    assert 15 <= rejected <= len(corpus) - 15  # both kinds are well represented
    assert all(jpeg_layout(p.read_bytes())[0] for p in photos)  # COCO photos take the 8x8 corner path


# -------------------------------------------------------------- keys, paths, atomic output (11.5)
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_keys_are_unique(shared_data: Path, photo_vocab: Path, tmp_path: Path) -> None:
    from nvidia.dali import fn, pipeline_def

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:3]
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a b.jpg", "a_b.jpg", "a.b.jpg"]  # all three were the key a_b_0
    for name, photo in zip(names, photos, strict=True):
        shutil.copy(photo, folder / name)
    (tmp_path / "c.tsv").write_text("".join(f"{n}\ta dog\n" for n in names))
    pack(TsvSource(tmp_path / "c.tsv", folder), tmp_path / "out", photo_vocab, progress=False)
    shard = tmp_path / "out" / "shard-000000.tar"
    samples = read_shard(shard)
    assert len(samples) == 3 and "a_b_0" in samples

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def read():
        jpg, _ = fn.readers.webdataset(
            paths=[str(shard)], index_paths=[str(shard.with_suffix(".idx"))], ext=["jpg", "txt"]
        )
        return jpg

    p = read()
    p.build()
    (jpgs,) = p.run()
    assert sorted(bytes(np.array(jpgs[i])) for i in range(3)) == sorted(ph.read_bytes() for ph in photos)


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/hostname", "sub/../../x.jpg"])
def test_tsv_paths_outside_the_image_folder_are_refused(tmp_path: Path, name: str) -> None:
    from catlip.captions import CaptionFileError

    (tmp_path / "imgs").mkdir()
    (tmp_path / "c.tsv").write_text(f"fine.jpg\ta dog\n{name}\ta cat\n")
    with pytest.raises(CaptionFileError, match=rf"c\.tsv:2: '{re.escape(name)}' is outside the image folder"):
        TsvSource(tmp_path / "c.tsv", tmp_path / "imgs")


def test_output_is_replaced_only_with_overwrite_and_never_by_a_failed_pack(
    shared_data: Path, photo_vocab: Path, tmp_path: Path
) -> None:
    from engine.packing import PackError

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:10]
    _write_img2dataset(tmp_path / "i2d", photos)
    out = tmp_path / "out"

    def run(**kw):
        return pack(Img2DatasetSource(tmp_path / "i2d"), out, photo_vocab, progress=False, **kw)

    run()
    before = _tree(out)
    with pytest.raises(PackError, match="already exists and is not empty; give --overwrite"):
        run()
    assert _tree(out) == before
    # A re-pack that stops on a truncated input tar: the other shard finishes, OUT stays as it was.
    tar = tmp_path / "i2d" / "00001.tar"
    good = tar.read_bytes()
    tar.write_bytes(good[:1024])  # cut at a member header: Python's tarfile alone would not notice
    with pytest.raises(PackError, match=rf"1 of 2 shard\(s\) failed: {re.escape(str(tar))}: unreadable"):
        run(overwrite=True)
    assert _tree(out) == before
    staging = tmp_path / "out.partial"
    assert (staging / "done" / "shard-000000.json").is_file() and not (staging / "shard-000001.tar").exists()
    # The input fixed, the same command packs only the missing shard, then replaces OUT.
    tar.write_bytes(good)
    stats = run(overwrite=True)
    assert stats.shards_skipped == 1 and not staging.exists()
    assert _tree(out) == before  # the same inputs give the same bytes


def test_a_changed_input_is_packed_again_on_resume(
    shared_data: Path, photo_vocab: Path, tmp_path: Path
) -> None:
    from engine.packing import PackError

    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:10]
    _write_img2dataset(tmp_path / "i2d", photos)
    first, second = tmp_path / "i2d" / "00000.tar", tmp_path / "i2d" / "00001.tar"
    good_second = second.read_bytes()
    second.write_bytes(good_second[:1024])
    with pytest.raises(PackError):
        pack(Img2DatasetSource(tmp_path / "i2d"), tmp_path / "out", photo_vocab, progress=False)
    # shard 0 is marked done; now its input changes (other photos) and the broken one is fixed
    _write_img2dataset(tmp_path / "other", photos[::-1])
    first.write_bytes((tmp_path / "other" / "00000.tar").read_bytes())
    second.write_bytes(good_second)
    stats = pack(Img2DatasetSource(tmp_path / "i2d"), tmp_path / "out", photo_vocab, progress=False)
    assert stats.shards_skipped == 0
    pack(Img2DatasetSource(tmp_path / "i2d"), tmp_path / "fresh", photo_vocab, progress=False)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "fresh")
