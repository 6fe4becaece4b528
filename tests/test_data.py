"""The DALI loader on CPU: shapes and normalisation, labels, rank sharding, determinism, the guard
against bad samples, recovery from a DALI error, and resuming the data position."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shard_utils import read_all

from engine.data import CLIP_MEAN, CLIP_STD, make_loader
from engine.packing import ShardWriter

pytestmark = pytest.mark.usefixtures("nltk_ready")
SIZE = 48  # small images keep the resize and normalise cheap; decoding dominates


def cpu_loader(shards, batch_size: int, **kw):
    kw.setdefault("image_size", SIZE)
    return make_loader(shards, batch_size, device="cpu", **kw)


def take(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        for name in ("image", "labels", "label_counts", "valid"):
            assert torch.equal(x[name], y[name]), name


def some_shards(packed: Path, n: int) -> list[Path]:
    names = json.loads((packed / "dataset.json").read_text())["shard_names"]
    return [packed / name for name in names[:n]]


# ------------------------------------------------------------------------------- batches, labels
def test_eval_batch_shapes_and_normalisation(packed_photos: Path, shared_data: Path) -> None:
    loader = cpu_loader(some_shards(packed_photos, 1), 8, train=False, keys=True)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (8, 32) and batch["labels"].dtype == torch.int64
    assert batch["label_counts"].shape == (8,) and batch["label_counts"].dtype == torch.int64
    assert batch["valid"].dtype == torch.bool and bool(batch["valid"].all())
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
    for i in range(4):
        # PIL reference with torchvision's sizes (Resize(SIZE): the longer side int(SIZE * long /
        # short); CenterCrop: round((side - SIZE) / 2)), bilinear, antialiased; CLIP normalise
        stem = batch["key"][i].rsplit("_", 1)[0]
        img = Image.open(shared_data / "coco_photos" / f"{stem}.jpg").convert("RGB")
        short = min(img.size)
        w, h = SIZE * img.width // short, SIZE * img.height // short
        left, top = round((w - SIZE) / 2), round((h - SIZE) / 2)
        crop = img.resize((w, h), Image.BILINEAR).crop((left, top, left + SIZE, top + SIZE))
        ref = torch.from_numpy((np.asarray(crop, np.float32) / 255 - mean) / std).permute(
            2, 0, 1
        )  # (3, H, W)
        got = batch["image"][i]
        assert (got - ref).abs().mean() < 0.05, stem  # decoders and resamplers differ by ~1 level
        torch.testing.assert_close(got.mean((1, 2)), ref.mean((1, 2)), atol=0.02, rtol=0)
        torch.testing.assert_close(got.std((1, 2)), ref.std((1, 2)), atol=0.02, rtol=0)


def test_ranks_are_disjoint_complete_and_carry_the_packed_labels(packed_photos: Path) -> None:
    samples = read_all(packed_photos)
    seen: dict[str, int] = {}
    lengths = []
    for rank in range(2):
        loader = cpu_loader(packed_photos, 64, train=False, rank=rank, world_size=2, keys=True, image_size=16)
        lengths.append(len(loader))
        batches = list(loader)
        assert len(batches) == len(loader) == math.ceil(math.ceil(1275 / 2) / 64)
        for batch in batches:
            for i, key in enumerate(batch["key"]):
                if not batch["valid"][i]:  # the padding that evens out the ranks
                    assert torch.count_nonzero(batch["image"][i]) == 0
                    continue
                assert key not in seen, f"{key} on rank {seen[key]} and rank {rank}"
                seen[key] = rank
                packed = np.frombuffer(samples[key]["lbl"], "<i4").tolist()
                n = int(batch["label_counts"][i])
                assert batch["labels"][i, :n].tolist() == packed
                assert bool((batch["labels"][i, n:] == -1).all())
        assert loader.epoch == 1 and loader.invalid_samples == 0
    assert lengths[0] == lengths[1]
    assert set(seen) == set(samples)


def test_max_labels_truncates_and_counts(packed_photos: Path) -> None:
    loader = cpu_loader(some_shards(packed_photos, 1), 32, train=False, max_labels=2, image_size=16)
    batches = list(loader)
    counts = torch.cat([b["label_counts"] for b in batches])
    assert batches[0]["labels"].shape == (32, 2) and int(counts.max()) == 2
    assert loader.truncated_labels > 0


# --------------------------------------------------------------------------------------- training
def test_same_seed_same_batches(packed_photos: Path) -> None:
    shards = some_shards(packed_photos, 3)
    first = take(cpu_loader(shards, 16, seed=7, keys=True), 3)
    again = take(cpu_loader(shards, 16, seed=7, keys=True), 3)
    other = take(cpu_loader(shards, 16, seed=8, keys=True), 3)
    assert_same_batches(first, again)
    assert not torch.equal(first[0]["image"], other[0]["image"])
    assert first[0]["image"].shape == (16, 3, SIZE, SIZE)
    # random crops and flips: not the eval centre crop, and not constant
    assert first[0]["image"].std() > 0.1


def test_train_epochs_drop_the_partial_batch(packed_photos: Path) -> None:
    shards = some_shards(packed_photos, 3)  # 192 samples
    loader = cpu_loader(shards, 20, rank=1, world_size=2, keys=True, image_size=16)
    assert len(loader) == (192 // 2) // 20 == 4
    epochs = []
    for epoch in range(2):
        assert loader.epoch == epoch
        batches = list(loader)
        assert len(batches) == 4 and all(bool(b["valid"].all()) for b in batches)
        epochs.append({k for b in batches for k in b["key"]})
        assert len(epochs[-1]) == 80
    assert loader.epoch == 2
    assert epochs[0] != epochs[1]  # ranks move to the next range of samples each epoch


# ------------------------------------------------------------------------------------ bad samples
def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return buf.getvalue()


def _write_shard(folder: Path, images: list[tuple[str, str, bytes]], *, no_labels: str = "") -> Path:
    """One shard of ``images`` (key, ext, bytes), each with labels [3, 5] but the ``no_labels`` one."""
    writer = ShardWriter(folder, len(images))
    for key, ext, data in images:
        lbl = [] if key == no_labels else [("lbl", np.array([3, 5], "<i4").tobytes())]
        writer.write(key, [(ext, data), ("txt", b"a caption"), *lbl])
    writer.close()
    return folder / "shard-000000.tar"


def test_guard_routes_bad_images_to_placeholders(tmp_path: Path) -> None:
    good = _jpeg((200, 100, 50))
    png = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 10)).save(png, "PNG")
    images = [
        ("good0", "jpg", good),
        ("truncated", "jpg", good[: len(good) // 2]),
        ("garbage", "jpg", b"definitely not an image " * 8),
        ("empty", "jpg", b""),
        ("png", "png", png.getvalue()),
        ("good1", "jpg", good),
        ("nolabels", "jpg", good),  # a sample missing a component is skipped by the reader
    ]
    shard = _write_shard(tmp_path, images, no_labels="nolabels")
    loader = cpu_loader([shard], 4, train=False, keys=True, drop_last=False, num_threads=1)
    batches = list(loader)  # the epoch completes
    keys = [k for b in batches for k in b["key"]][:6]
    valid = torch.cat([b["valid"] for b in batches])[:6].tolist()
    assert loader.samples == 6 and len(loader) == 2
    assert keys == [k for k, _, _ in images[:-1]]
    assert valid == [True, False, False, False, True, True]
    images_out = torch.cat([b["image"] for b in batches])[:6]
    assert torch.count_nonzero(images_out[1:4]) == 0 and torch.count_nonzero(images_out[0]) > 0
    assert loader.invalid_samples == 3 and loader.failed_batches == 0
    assert torch.cat([b["labels"] for b in batches])[1, :2].tolist() == [3, 5]  # labels still there


def test_decode_error_replays_the_batch_and_the_epoch_goes_on(tmp_path: Path) -> None:
    # Framed like a JPEG (FFD8FF ... FFD9), so it passes the guard, but the decoder raises.
    fake = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
    images = [(f"good{i}", "jpg", _jpeg((20 * i, 100, 50))) for i in range(12)]
    images[5] = ("fake", "jpg", fake)  # batch 2 of batches of 2
    shard = _write_shard(tmp_path, images)
    loader = cpu_loader([shard], 2, train=False, keys=True, num_threads=1)
    for epoch in range(2):
        batches = list(loader)
        assert len(batches) == 6
        assert [bool(b["valid"].all()) for b in batches] == [True, True, False, True, True, True]
        assert not bool(batches[2]["valid"].any()) and batches[2]["key"] == ["good4", "fake"]
        assert torch.count_nonzero(batches[2]["image"]) == 0
        assert [k for b in batches[3:] for k in b["key"]] == [f"good{i}" for i in range(6, 12)]
        assert loader.failed_batches == epoch + 1 and loader.lost_samples == 2 * (epoch + 1)


# ----------------------------------------------------------------------------------------- resume
def test_resume_continues_with_the_same_batches(packed_photos: Path) -> None:
    shards = some_shards(packed_photos, 3)

    def loader():
        return cpu_loader(shards, 16, seed=3, keys=True, image_size=32, shuffle_buffer=64)

    reference = loader()
    assert len(reference) == 12
    uninterrupted = list(reference) + list(reference)  # two epochs
    for stop in (5, 12):  # mid-epoch, and at the end of an epoch
        run = loader()
        take(run, stop)
        state = json.loads(json.dumps(run.state_dict()))  # it survives a JSON checkpoint
        del run
        resumed = loader()
        resumed.load_state_dict(state)
        assert resumed.epoch == stop // 12
        rest = list(resumed)
        if stop == 12:
            assert resumed.epoch == 2
        else:
            rest += list(resumed)
        assert_same_batches(rest, uninterrupted[stop:])


def test_resume_refuses_another_setup(packed_photos: Path) -> None:
    shards = some_shards(packed_photos, 1)
    state = cpu_loader(shards, 8, seed=1).state_dict()
    with pytest.raises(ValueError, match="batch_size: saved 8, now 4"):
        cpu_loader(shards, 4, seed=1).load_state_dict(state)


# -------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_decoding_matches_cpu_and_resumes(packed_photos: Path) -> None:
    shards = some_shards(packed_photos, 2)
    gpu = make_loader(shards, 16, device="mixed", train=False, image_size=SIZE, keys=True)
    cpu = cpu_loader(shards, 16, train=False, keys=True)
    for g, c in zip(take(gpu, 3), take(cpu, 3), strict=True):
        assert g["image"].is_cuda and g["image"].shape == (16, 3, SIZE, SIZE)
        assert g["key"] == c["key"] and torch.equal(g["labels"], c["labels"])
        assert (g["image"].cpu() - c["image"]).abs().mean() < 0.05  # nvJPEG vs libjpeg-turbo
    run = make_loader(shards, 16, device="mixed", image_size=SIZE, keys=True, seed=5)
    take(run, 3)
    state = run.state_dict()
    expected = take(run, 3)
    resumed = make_loader(shards, 16, device="mixed", image_size=SIZE, keys=True, seed=5)
    resumed.load_state_dict(state)
    for a, b in zip(take(resumed, 3), expected, strict=True):
        assert a["key"] == b["key"]
        torch.testing.assert_close(a["image"], b["image"], atol=1e-2, rtol=0)


def test_captions_come_with_their_images(packed_photos: Path) -> None:
    samples = read_all(packed_photos)
    loader = cpu_loader(
        some_shards(packed_photos, 1), 16, train=False, keys=True, captions=True, image_size=16
    )
    batch = next(iter(loader))
    assert len(batch["caption"]) == 16
    for key, caption, ok in zip(batch["key"], batch["caption"], batch["valid"].tolist(), strict=True):
        if ok:
            assert caption.encode() == samples[key]["txt"]
