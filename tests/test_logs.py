"""Logs for people and for files: the gradient norm the step line reports is the global one (torch's
``clip_grad_norm_`` on the unsharded model; the same on every ZeRO rank); a run into a file writes
plain lines (one per ``run.log_every``, no carriage return), a run on a terminal a tqdm bar; the
step line, ``log.jsonl`` and TensorBoard carry the same numbers; the other long commands' progress."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks

from catlip.progress import Lines, clock, progress, say
from engine.config import TrainConfig, from_dict
from engine.data import TensorLoader
from engine.parallel import lr_multiplier

ROOT = Path(__file__).resolve().parents[1]
V, B, STEPS, LR, CLIP = 50, 4, 4, 5e-3, 1.0


def _cfg(out: Path, stage: int) -> TrainConfig:
    return from_dict(
        {
            "model": {"name": "vit_tiny", "image_size": 16},
            "data": {"batch_size": B},
            "optim": {"lr": LR, "min_lr": 1e-5, "warmup_steps": 2, "weight_decay": 0.2, "grad_clip": CLIP},
            "parallel": {"zero_stage": stage, "precision": "fp32", "persistence_threshold": 0},
            "checkpoint": {"every": 0},
            "run": {"out_dir": str(out), "steps": STEPS, "log_every": 1},
        }
    )


def _model():
    from catlip.models import CatLIPModel, ViTConfig

    torch.manual_seed(0)
    return CatLIPModel(ViTConfig(image_size=16, patch_size=8, width=32, depth=2, heads=2), V)


def _batches(world: int) -> list[dict]:
    """STEPS global batches of B images per rank, 0-5 labels each."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        labels = torch.full((B * world, 6), -1, dtype=torch.int64)
        for i in range(B * world):
            k = int(torch.randint(0, 6, (1,), generator=g))
            labels[i, :k] = torch.randperm(V, generator=g)[:k]
        out.append({"image": torch.randn(B * world, 3, 16, 16, generator=g), "labels": labels})
    return out


def _torch_norms(world: int) -> list[float]:
    """The same model, data, AdamW, schedule and clipping in one process: what clip_grad_norm_ returns."""
    from catlip.param_groups import param_groups

    model = _model()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, 2, STEPS, 1e-5 / LR))
    norms = []
    for batch in _batches(world):
        opt.zero_grad()
        model(batch["image"], batch["labels"]).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        sched.step()
    return norms


def _norms(rank: int, tmp: str, stages: tuple[int, ...], world_size: int) -> dict[int, list[float]]:
    from engine.train import Trainer

    out = {}
    for stage in stages:
        rows = [{k: v[rank * B : (rank + 1) * B] for k, v in b.items()} for b in _batches(world_size)]
        trainer = Trainer(
            _cfg(Path(tmp) / f"z{stage}", stage), model_fn=_model, train_loader=TensorLoader(rows)
        )
        out[stage] = [e.grad_norm for e in trainer.fit()]
        trainer.close()
    return out


def test_grad_norm_is_torchs_clip_grad_norm_on_one_rank(tmp_path):
    (got,) = run_ranks(_norms, world=1, tmp=str(tmp_path), stages=(0, 1, 2, 3), world_size=1)
    want = _torch_norms(1)
    assert want[0] > CLIP  # the first steps are clipped: the norm is the one before clipping
    for stage, norms in got.items():
        np.testing.assert_allclose(norms, want, rtol=1e-4, err_msg=f"zero stage {stage}")


@pytest.mark.distributed
def test_grad_norm_is_the_same_global_norm_on_every_zero_rank(tmp_path):
    r0, r1 = run_ranks(_norms, world=2, tmp=str(tmp_path), stages=(2, 3), world_size=2)
    want = _torch_norms(2)  # the unsharded model on the global batch
    for stage in (2, 3):
        assert r0[stage] == r1[stage], f"zero stage {stage}: ranks differ"
        np.testing.assert_allclose(r0[stage], want, rtol=1e-4, err_msg=f"zero stage {stage}")


# ------------------------------------------------------------------------------- a real run's output
RUN_STEPS, EVERY = 7, 3
LOGGED = [1, 3, 6, 7]  # step 1, every run.log_every-th step, and the last
STEP_LINE = re.compile(
    r"step +(?P<step>\d+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+) \| (?P<images_per_s>[\d,.]+) img/s"
    r" \((?P<tokens_per_s>[\d,]+) tokens/s\) \| grad norm (?P<grad_norm>\S+) \| step (?P<step_ms>\d+) ms"
    r" \(data (?P<data_ms>\d+) ms\) \| peak mem (?P<peak_mem_mb>[\d,]+) MB \| eta (?P<eta>\d+:\d\d:\d\d)$"
)


def _shards(root: Path, photos: Path, n: int = 16) -> Path:
    """``n`` photos with two labels each in a 50-synset vocabulary, one shard with its dataset.json."""
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


def _train_command(shards: Path, out: Path) -> list[str]:
    sets = [
        "model.image_size=32", f"data.train={shards}", "data.batch_size=4", "data.num_threads=1",
        "parallel.zero_stage=2", "parallel.precision=fp32", "checkpoint.every=0", f"run.out_dir={out}",
        f"run.steps={RUN_STEPS}", f"run.log_every={EVERY}",
    ]  # fmt: skip
    return [sys.executable, "-m", "engine.train", *(a for s in sets for a in ("--set", s))]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def run_into_a_file(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, str]:
    """A real one-process training run, stdout and stderr into one file: (run folder, the file's text)."""
    tmp = tmp_path_factory.mktemp("file_run")
    shards, out, log = _shards(tmp, shared_data / "coco_photos"), tmp / "run", tmp / "train.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            _train_command(shards, out), cwd=ROOT, env=_env(), stdout=f, stderr=f, timeout=300
        )
    text = log.read_bytes().decode()  # read_text would turn each \r into \n
    assert proc.returncode == 0, text[-3000:]
    return out, text


def test_a_run_into_a_file_writes_one_plain_line_per_log_interval(run_into_a_file):
    _, text = run_into_a_file
    assert "\r" not in text  # no bar frames, no carriage return anywhere
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert [int(STEP_LINE.match(line)["step"]) for line in lines] == LOGGED, lines
    assert not re.search(r"\d+%\|", text)  # nor a bar's last frame


def test_the_step_line_log_jsonl_and_tensorboard_carry_the_same_numbers(run_into_a_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, text = run_into_a_file
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == LOGGED
    board = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    board.Reload()
    keys = {k for k in records[0] if k != "step"}
    assert {"loss", "lr", "images_per_s", "tokens_per_s", "grad_norm", "eta_s", "step_time"} <= keys
    assert set(board.Tags()["scalars"]) == {f"train/{k}" for k in keys}
    for key in keys:
        got = {e.step: e.value for e in board.Scalars(f"train/{key}")}
        want = {r["step"]: r[key] for r in records}
        assert got.keys() == want.keys(), key
        np.testing.assert_allclose(
            [got[s] for s in LOGGED], [want[s] for s in LOGGED], rtol=1e-6, err_msg=key
        )
    shown = [STEP_LINE.match(line) for line in text.splitlines() if line.startswith("step ")]
    for line, r in zip(shown, records, strict=True):
        assert int(line["step"]) == r["step"]
        assert float(line["loss"]) == pytest.approx(r["loss"], abs=6e-6)
        assert float(line["lr"]) == pytest.approx(r["lr"], rel=1e-3)
        assert float(line["grad_norm"]) == pytest.approx(r["grad_norm"], rel=1e-3)
        assert r["grad_norm"] > 0
        assert float(line["images_per_s"].replace(",", "")) == pytest.approx(r["images_per_s"], abs=0.06)
        assert int(line["step_ms"]) == round(r["step_time"] * 1e3)
        assert line["eta"] == clock(r["eta_s"])
    assert records[-1]["eta_s"] == 0 and records[0]["eta_s"] > 0


def test_a_run_on_a_terminal_shows_a_progress_bar(tmp_path, shared_data):
    shards, out = _shards(tmp_path, shared_data / "coco_photos"), tmp_path / "run"
    main, child = _terminal()
    proc = subprocess.Popen(_train_command(shards, out), cwd=ROOT, env=_env(), stdout=child, stderr=child)
    os.close(child)
    text = _read_all(main)
    assert proc.wait(timeout=300) == 0, text[-3000:]
    frames = re.findall(
        r"\rtrain: +(\d+)%\|[^\r\n]*\| (\d+)/7 ", text
    )  # tqdm redraws after a carriage return
    assert len(frames) >= 2 and frames[-1] == ("100", "7"), text[-3000:]
    assert len([line for line in text.splitlines() if STEP_LINE.search(line)]) == len(LOGGED)


@pytest.mark.usefixtures("nltk_ready")
def test_catlip_vocab_prints_plain_lines_into_a_file_and_a_bar_on_a_terminal(tmp_path, coco_captions):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{i}.jpg\t{c}\n" for i, c in enumerate(coco_captions[:60])))
    command = [sys.executable, "-m", "engine", "vocab", "--captions", str(tsv), "--workers", "1", "--out"]
    with open(tmp_path / "vocab.log", "w") as f:
        subprocess.run(
            [*command, str(tmp_path / "a.tsv")], env=_env(), stdout=f, stderr=f, timeout=300, check=True
        )
    text = (tmp_path / "vocab.log").read_bytes().decode()
    assert "\r" not in text
    for stage in ("fitting senses", "labelling"):  # each stage's closing line
        assert (
            len(
                re.findall(
                    rf"^{stage}: 60 caption \| [\d.,]+ caption/s \| elapsed \d+:\d\d:\d\d$", text, re.M
                )
            )
            == 1
        )
    main, child = _terminal()
    proc = subprocess.Popen([*command, str(tmp_path / "b.tsv")], env=_env(), stdout=child, stderr=child)
    os.close(child)
    text = _read_all(main)
    assert proc.wait(timeout=300) == 0, text[-3000:]
    assert re.search(r"\rlabelling: 60caption \[", text), text[-3000:]  # tqdm's frame of an unknown total


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal 160 columns wide (a new one has 0: tqdm would draw empty frames)."""
    main, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    return main, child


def _read_all(fd: int) -> str:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


# ------------------------------------------------------------------------------- the helper itself
def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    from tqdm import tqdm

    main, child = os.openpty()
    with open(child, "w") as terminal:
        bar = progress(4, desc="x", unit="item", stream=terminal)
        assert isinstance(bar, tqdm)
        bar.close()
    os.close(main)
    stream = io.StringIO()
    assert isinstance(progress(4, desc="x", unit="item", stream=stream), Lines)
    assert isinstance(progress(4, desc="x", unit="item", stream=terminal), Lines)  # closed: no terminal


def test_plain_lines_one_per_interval_and_one_at_the_end():
    stream = io.StringIO()
    bar = progress(10, desc="packing", unit="sample", stream=stream, every_s=0)
    for _ in range(3):
        bar.update(2)
    bar.set_postfix(bad=1)
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" |")[0] for line in lines] == [
        "packing: 2/10 sample (20%)", "packing: 4/10 sample (40%)", "packing: 6/10 sample (60%)"
    ]  # fmt: skip
    assert re.search(r"\| eta \d+:\d\d:\d\d$", lines[0]), lines[0]
    quiet = io.StringIO()
    bar = progress(None, desc="labelling", unit="caption", stream=quiet, every_s=3600)
    bar.update(5)
    bar.close()  # only the closing line: 5 captions, no total
    assert re.fullmatch(r"labelling: 5 caption \| [\d.,]+ caption/s \| elapsed 0:00:00\n", quiet.getvalue())
    own = io.StringIO()  # every_s=None: the caller prints its own lines (the trainer's step lines)
    bar = progress(10, desc="train", unit="step", stream=own, every_s=None)
    bar.update(10)
    bar.close()
    assert own.getvalue() == ""


def test_clock_is_h_mm_ss():
    assert [clock(s) for s in (0, 59.6, 61, 3600 * 27 + 189)] == ["0:00:00", "0:01:00", "0:01:01", "27:03:09"]


def test_a_line_reaches_a_log_file_at_once(tmp_path, monkeypatch):
    log = tmp_path / "out.log"
    with open(log, "w") as f:  # block-buffered, as stdout redirected to a file
        monkeypatch.setattr(sys, "stdout", f)
        say("step 1 | loss 1.0")
        assert log.read_bytes() == b"step 1 | loss 1.0\n"
