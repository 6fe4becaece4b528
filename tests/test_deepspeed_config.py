"""The DeepSpeed config a run hands to DeepSpeed (engine/ds_config.py): the Adam picked by device, a
user's DeepSpeed file (``parallel.deepspeed_config``) merged under the engine's settings, and the
merged keys as DeepSpeed itself parsed them in a real 2-rank run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from dist_utils import run_ranks

from engine.config import ConfigError, TrainConfig, from_dict, load_config
from engine.ds_config import deepspeed_config, engine_config, merge_user_config, read_user_config

SOURCE = "parallel.deepspeed_config ds.json"


def _cfg(**parallel) -> TrainConfig:
    return from_dict({"data": {"batch_size": 4}, "parallel": {"zero_stage": 2, **parallel}})


# ------------------------------------------------------------------------------ Adam by device
def test_fused_adam_on_cuda_torch_adam_on_cpu_and_with_offload() -> None:
    """DeepSpeed's FusedAdam (torch_adam false) on a GPU; torch's AdamW on CPU ranks, and where the
    optimizer states are offloaded to host memory (DeepSpeed's CPU Adam is a C++ op it would build)."""
    adam = {
        (device, offload): deepspeed_config(_cfg(offload_optimizer=offload), 8, device)["optimizer"]
        for device in ("cuda", "cpu")
        for offload in ("none", "cpu")
    }
    assert adam["cuda", "none"] == {
        "type": "AdamW",
        "params": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": False},
    }
    assert adam["cpu", "none"]["params"]["torch_adam"] is True
    assert adam["cuda", "cpu"]["params"]["torch_adam"] is True
    assert adam["cpu", "cpu"]["params"]["torch_adam"] is True
    # by default, where this process trains (this machine has no GPU)
    assert deepspeed_config(_cfg(), 1)["optimizer"]["params"]["torch_adam"] is True


# ------------------------------------------------------------------------------ merging
def test_a_users_keys_are_added_at_every_depth_and_the_engines_kept() -> None:
    engine = engine_config(_cfg(), 2, "cuda")
    user = {
        "comms_logger": {"enabled": True, "verbose": False},
        "flops_profiler": {"enabled": True, "profile_step": 3},
        "aio": {"block_size": 1048576},
        "zero_optimization": {"overlap_comm": True, "contiguous_gradients": True, "stage": 2},
        "train_micro_batch_size_per_gpu": 4,  # equal to the engine's: not a conflict
        "gradient_clipping": 1,  # 1 == 1.0
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "fused": True}},  # the user's choice
        "wall_clock_breakdown": True,  # the engine's default, the user's to change
    }
    before = json.dumps(engine, sort_keys=True)
    merged = merge_user_config(engine, user, SOURCE)
    assert json.dumps(engine, sort_keys=True) == before  # a copy
    assert merged["comms_logger"] == user["comms_logger"] and merged["aio"] == user["aio"]
    assert merged["flops_profiler"] == user["flops_profiler"]
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}
    assert merged["optimizer"]["params"] == {
        "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True, "fused": True,
    }  # fmt: skip
    assert merged["wall_clock_breakdown"] is True and merged["gradient_clipping"] == 1.0
    assert merged["train_micro_batch_size_per_gpu"] == 4 and merged["bf16"] == {"enabled": False}


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu is 8, but the engine sets 4 (from data.batch_size)"),
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage is 3, but the engine sets 2 (from parallel.zero_stage)"),
        ({"bf16": {"enabled": True}}, "bf16.enabled is True, but the engine sets False (from parallel.precision)"),
        ({"gradient_clipping": 0.5}, "gradient_clipping is 0.5, but the engine sets 1.0 (from optim.grad_clip)"),
        ({"optimizer": {"params": {"betas": [0.9, 0.95]}}}, "optimizer.params.betas is [0.9, 0.95], but the engine sets [0.9, 0.999] (from optim.betas)"),
        ({"optimizer": "Adam"}, "optimizer is 'Adam', but the engine sets {"),
        ({"scheduler": {"type": "WarmupLR"}}, "scheduler is {'type': 'WarmupLR'}, but it is set by optim.warmup_steps"),
        ({"fp16": {"enabled": True}}, "fp16 is {'enabled': True}, but it is set by parallel.precision"),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, "zero_optimization.offload_optimizer is {'device': 'cpu'}, but it is set by parallel.offload_optimizer"),
    ],
)  # fmt: skip
def test_a_key_the_engine_sets_otherwise_is_refused_naming_it_and_both_values(user: dict, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        merge_user_config(engine_config(_cfg(precision="fp32"), 1, "cpu"), user, SOURCE)
    assert str(err.value).startswith(f"{SOURCE}: {said}"), str(err.value)
    assert str(err.value).endswith("(set these in the run config, not in the file)")


def test_every_conflict_is_named_at_once() -> None:
    user = {"zero_optimization": {"stage": 1, "overlap_comm": True}, "gradient_accumulation_steps": 4}
    with pytest.raises(
        ConfigError,
        match=r"stage is 1, .*; gradient_accumulation_steps is 4, but the engine sets 1 \(from optim.grad_accum\)",
    ):
        merge_user_config(engine_config(_cfg(), 1, "cpu"), user, SOURCE)  # fmt: skip


# ------------------------------------------------------------------------------ the file
def test_the_file_is_read_as_json_or_yaml_and_bad_files_are_named(tmp_path: Path) -> None:
    good = tmp_path / "ds.json"
    good.write_text('{"zero_optimization": {"overlap_comm": true}}')
    yml = tmp_path / "ds.yaml"
    yml.write_text("zero_optimization:\n  overlap_comm: true\n")
    assert read_user_config(good) == read_user_config(yml) == {"zero_optimization": {"overlap_comm": True}}
    missing = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=rf"^parallel.deepspeed_config: cannot read {missing} \("):
        read_user_config(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"overlap_comm": true,}}')
    with pytest.raises(ConfigError, match=rf"^parallel.deepspeed_config {bad}:1:45: invalid JSON"):
        read_user_config(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"^parallel.deepspeed_config {listed}: expected a mapping"):
        read_user_config(listed)
    # through the run config: read where the DeepSpeed config is built, errors naming the key
    cfg = load_config(None, [f"parallel.deepspeed_config={missing}"])
    assert cfg.parallel.deepspeed_config == str(missing)
    with pytest.raises(ConfigError, match="^parallel.deepspeed_config: cannot read"):
        deepspeed_config(cfg, 1)
    with pytest.raises(ConfigError, match="parallel.deepspeed_config: a file path, or unset"):
        load_config(None, ["parallel.deepspeed_config=''"])
    with pytest.raises(ConfigError, match="parallel.deepspeed_config: expected str"):
        load_config(None, ["parallel.deepspeed_config=3"])


# ------------------------------------------------------------------------------ a real run
def _run_with_user_file(rank: int, tmp: str, ds_file: str) -> dict:
    from test_train import rank_loader, tiny_model

    from engine.train import Trainer

    cfg = from_dict(
        {
            "model": {"name": "vit_tiny", "image_size": 16},
            "data": {"batch_size": 4},
            "optim": {"lr": 5e-3, "warmup_steps": 1},
            "parallel": {"zero_stage": 2, "precision": "fp32", "deepspeed_config": ds_file},
            "checkpoint": {"every": 0},
            "run": {"out_dir": tmp, "steps": 3, "log_every": 1},
        }
    )
    trainer = Trainer(cfg, model_fn=tiny_model, train_loader=rank_loader(rank, 2, 3))
    losses = [s.loss for s in trainer.fit()]
    engine = trainer.engine
    out = {
        "losses": losses,
        "overlap_comm": engine._config.zero_config.overlap_comm,  # as DeepSpeed parsed it
        "contiguous_gradients": engine._config.zero_config.contiguous_gradients,
        "wall_clock_breakdown": engine.wall_clock_breakdown(),
        "comms_logger": engine.config["comms_logger"],
        "stage": engine.zero_optimization_stage(),
        "optimizer": type(engine.basic_optimizer).__module__ + "." + type(engine.basic_optimizer).__name__,
    }
    trainer.close()
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_a_users_file_reaches_deepspeed_in_a_real_run(tmp_path: Path) -> None:
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(
        json.dumps(
            {
                "zero_optimization": {"overlap_comm": True, "contiguous_gradients": False},
                "wall_clock_breakdown": True,
                "comms_logger": {"enabled": False, "verbose": True},
            }
        )
    )
    results = run_ranks(_run_with_user_file, world=2, tmp=str(tmp_path / "run"), ds_file=str(ds_file))
    for r in results:
        assert r["overlap_comm"] is True and r["contiguous_gradients"] is False, r
        assert r["wall_clock_breakdown"] is True and r["comms_logger"] == {"enabled": False, "verbose": True}
        assert r["stage"] == 2 and r["optimizer"] == "torch.optim.adamw.AdamW", r  # the CPU's Adam
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"]), r
    assert results[0]["losses"] == results[1]["losses"]
