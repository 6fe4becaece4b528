"""What a resumed run may change: the resume policy, beside the checkpointer (engine/checkpoint.py).

A checkpoint carries the run config it was saved with. Resuming with another config applies the
optimizer and schedule settings given now (``apply_hyperparameters``); the settings that shape the
model, the data position or the partitions (``FIXED_ON_RESUME``) cannot change, and a run that
changes one is refused with the keys named. A checkpoint saved before keys moved to other
sections (engine.config.MOVED) is compared under the new names.
"""

from __future__ import annotations

from typing import Any

from engine.config import TrainConfig, with_new_keys
from engine.errors import ConfigError

# Settings a resumed run cannot change: they shape the model, the data position or the partitions.
FIXED_ON_RESUME = (
    "objective.name", "model.name", "model.image_size", "model.pos_interp", "data.train", "data.batch_size",
    "data.max_labels", "optim.grad_accum", "optim.layer_decay", "parallel.zero_stage", "parallel.sub_group_size",
)  # fmt: skip

# What a resume on another world size changes, the global batch kept.
RESHARD_MAY_CHANGE = ("data.batch_size", "optim.grad_accum")


def _flat(cfg: dict) -> dict[str, Any]:
    return {
        f"{s}.{k}": v for s, section in cfg.items() if isinstance(section, dict) for k, v in section.items()
    }


def apply_hyperparameters(
    engine: Any, scheduler: Any, cfg: TrainConfig, saved: dict, resharded: bool = False
) -> list[str]:
    """After a resume: the optimizer and schedule settings given now replace the checkpoint's
    (lr, min_lr, warmup, steps, betas, eps, weight decay; the schedule continues from the resumed
    step under the new settings); a change that cannot be applied is refused. Returns what changed.
    ``resharded``: the checkpoint was written by another number of ranks, and the per-rank batch
    and accumulation may change with the global batch kept (engine.reshard.keep_global_batch)."""
    now, before = _flat(cfg.to_dict()), _flat(with_new_keys(saved))  # a checkpoint from before the keys moved
    changed = {
        k: (before[k], v)
        for k, v in now.items()
        if k in before and k != "run.resume" and _norm(before[k]) != _norm(v)
    }
    fixed = [k for k in changed if k in FIXED_ON_RESUME and not (resharded and k in RESHARD_MAY_CHANGE)]
    if fixed:
        shown = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed)
        raise ConfigError(f"cannot resume with changed {shown}: start a new run (or restore the settings)")
    o = cfg.optim
    groups = engine.optimizer.param_groups  # as catlip.param_groups.param_groups: decayed / not decayed
    for group in groups:  # (per depth, with its lr_scale, under layer-wise lr decay)
        group.update(betas=tuple(o.betas), eps=o.eps, initial_lr=o.lr * group.get("lr_scale", 1.0))
        if group["weight_decay"]:  # the decayed group (norms, biases and embeddings stay at 0)
            group["weight_decay"] = o.weight_decay
    scheduler.base_lrs = [g["initial_lr"] for g in groups]
    rates = [
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(groups, rates, strict=True):
        group["lr"] = lr
    scheduler._last_lr = rates  # what get_last_lr() reports for the next step
    return [f"{k}: {a!r} -> {b!r} (applied)" for k, (a, b) in changed.items()]


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value
