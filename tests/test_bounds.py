"""Inputs with no natural bound get one, and a clear message: a 10 MB caption line, a YAML alias
bomb in a config, JSON nested 100,000 deep, an image of more pixels than the packer accepts inside
a training shard. Each runs for real (a subprocess with a timeout where the old failure was a hang)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _catlip(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------ caption length
def test_a_10_mb_caption_line_is_cut_by_vocab_and_labels(tmp_path: Path, nltk_ready: None) -> None:
    """Tagging is linear in the text: that line took `catlip vocab` 217 s before it was cut."""
    big = "a dog chases a red ball across the green grass " * 220_000  # 10.3 MB
    tsv = tmp_path / "captions.tsv"
    tsv.write_text(f"a.jpg\t{big}\n" + "".join(f"{c}.jpg\ta dog on a sofa\n" for c in "bcd"))
    vocab = tmp_path / "vocab.tsv"
    proc = _catlip("vocab", "--captions", str(tsv), "--min-count", "1", "--out", str(vocab), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "captions cut to their first 4,096 characters: 1" in proc.stdout
    assert json.loads(Path(f"{vocab}.json").read_text())["captions_cut"] == 1
    out = tmp_path / "labels.jsonl"
    proc = _catlip("labels", "--vocab", str(vocab), "--captions", str(tsv), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 caption(s) longer than 4,096 characters were labelled on their first 4,096" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["caption"]) for r in rows] == [4096, 15, 15, 15] and rows[0]["cut"] is True
    assert rows[0]["labels"] and rows[0]["labels"] != rows[1]["labels"]  # dog, ball, grass


# ------------------------------------------------------------------------------ YAML and JSON
_BOMB = (
    "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "
    + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "]"
)  # 10^9 ones once expanded: formatting it into an error hung with memory growing


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [
        line
        for line in proc.stderr.strip().splitlines()
        if not line.startswith(("labelling:", "fitting senses:"))
    ]
    assert len(lines) == 1, proc.stderr[-2000:]  # the progress bar aside
    return lines[0]


def test_a_yaml_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    line = _one_line_error(_catlip("train", "--set", f"run.steps={_BOMB}"))
    assert "--set run.steps: line 1: YAML anchors and aliases (&a, *a) are not read here" in line
    config = tmp_path / "bomb.yaml"
    config.write_text(f"run:\n  steps: {_BOMB}\n")
    line = _one_line_error(_catlip("train", "--config", str(config)))
    assert f"{config}: line 2: YAML anchors and aliases" in line


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2", "--set run.steps:1:6: invalid YAML (expected ',' or ']', but got '<stream end>')"),
        ("{a: [1, {b: }", "--set run.steps:1:14: invalid YAML"),
        ("[[[[[[[[1]]]]]]]]", "run.steps: expected int, got [[[[...]]]]"),
    ],
)
def test_a_bad_set_value_is_a_one_line_config_error(value: str, message: str) -> None:
    assert message in _one_line_error(_catlip("train", "--set", f"run.steps={value}"))


_DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_100000_deep_is_an_error_naming_the_file(tmp_path: Path, nltk_ready: None) -> None:
    """dataset.json (training), a class set (pack), a COCO caption file (vocab), a config (YAML)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(_DEEP)
    line = _one_line_error(_catlip("train", "--set", f"data.train={data}", "--set", "run.resume=never"))
    assert f"data.train: {data / 'dataset.json'}: JSON nested too deeply to read" in line
    classes = tmp_path / "classes.json"
    classes.write_text(_DEEP)
    (tmp_path / "folder" / "dog").mkdir(parents=True)
    proc = _catlip(
        "pack",
        "--imagefolder",
        str(tmp_path / "folder"),
        "--classes",
        str(classes),
        "--out",
        str(tmp_path / "o"),
    )
    assert f"{classes}: JSON nested too deeply to read" in _one_line_error(proc, 1)
    captions = tmp_path / "captions.json"
    captions.write_text(_DEEP)
    proc = _catlip("vocab", "--captions", str(captions), "--out", str(tmp_path / "v.tsv"), "--workers", "1")
    assert f"{captions}: JSON nested too deeply to read" in _one_line_error(proc)
    config = tmp_path / "deep.yaml"
    config.write_text("run:\n  steps: " + _DEEP + "\n")
    assert f"{config}: YAML nested too deeply to read" in _one_line_error(
        _catlip("train", "--config", str(config))
    )


# ------------------------------------------------------------------------------ pixels
def _huge_png(side: int) -> bytes:
    """A valid grey PNG of side x side black pixels (~0.1% of its raw size, zlib-compressed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_an_image_over_the_packers_pixel_limit_is_a_placeholder_in_training(
    tmp_path: Path, shared_data: Path
) -> None:
    """A shard not made by `catlip pack` with a 13,380 x 13,380 PNG (just over MAX_PIXELS, 180 KB):
    decoded in full and trained on before (0.5 GB of pixels; 20000 x 20000 took 5.1 GB RSS)."""
    import numpy as np

    from engine.data import make_loader
    from engine.packing import ShardWriter
    from engine.packing.shards import MAX_PIXELS

    side = 13_380
    assert side * side > MAX_PIXELS
    writer = ShardWriter(tmp_path, 8)
    photos = sorted((shared_data / "coco_photos").glob("*.jpg"))[:3]
    lbl = np.asarray([1], "<i4").tobytes()
    for i, photo in enumerate(photos[:2]):
        writer.write(f"s{i}", [("jpg", photo.read_bytes()), ("lbl", lbl)])
    writer.write("huge", [("png", _huge_png(side)), ("lbl", lbl)])
    writer.write("s3", [("jpg", photos[2].read_bytes()), ("lbl", lbl)])
    writer.close()
    loader = make_loader(
        tmp_path, 4, train=False, image_size=32, num_threads=1, device="cpu", keys=True, label_member="lbl"
    )
    (batch,) = list(loader)
    valid = dict(zip(batch["key"], batch["valid"].tolist(), strict=True))
    assert valid == {"s0": True, "s1": True, "huge": False, "s3": True}
    assert loader.counters()["invalid_samples"] == 1 and loader.counters()["failed_batches"] == 0
    assert float(batch["image"][batch["key"].index("huge")].abs().sum()) == 0.0
