"""Failures made for real on 2 gloo ranks, each rank a process of its own (no launcher in between,
so every rank's exit status and output are seen): a full disk while saving (a 13 MB tmpfs as
``run.out_dir``), Ctrl-C (SIGINT) in the middle of training, a second run into a run's folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _shards(root: Path, photos: Path, n: int = 16) -> Path:
    """``n`` photos with labels in a 50-synset vocabulary, in one shard with its dataset.json."""
    from engine.packing import ShardWriter

    out = root / "shards"
    writer = ShardWriter(out, n)
    for i, image in enumerate(sorted(photos.glob("*.jpg"))[:n]):
        writer.write(f"s{i:02d}", [("jpg", image.read_bytes()), ("lbl", np.asarray([1, 3], "<i4").tobytes())])
    writer.close()
    (out / "dataset.json").write_text(
        json.dumps({"samples": n, "vocab_size": 50, "shard_names": writer.names})
    )
    return out


def _train_args(shards: Path, out: Path, *more: str) -> list[str]:
    sets = [
        "model.image_size=32", f"data.train={shards}", "data.batch_size=4", "data.num_threads=1",
        "parallel.precision=fp32", f"run.out_dir={out}", "run.log_every=1",
    ]  # fmt: skip
    return [a for s in [*sets, *more] for a in ("--set", s)]


def _start_ranks(args: list[str], world: int = 2, files: list | None = None) -> list[subprocess.Popen]:
    """``world`` ranks of ``python -m engine.train ARGS``, output in pipes, or in ``files``
    ((stdout, stderr) paths per rank: a long run would fill a pipe)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        out, err = (open(f, "w") for f in files[rank]) if files else (subprocess.PIPE, subprocess.PIPE)
        cmd = [sys.executable, "-m", "engine.train", *args]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=out, stderr=err))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each rank."""
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line.lower() or "Traceback" in line]


def _said(text: str, word: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if word in line]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 13 MB filesystem (tmpfs): one checkpoint of the tiny model (7.4 MB) fits, two do not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: a real small filesystem cannot be made")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=13m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}); it needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------ a full disk
def test_a_full_disk_while_saving_stops_every_rank_with_one_line(
    small_disk: Path, tmp_path: Path, shared_data: Path
) -> None:
    shards = _shards(tmp_path, shared_data / "coco_photos")
    out = small_disk / "run"
    ranks = _finish(
        _start_ranks(_train_args(shards, out, "run.steps=4", "checkpoint.every=2", "run.resume=never"))
    )
    tag = out / "checkpoints" / "step_00000004"
    assert [r[0] for r in ranks] == [2, 2], [r[2][-3000:] for r in ranks]
    assert _errors(ranks[0][2]) == [
        f"engine.train: error: disk full at {tag}; checkpoint step_00000002 is intact"
    ]
    assert _errors(ranks[1][2]) == []  # said once, by rank 0; no traceback anywhere
    assert not tag.exists() and (out / "checkpoints" / "latest").read_text() == "step_00000002"
    # the previous checkpoint is intact and resumable (the unfinished tag gave its space back)
    ranks = _finish(_start_ranks(_train_args(shards, out, "run.steps=2", "run.resume=auto")))
    assert [r[0] for r in ranks] == [0, 0], [r[2][-3000:] for r in ranks]
    assert f"resumed from {out}/checkpoints/step_00000002 at step 2" in ranks[0][1]


# ------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_stops_every_rank_with_one_line_and_status_130(tmp_path: Path, shared_data: Path) -> None:
    """SIGINT to every rank, as a terminal's Ctrl-C sends it to the job's process group, once a
    checkpoint is written and training is past it."""
    shards = _shards(tmp_path, shared_data / "coco_photos")
    out = tmp_path / "run"
    args = _train_args(shards, out, "run.steps=10000", "checkpoint.every=3", "run.resume=never")
    logs = [(tmp_path / f"rank{r}.out", tmp_path / f"rank{r}.err") for r in range(2)]
    procs = _start_ranks(args, files=logs)
    deadline = time.monotonic() + 300
    while not re.search(r"^step +5 \|", logs[0][0].read_text(), re.M):
        running = all(p.poll() is None for p in procs)
        assert running and time.monotonic() < deadline, logs[0][1].read_text()[-3000:]
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGINT)
    assert [p.wait(timeout=120) for p in procs] == [130, 130], [e.read_text()[-3000:] for _, e in logs]
    said = [_errors(e.read_text()) + _said(e.read_text(), "interrupted") for _, e in logs]
    assert said[1] == [], said[1]  # no traceback, no second line
    (line,) = said[0]
    found = re.fullmatch(r"engine.train: interrupted at step (\d+); last checkpoint step_(\d{8})", line)
    assert found, line
    assert (
        int(found.group(1)) >= 5
        and int(found.group(2)) % 3 == 0
        and int(found.group(2)) <= int(found.group(1))
    )


def test_ctrl_c_to_the_documented_launcher_is_one_line_and_status_130(
    tmp_path: Path, shared_data: Path
) -> None:
    """The README's launch (python -m engine.launch), its process group sent SIGINT as a terminal
    does: torchrun's agent raised SignalException (a 30-line traceback) and exited 1."""
    shards = _shards(tmp_path, shared_data / "coco_photos")
    args = _train_args(shards, tmp_path / "run", "run.steps=10000", "checkpoint.every=3", "run.resume=never")
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "engine.launch", "--nproc_per_node", "2", "-m", "engine.train", *args]
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not re.search(r"^step +5 \|", out.read_text(), re.M):
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, err.read_text()[-3000:]
    text = err.read_text()
    assert _errors(text) == [] and "death signal" not in text, text[-3000:]
    (line,) = _said(text, "interrupted")
    assert re.fullmatch(r"engine.train: interrupted at step \d+; last checkpoint step_\d{8}", line), line


# ------------------------------------------------------------------------------ one run per folder
def _one_rank(args: list[str]) -> tuple[int, str, str]:
    return _finish(_start_ranks(args, world=1))[0]


def test_a_run_folder_belongs_to_one_run(tmp_path: Path, shared_data: Path) -> None:
    """A second run into a run's folder appended to its log.jsonl, added a TensorBoard file, and
    `resume: auto` later took the older run's higher step over the newer run's checkpoint."""
    shards = _shards(tmp_path, shared_data / "coco_photos")
    first = tmp_path / "first"
    code, _, err = _one_rank(
        _train_args(shards, first, "run.steps=4", "checkpoint.every=2", "run.resume=never")
    )
    assert code == 0, err[-3000:]
    log, boards = (first / "log.jsonl").read_bytes(), sorted((first / "tb").iterdir())
    # a new run into it is refused before it writes anything, saying what to do
    code, _, err = _one_rank(_train_args(shards, first, "run.steps=2", "run.resume=never"))
    assert code == 2, err[-3000:]
    assert _errors(err) == [
        f"engine.train: error: run.out_dir {first} holds another run (log.jsonl, tb/, "
        "checkpoints/step_00000004): continue it with --set run.resume=auto, or give a new run.out_dir"
    ]
    assert (first / "log.jsonl").read_bytes() == log and sorted((first / "tb").iterdir()) == boards
    # continuing it is what run.resume=auto does
    code, out, err = _one_rank(_train_args(shards, first, "run.steps=6", "run.resume=auto"))
    assert code == 0 and f"resumed from {first}/checkpoints/step_00000004 at step 4" in out, err[-3000:]
    assert len((first / "log.jsonl").read_text().splitlines()) == 6  # steps 1-4, then 5-6
    # a checkpoint saved later is newer than a higher step saved earlier: here a folder that
    # holds two runs' checkpoints, as a second run used to leave it
    second = tmp_path / "second"
    code, _, err = _one_rank(_train_args(shards, second, "run.steps=2", "run.resume=never"))
    assert code == 0, err[-3000:]
    shutil.copytree(second / "checkpoints" / "step_00000002", first / "checkpoints" / "step_00000002")
    code, out, err = _one_rank(_train_args(shards, first, "run.steps=3", "run.resume=auto"))
    assert code == 0 and f"resumed from {first}/checkpoints/step_00000002 at step 2" in out, err[-3000:]
