"""optim.reference_batch and optim.lr_scaling (engine/scaling.py): the arithmetic of each mode, the
line a run prints, the warning for a far global batch with the rule unset, the config checks, and a
real DeepSpeed run on 2 gloo ranks whose optimizer uses the scaled rates, also after a resume, and
the command-line run on real shards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_utils import run_ranks

from engine.config import ConfigError, from_dict
from engine.parallel import lr_multiplier
from engine.scaling import global_batch, scale_for_batch

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(batch: int = 256, accum: int = 1, steps: int = 200_000, **optim):
    optim = {"lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10_000, "grad_accum": accum, **optim}
    return from_dict({"data": {"batch_size": batch}, "optim": optim, "run": {"steps": steps}})


@pytest.mark.parametrize(
    ("mode", "f", "warmup"),
    [("linear", 1 / 32, 320_000), ("sqrt", 1 / math.sqrt(32), 320_000), ("none", 1.0, 10_000)],
)
def test_each_mode_scales_lr_min_lr_and_warmup(mode, f, warmup):
    cfg = cfg_for(reference_batch=65_536, lr_scaling=mode)
    scaled, _ = scale_for_batch(cfg, world_size=8)  # 256 x 8 x 1 = 2,048 = reference / 32
    o = scaled.optim
    assert o.lr == pytest.approx(1e-3 * f, rel=1e-12) and o.min_lr == pytest.approx(1e-5 * f, rel=1e-12)
    assert o.warmup_steps == warmup
    assert o.weight_decay == cfg.optim.weight_decay  # decoupled AdamW decay: per step, not scaled
    assert o.reference_batch == 2_048 and o.lr_scaling == mode  # the recorded config scales no more
    again, _ = scale_for_batch(scaled, world_size=8)
    assert (again.optim.lr, again.optim.warmup_steps) == (o.lr, o.warmup_steps)
    assert cfg.optim.lr == 1e-3  # the given config is left as it was


def test_global_batch_counts_ranks_and_accumulation_and_larger_batches_scale_up():
    cfg = cfg_for(batch=512, accum=4, reference_batch=8_192, lr_scaling="linear")
    assert global_batch(cfg, 16) == 32_768
    o = scale_for_batch(cfg, 16)[0].optim  # 4x the reference
    assert (o.lr, o.warmup_steps) == (pytest.approx(4e-3), 2_500)
    o = scale_for_batch(cfg_for(reference_batch=2_048, warmup_steps=1, lr_scaling="sqrt"), 64)[0].optim
    assert o.warmup_steps == 1 and o.lr == pytest.approx(1e-3 * math.sqrt(8))  # a warmup stays >= 1
    assert scale_for_batch(cfg_for(reference_batch=512, warmup_steps=0), 64)[0].optim.warmup_steps == 0


def test_no_reference_batch_scales_nothing():
    cfg = cfg_for()
    assert scale_for_batch(cfg, 64) == (cfg, [])
    assert scale_for_batch(cfg_for(lr_scaling="none"), 64) == (cfg_for(lr_scaling="none"), [])


def test_the_printed_line_names_both_batches_and_both_rates():
    _, lines = scale_for_batch(cfg_for(batch=256, accum=2, reference_batch=65_536, lr_scaling="linear"), 8)
    assert lines == [
        "lr scaling (linear, optim.lr_scaling): global batch 4,096 (per-GPU 256 x 8 GPUs x grad_accum 2) "
        "against optim.reference_batch 65,536: lr 0.001 -> 6.25e-05, min_lr 1e-05 -> 6.25e-07, "
        "warmup 10,000 -> 160,000 steps; weight decay 0.2 (decoupled: not scaled)"
    ]
    _, lines = scale_for_batch(cfg_for(reference_batch=4_096), 8)  # unset, within 2x: sqrt, no warning
    assert len(lines) == 1 and lines[0].startswith("lr scaling (sqrt, the default: optim.lr_scaling unset)")


def warnings_for(world: int, **optim) -> list[str]:
    _, lines = scale_for_batch(cfg_for(batch=256, steps=10**9, **optim), world)
    return [line for line in lines if line.startswith("warning:")]


def test_a_far_batch_with_the_rule_unset_is_warned_of():
    # reference 8,192: 4 GPUs (1,024) and 128 GPUs (32,768) are 8x and 4x away
    (small,) = warnings_for(4, reference_batch=8_192)
    assert "global batch 1,024 is 8x smaller than optim.reference_batch 8,192" in small
    assert "optim.lr_scaling is unset: scaled by the default (sqrt)" in small
    (large,) = warnings_for(128, reference_batch=8_192)
    assert "32,768 is 4x larger" in large
    # within 2x (2x itself included), or the rule given: no warning
    for world in (16, 32, 48, 64):  # 4,096 .. 16,384
        assert warnings_for(world, reference_batch=8_192) == []
    for mode in ("linear", "sqrt", "none"):
        assert warnings_for(4, reference_batch=8_192, lr_scaling=mode) == []
        assert warnings_for(128, reference_batch=8_192, lr_scaling=mode) == []


def test_a_warmup_past_the_last_step_is_warned_of():
    _, lines = scale_for_batch(cfg_for(reference_batch=65_536, lr_scaling="linear"), 8)
    assert lines[-1] == (
        "warning: the warmup (320,000 steps at this global batch) is not shorter than run.steps (200,000): "
        "the run ends before the peak lr"
    )


def test_config_checks():
    with pytest.raises(ConfigError, match=r"optim.lr_scaling must be one of \('linear', 'sqrt', 'none'\)"):
        cfg_for(reference_batch=512, lr_scaling="cubic")
    with pytest.raises(ConfigError, match="optim.lr_scaling linear needs optim.reference_batch"):
        cfg_for(lr_scaling="linear")
    with pytest.raises(ConfigError, match="optim.reference_batch must be >= 1"):
        cfg_for(reference_batch=0)
    with pytest.raises(ConfigError, match="optim.reference_batch: expected int"):
        cfg_for(reference_batch="65k")


# ------------------------------------------------------------------ a real run on 2 gloo ranks
V, B, STEPS = 20, 4, 6


def _scaled_run(rank: int, tmp: str) -> dict:
    from catlip.models import CatLIPModel, ViTConfig
    from engine.data import TensorLoader
    from engine.train import Trainer

    cfg = from_dict(
        {
            "model": {"name": "vit_tiny", "image_size": 16},
            "data": {"batch_size": B},
            # the run's global batch is 4 x 2 ranks = 8: a quarter of the reference
            "optim": {
                "lr": 4e-3,
                "min_lr": 4e-5,
                "warmup_steps": 1,
                "reference_batch": 32,
                "lr_scaling": "linear",
            },
            "parallel": {"zero_stage": 2, "precision": "fp32"},
            "checkpoint": {"every": 0},
            "run": {"out_dir": tmp, "steps": STEPS, "log_every": 1},
        }
    )

    def model():
        torch.manual_seed(0)
        return CatLIPModel(ViTConfig(image_size=16, patch_size=8, width=32, depth=2, heads=2), V)

    g = torch.Generator().manual_seed(rank)
    batches = [
        {
            "image": torch.randn(B, 3, 16, 16, generator=g),
            "labels": torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(B)]),
        }
        for _ in range(STEPS)
    ]
    lines: list[str] = []
    stepped: list[list[float]] = []  # each group's rate as torch's AdamW steps with it
    logged: list[tuple[int, float]] = []

    def trainer() -> Trainer:
        t = Trainer(cfg, model_fn=model, train_loader=TensorLoader(batches), log=lines.append)
        adamw = getattr(t.engine.optimizer, "optimizer", t.engine.optimizer)  # under ZeRO's wrapper
        adamw.register_step_pre_hook(lambda opt, a, k: stepped.append([g["lr"] for g in opt.param_groups]))
        return t

    first = trainer()  # 3 steps, saved; then a new trainer resumes from that checkpoint and ends the run
    logged += [(e.step, e.lr) for e in first.fit(steps=3)]
    first.close()
    resumed = trainer()
    assert resumed.resume() and resumed.step == 3
    logged += [(e.step, e.lr) for e in resumed.fit()]
    resumed.close()
    return {"lines": lines, "logged": logged, "stepped": stepped, "optim": resumed.cfg.optim}


@pytest.mark.distributed
def test_a_real_run_steps_at_the_scaled_rate(tmp_path):
    result, _ = run_ranks(_scaled_run, world=2, tmp=str(tmp_path))
    lr, min_lr, warmup = 4e-3 / 4, 4e-5 / 4, 4  # linear, a quarter of the reference batch
    assert result["lines"][0].startswith(
        "lr scaling (linear, optim.lr_scaling): global batch 8 (per-GPU 4 x 2 GPUs x grad_accum 1) "
        "against optim.reference_batch 32: lr 0.004 -> 0.001, min_lr 4e-05 -> 1e-05, warmup 1 -> 4 steps"
    )
    assert sum(line.startswith("lr scaling") for line in result["lines"]) == 2  # each trainer's
    assert not [line for line in result["lines"] if line.startswith(("resume:", "warning:"))]
    o = result["optim"]  # the recorded config: scaled, and its own global batch as the reference
    assert (o.lr, o.min_lr, o.warmup_steps, o.reference_batch) == (lr, min_lr, warmup, 8)
    # the rate each step used (the schedule over the scaled peak and warmup), as the log has it
    expected = [lr * lr_multiplier(s, warmup, STEPS, min_lr / lr) for s in range(STEPS)]
    assert [s for s, _ in result["logged"]] == list(range(1, STEPS + 1))
    assert [r for _, r in result["logged"]] == pytest.approx(expected, rel=1e-9)
    # and the rate torch's AdamW itself stepped with, in both groups (decayed, not decayed; ZeRO-2
    # steps them one at a time)
    stepped = [r for rates in result["stepped"] for r in rates]
    assert stepped == pytest.approx([r for r in expected for _ in range(2)], rel=1e-9)


@pytest.mark.distributed
def test_the_command_line_run_prints_the_line_and_records_the_scaled_rates(tmp_path, packed_photos):
    """`python -m engine.train` on real shards (DALI, one CPU rank): the line and the warning on
    stdout, the rates in config.json and log.jsonl."""
    out = tmp_path / "run"
    sets = [
        f"data.train={packed_photos}", "data.val=null", "data.batch_size=16", f"run.out_dir={out}",
        "run.steps=2", "run.log_every=1", "checkpoint.every=0", "optim.reference_batch=128",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "engine.train", "--config", "configs/coco_tiny_cpu.yaml"]
    proc = subprocess.run(
        [*cmd, *(a for s in sets for a in ("--set", s))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = 2e-3 * math.sqrt(16 / 128)  # the config's 2e-3 for 128, at 16 x 1 x 1, by sqrt
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("lr scaling", "warning:"))]
    assert lines[0].startswith("lr scaling (sqrt, the default: optim.lr_scaling unset): global batch 16 ")
    assert f"lr 0.002 -> {lr:.4g}, min_lr 1e-05 -> {1e-5 * lr / 2e-3:.4g}, warmup 30 -> 240 steps" in lines[0]
    assert lines[1].startswith("warning: global batch 16 is 8x smaller than optim.reference_batch 128")
    used = json.loads((out / "config.json").read_text())["optim"]
    assert (used["lr"], used["warmup_steps"], used["reference_batch"]) == (pytest.approx(lr), 240, 16)
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s["lr"] for s in steps] == pytest.approx(
        [lr * lr_multiplier(s, 240, 2, 1e-5 / 2e-3) for s in (0, 1)]
    )
