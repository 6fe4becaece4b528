"""engine/main_job.py: the main job's closing summary, read from a small fake transfer folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.main_job import summary, verdict

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = "held-out mAP 14.70% vs chance 3.40% (281 synsets, 51 images, 255 captions)"


def _run(folder: Path, steps: int, maps: dict[int, float], chance: float = 0.0405) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"steps": steps}, "model": {}}))
    (folder / "eval.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "val_mAP": m, "chance_mAP": chance, "images": 119}) + "\n"
            for s, m in maps.items()
        )
    )


@pytest.fixture
def transfer(tmp_path: Path) -> Path:
    t = tmp_path / "transfer"
    (t / "val").mkdir(parents=True)
    (t / "val" / "dataset.json").write_text(json.dumps({"source": {"excluded": {"images": 9}}}))
    (t / "zeroshot.txt").write_text(
        "some progress line\nmAP 11.97% over 71 classes (119 images); chance 4.05%\n"
    )
    _run(t / "probe_random", 200, {100: 0.1150, 200: 0.1198})
    _run(t / "probe_synset", 200, {100: 0.1210, 200: 0.1200})
    _run(t / "finetune_random", 50, {10: 0.0600, 50: 0.0835})
    _run(t / "finetune_synset", 50, {10: 0.1100, 50: 0.1355})
    return t


def test_summary_reads_every_run(transfer: Path) -> None:
    text = summary(transfer, PRETRAIN, 110)
    lines = text.splitlines()
    assert lines[0] == "" and lines[1].startswith("=" * 32 + " main job summary")
    assert f"pre-training (coco_photos, vocabulary): {PRETRAIN}" in lines
    assert "scored on coco128 val2017 less the 9 pre-training photos" in text
    assert "(119 images), mAP over the classes with a positive" in text
    expected_rows = [
        "  zero-shot synset readout (no training)           mAP  11.97%   chance 4.05%",
        "  linear probe, classifier_init random, 200 steps  mAP  11.98%   chance 4.05%",
        "  linear probe, classifier_init synset, 200 steps  mAP  12.00%   chance 4.05%",
        "  fine-tune, classifier_init random, 50 steps      mAP   8.35%   chance 4.05%",
        "  fine-tune, classifier_init synset, 50 steps      mAP  13.55%   chance 4.05%",
    ]
    start = lines.index(expected_rows[0])
    assert lines[start : start + 5] == expected_rows
    assert "linear probe: synset initialisation tied with random (+0.02 points)" in lines
    assert "fine-tune: synset initialisation beat random (+5.20 points)" in lines
    assert "  linear probe (step: random / synset): 100: 11.5 / 12.1, 200: 12.0 / 12.0" in lines
    assert "  fine-tune (step: random / synset): 10: 6.0 / 11.0, 50: 8.3 / 13.6" in lines
    assert f"(details in {transfer})" in lines
    assert lines[-2] == "main job: 110 s after set-up" and set(lines[-1]) == {"="}


def test_summary_without_a_pretraining_line_or_exclusions(transfer: Path) -> None:
    (transfer / "val" / "dataset.json").write_text(json.dumps({"source": {}}))
    (transfer / "zeroshot.txt").write_text("mAP 5.00% over 3 classes; chance 1.00%\n")
    text = summary(transfer, "", 7)
    assert "pre-training (coco_photos, vocabulary): no held-out line" in text
    assert "less the ? pre-training photos\n(? images)" in text


@pytest.mark.parametrize(
    ("random", "synset", "said"),
    [(12.0, 12.9, "tied with"), (12.0, 13.0, "beat"), (12.0, 10.9, "fell behind")],
)
def test_a_gap_under_a_point_is_a_tie(random: float, synset: float, said: str) -> None:
    assert verdict(random, synset) == said


def test_the_script_calls_it(transfer: Path) -> None:
    """What scripts/run_main.sh runs: the module, with the folder, the pre-training line and the time."""
    assert "python -m engine.main_job" in (ROOT / "scripts" / "run_main.sh").read_text()
    out = subprocess.run(
        [sys.executable, "-m", "engine.main_job", str(transfer), PRETRAIN, "110"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == summary(transfer, PRETRAIN, 110) + "\n"
