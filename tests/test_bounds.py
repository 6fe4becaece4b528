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
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("labelling:")]
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
