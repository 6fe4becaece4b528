"""Failures a user can trust: no code from checkpoint files, a failing rank ends the job
at once, checkpoints complete before anything points at them, vocabularies checked, new
hyperparameters applied on resume, overflow-skipped steps counted, clear messages for bad input."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks
from test_train import V, rank_loader, tiny_cfg, tiny_model

ROOT = Path(__file__).resolve().parents[1]


class _Exploit:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _remark(tag: Path) -> None:
    """Rewrite ``complete.json`` for the files now in ``tag`` (sizes included)."""
    marker = json.loads((tag / "complete.json").read_text())
    marker["files"] = {name: (tag / name).stat().st_size for name in marker["files"]}
    (tag / "complete.json").write_text(json.dumps(marker))


def _craft(path: Path, marker: Path) -> None:
    torch.save({"module": _Exploit(marker)}, path)  # what an attacker would ship: a valid .pt


# ------------------------------------------------------------------------------ one process
def _one_rank(rank: int, tmp: str) -> dict:
    from engine.checkpoint import CheckpointError, export_fp32
    from engine.config import ConfigError
    from engine.parallel import lr_multiplier
    from engine.train import Trainer, TrainingDiverged

    tmp = Path(tmp)
    out: dict = {}

    def make(name: str, **run) -> Trainer:
        cfg = tiny_cfg(tmp / name, 2, **run)
        return Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6))

    # 1. crafted pickles: in the optimizer states (resume) and the model states (export)
    t = make("crafted", steps=2)
    t.fit()
    t.close()
    tag = tmp / "crafted" / "checkpoints" / "step_00000002"
    (tag / "extra_rank0.pt").write_bytes(pickle.dumps(_Exploit(tmp / "pwned_extra")))  # never read
    good = make("crafted", steps=2)
    out["resume_ignores_pt_extra"] = good.resume() and not (tmp / "pwned_extra").exists()
    good.close()
    shutil.copy(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp / "optim.bak")
    _craft(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp / "pwned_resume")
    _remark(tag)  # a crafted checkpoint would come with a matching completion marker
    t = make("crafted", steps=2)
    try:
        out["resume_crafted"] = f"resume returned {t.resume()}"
    except CheckpointError as err:
        out["resume_crafted"] = str(err)
    out["pwned_resume"] = (tmp / "pwned_resume").exists()
    t.close()
    _craft(tag / "mp_rank_00_model_states.pt", tmp / "pwned_export")
    _remark(tag)
    try:
        export_fp32(tag, tmp / "x.safetensors")
        out["export_crafted"] = "exported"
    except CheckpointError as err:
        out["export_crafted"] = str(err)
    out["pwned_export"] = (tmp / "pwned_export").exists()

    # 3. disk full while saving: a clear message naming the intact checkpoint (a fake ENOSPC from
    # torch.save, which DeepSpeed writes with; test_real_failures.py fills a real filesystem)
    t = make("full", steps=4, ckpt_every=2)
    t.fit(steps=2)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save, torch.save = torch.save, no_space
    try:
        t.fit()
        out["disk_full"] = "saved"
    except CheckpointError as err:
        out["disk_full"] = str(err)
    finally:
        torch.save = real_save
    t.close()

    # 7. a new lr on resume is applied from the resumed step on, and recorded
    t = make("lr", steps=5, ckpt_every=3)
    t.fit(steps=3)
    t.close()
    cfg = tiny_cfg(tmp / "lr", 2, steps=5)
    cfg.optim.lr = 1e-2
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6))
    t.resume()
    out["lr_after_resume"] = [e.lr for e in t.fit()]
    out["lr_expected"] = [1e-2 * lr_multiplier(s, 2, 5, 1e-5 / 1e-2) for s in (3, 4)]
    t.close()
    cfg.data.batch_size = 2  # a change that cannot be applied is refused
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6))
    try:
        t.resume()
        out["batch_change"] = "resumed"
    except ConfigError as err:
        out["batch_change"] = str(err)
    t.close()

    # 4. a checkpoint of another vocabulary is refused on resume
    t = make("vocab", steps=2)
    t.dataset_meta = {"vocab": "a.tsv", "vocab_size": V, "vocab_sha256": "aaaa"}
    t.fit()
    t.close()
    t = make("vocab", steps=2)
    t.dataset_meta = {"vocab": "b.tsv", "vocab_size": V, "vocab_sha256": "bbbb"}
    try:
        t.resume()
        out["vocab_change"] = "resumed"
    except CheckpointError as err:
        out["vocab_change"] = str(err)
    t.close()

    # 4b. ... and a checkpoint of the same vocabulary labelled by another labeler
    catlip2 = {"name": "catlip-2", "pos_filter": True, "senses_sha256": "cc" * 32}
    t = make("labeler", steps=2)
    t.dataset_meta = {"vocab": "a.tsv", "vocab_size": V, "vocab_sha256": "aaaa", "labeler": catlip2}
    t.fit()
    t.close()
    t = make("labeler", steps=2)
    t.dataset_meta = {"vocab": "a.tsv", "vocab_size": V, "vocab_sha256": "aaaa", "pos_filter": True}
    try:
        t.resume()
        out["labeler_change"] = "resumed"
    except CheckpointError as err:
        out["labeler_change"] = str(err)
    t.close()

    # 8. a diverged run (DeepSpeed skips every overflowing step) stops instead of reporting success
    cfg = tiny_cfg(tmp / "lr1e10", 2, steps=30, max_skipped_steps=3)
    cfg.optim.lr = 1e10
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 1, 6))
    try:
        t.fit()
        out["overflow"] = "finished"
    except TrainingDiverged as err:
        out["overflow"] = str(err)
    out["overflow_trained"], out["overflow_skipped"] = t.step, t.engine.skipped_steps
    t.close()
    return out


@pytest.mark.distributed
def test_failures_in_one_process(tmp_path):
    (r,) = run_ranks(_one_rank, world=1, tmp=str(tmp_path))
    assert r["resume_ignores_pt_extra"]
    assert "refused to load" in r["resume_crafted"] and "optim_states" in r["resume_crafted"]
    assert "refused to load" in r["export_crafted"] and "model_states" in r["export_crafted"]
    assert not r["pwned_resume"] and not r["pwned_export"]
    assert r["disk_full"].startswith("disk full at ") and "step_00000002 is intact" in r["disk_full"]
    np.testing.assert_allclose(r["lr_after_resume"], r["lr_expected"], rtol=1e-12)
    assert "data.batch_size 4 -> 2" in r["batch_change"]
    assert "a.tsv" in r["vocab_change"] and "b.tsv" in r["vocab_change"]
    assert "labelled by catlip-2 (sense table cccccccccccc)" in r["labeler_change"], r["labeler_change"]
    assert "by catlip-1: labels of different labelers do not mix" in r["labeler_change"]
    assert "skipped 4 optimizer steps in a row" in r["overflow"], r["overflow"]
    assert r["overflow_trained"] < 5 and r["overflow_skipped"] >= 4


# ------------------------------------------------------------------------------ two ranks
def _two_ranks(rank: int, tmp: str) -> dict:
    import torch.distributed as dist

    from engine.train import Trainer

    tmp = Path(tmp)
    out: dict = {}
    cfg = tiny_cfg(tmp, 2, steps=4, ckpt_every=2)
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 2, 6))
    t.fit(steps=2)
    ckpts = tmp / "checkpoints"
    # rank 1's save of step 4 is slow: while it writes, rank 0 (done, waiting in the barrier)
    # must not have marked step 4 complete nor moved `latest` to it
    seen: dict = {}
    if rank == 1:  # slow inside DeepSpeed's save, after its own start barrier: rank 0 is done
        real = t.engine.checkpoint_engine.save

        def slow(state, path):
            if "optim_states" in str(path):
                time.sleep(6)
            return real(state, path)

        t.engine.checkpoint_engine.save = slow
    else:

        def look() -> None:
            time.sleep(3)
            seen["marker"] = (ckpts / "step_00000004" / "complete.json").exists()
            seen["latest"] = (ckpts / "latest").read_text()

        threading.Thread(target=look, daemon=True).start()
    t.fit()
    t.close()
    out["seen"] = seen
    # a crash mid-save: step 4's tag without rank 1's optimizer file and no marker, while
    # `latest` (as DeepSpeed would have written it) names it
    if rank == 0:
        tag4 = ckpts / "step_00000004"
        (tag4 / "complete.json").unlink()
        (tag4 / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
        (ckpts / "latest").write_text("step_00000004")
    dist.barrier()
    messages: list[str] = []
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 2, 6), log=messages.append)
    out["resumed"], out["step"] = t.resume(), t.step
    out["messages"] = messages
    t.close()
    if rank == 0:  # an empty pointer: said, and the newest complete checkpoint is used
        (ckpts / "latest").write_text("")
    dist.barrier()
    empty: list[str] = []
    t = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 2, 6), log=empty.append)
    out["empty_latest"] = (t.resume(), t.step, any("is empty" in m for m in empty))
    t.close()
    return out


@pytest.mark.distributed
def test_checkpoints_complete_before_latest_and_resume_falls_back(tmp_path):
    results = run_ranks(_two_ranks, world=2, tmp=str(tmp_path))
    assert results[0]["seen"] == {"marker": False, "latest": "step_00000002"}
    for r in results:
        assert r["resumed"] and r["step"] == 2
    assert results[0]["empty_latest"] == (True, 2, True)
    text = "\n".join(results[0]["messages"])
    assert "names step_00000004, which is missing or incomplete" in text
    assert "skipping step_00000004: incomplete" in text


# ------------------------------------------------------------------------------ a failing rank
def _bad_label_shards(root: Path, photos: Path) -> Path:
    """16 photos; the 8 of rank 1's half carry a label outside the 50-synset vocabulary."""
    from engine.packing import ShardWriter

    out = root / "bad"
    writer = ShardWriter(out, 16)
    for i, image in enumerate(sorted(photos.glob("*.jpg"))[:16]):
        labels = [1, 2] if i < 8 else [7, 999_999]
        writer.write(f"s{i:02d}", [("jpg", image.read_bytes()), ("lbl", np.asarray(labels, "<i4").tobytes())])
    writer.close()
    meta = {"samples": 16, "vocab_size": 50, "shard_names": writer.names}
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_a_failing_rank_ends_the_job_within_seconds(tmp_path, shared_data):
    shards = _bad_label_shards(tmp_path, shared_data / "coco_photos")
    cmd = [
        sys.executable, "-m", "engine.launch", "--nproc_per_node=2",
        "-m", "engine.train", "--set", "model.image_size=32", "--set", f"data.train={shards}",
        "--set", "data.batch_size=4", "--set", "data.num_threads=1", "--set", "parallel.precision=fp32",
        "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "run.steps=20", "--set", "run.resume=never",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert (
        "sample s" in proc.stderr and "label id 999999" in proc.stderr and "shard-000000.tar" in proc.stderr
    )
    assert elapsed < 120, f"the job took {elapsed:.0f} s to end (the gloo timeout is 600 s)"


# ------------------------------------------------------------------------------ messages
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0", "optim.lr must be > 0"),
        ("run.log_every=0", "run.log_every must be >= 1"),
        ("data.scale=[0.9, 0.2]", "data.scale must be [min, max]"),
        ("model.pos_interp=linear", "model.pos_interp must be one of .*got 'linear'"),
    ],
)
def test_bad_settings_are_named(override, message):
    from engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_missing_or_mismatched_shards_are_named(tmp_path):
    from engine.config import ConfigError, from_dict
    from engine.data import loaders_from_config

    cfg = from_dict({"data": {"train": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="data.train: .*nowhere has no dataset.json"):
        loaders_from_config(cfg, 0, 1, 32, False)
    for name, sha in (("train", "aaaa"), ("val", "bbbb")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(json.dumps({"vocab_size": 50, "vocab_sha256": sha}))
    cfg = from_dict({"data": {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")}})
    with pytest.raises(ConfigError, match="different vocabularies"):
        loaders_from_config(cfg, 0, 1, 32, False)


def test_missing_resume_path_is_named(tmp_path):
    from engine.checkpoint import Checkpointer, CheckpointError

    unused = Checkpointer.__new__(Checkpointer)  # the path is checked before anything is loaded
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        unused.resume(tmp_path / "step_00000007", loader=None)


def test_safe_load_refuses_pickled_code_and_loads_tensors(tmp_path):
    from engine.checkpoint import CheckpointError, safe_load

    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(safe_load(tmp_path / "ok.pt")["w"], torch.ones(2))
    _craft(tmp_path / "bad.pt", tmp_path / "pwned")
    with pytest.raises(CheckpointError, match="refused to load"):
        safe_load(tmp_path / "bad.pt")
    assert not (tmp_path / "pwned").exists()


def test_samples_missing_a_member_are_counted(tmp_path, shared_data):
    from engine.data import make_loader
    from engine.packing import ShardWriter

    writer = ShardWriter(tmp_path, 8)
    for i, image in enumerate(sorted((shared_data / "coco_photos").glob("*.jpg"))[:8]):
        members = [("jpg", image.read_bytes())]
        if i != 5:  # sample 5 has no .lbl: DALI's reader skips it
            members.append(("lbl", np.asarray([1], "<i4").tobytes()))
        writer.write(f"s{i}", members)
    writer.close()
    meta = {"samples": 8, "vocab_size": 5, "shard_names": writer.names}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    loader = make_loader(
        tmp_path, 2, train=False, image_size=32, num_threads=1, expected_samples=8, device="cpu"
    )
    assert loader.samples == 7 and loader.counters()["missing_members"] == 1


def test_empty_caption_file_and_duplicate_wnid_are_errors(tmp_path, nltk_ready, capsys):
    from catlip.labels import Vocabulary, VocabularyError
    from engine.cli import main

    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(SystemExit, match="no captions in them, so the vocabulary would be empty"):
        main(
            [
                "vocab",
                "--captions",
                str(tmp_path / "empty.tsv"),
                "--out",
                str(tmp_path / "v.tsv"),
                "--workers",
                "1",
            ]
        )
    assert not (tmp_path / "v.tsv").exists()
    rows = [
        "index\twnid\tsynset\tlemma\tcount",
        "0\tn02084071\tdog.n.01\tdog\t3",
        "1\tn02084071\tdog.n.01\tdog\t3",
    ]
    (tmp_path / "dup.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(VocabularyError, match="duplicate wnid n02084071 at line 3 \\(first at line 2\\)"):
        Vocabulary.load(tmp_path / "dup.tsv")


@pytest.mark.slow
def test_main_job_keeps_earlier_runs_and_resumes_in_place(tmp_path, shared_data):
    runs = tmp_path / "runs"
    # the transfer steps (4-6) at a few steps too: this test is about the run folders
    env = {
        **os.environ,
        "CATLIP_RUNS": str(runs),
        "CATLIP_TRANSFER_SET": "--set run.steps=4 --set run.eval_every=2 --set optim.warmup_steps=1",
    }

    def main_job(*args: str) -> str:
        cmd = ["bash", "scripts/run_main.sh", "--set", "run.steps=2", "--set", "run.log_every=1", *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    first = main_job()
    assert "main job summary" in first and "zero-shot synset readout" in first
    (run,) = [p for p in runs.iterdir() if p.name != "latest"]
    assert (runs / "latest").resolve() == run.resolve()
    out = main_job("--set", "run.steps=3", "--set", "run.resume=auto")  # deleted everything before
    assert f"continuing the newest run in {runs}/{run.name}" in out and "reused" in out
    assert "resumed from" in out and "at step 2" in out
    assert [p for p in runs.iterdir() if p.name != "latest"] == [run]
    tags = sorted(p.name for p in (run / "train" / "checkpoints").glob("step_*"))
    assert tags == ["step_00000002", "step_00000003"]


def test_odd_length_label_member_names_the_sample(tmp_path, shared_data):
    from engine.data import DataError, make_loader
    from engine.packing import ShardWriter

    writer = ShardWriter(tmp_path, 8)
    for i, image in enumerate(sorted((shared_data / "coco_photos").glob("*.jpg"))[:6]):
        lbl = np.asarray([1, 2], "<i4").tobytes()
        writer.write(f"s{i}", [("jpg", image.read_bytes()), ("lbl", lbl[:5] if i == 3 else lbl)])
    writer.close()
    with pytest.raises(
        DataError, match=r"shard-000000.tar: sample s3: its .lbl has 5 bytes, not a multiple of 4"
    ):
        make_loader(tmp_path, 2, train=False, image_size=32, num_threads=1, device="cpu", num_classes=5)


def test_a_label_id_listed_twice_names_the_shard_and_sample(tmp_path, shared_data):
    from engine.data import DataError, make_loader
    from engine.packing import ShardWriter

    writer = ShardWriter(tmp_path, 8)
    for i, image in enumerate(sorted((shared_data / "coco_photos").glob("*.jpg"))[:4]):
        labels = [1, 3, 3] if i == 2 else [1, 3]  # the loss would stop on "duplicate label ids in row 2"
        writer.write(f"s{i}", [("jpg", image.read_bytes()), ("lbl", np.asarray(labels, "<i4").tobytes())])
    writer.close()
    loader = make_loader(tmp_path, 4, train=False, image_size=32, num_threads=1, device="cpu", num_classes=5)
    with pytest.raises(
        DataError, match=r"shard-000000.tar: sample s2 lists label id 3 twice: its .lbl member is corrupt"
    ):
        next(iter(loader))
