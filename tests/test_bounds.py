"""Inputs with no natural bound get one, and a clear message: a 10 MB caption line, a YAML alias
bomb in a config, JSON nested 100,000 deep, an image of more pixels than the packer accepts inside
a training shard. Each runs for real (a subprocess with a timeout where the old failure was a hang)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
