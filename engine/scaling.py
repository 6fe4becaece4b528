"""The learning rate and warmup of a recipe, moved from the global batch it was written for to the
run's (``optim.reference_batch``, ``optim.lr_scaling``; docs/training.md, "Learning rate and batch").

A recipe's ``optim.lr``, ``optim.min_lr`` and ``optim.warmup_steps`` are for its reference global
batch (corenet's CatLIP recipes: 65,536). The run's global batch is ``data.batch_size`` x ranks x
``optim.grad_accum`` (at the base resolution under ``data.multiscale``). With ``k = run / reference``:

    linear   lr and min_lr x k          (Goyal et al. 2017, derived for SGD)
    sqrt     lr and min_lr x sqrt(k)    (Malladi et al. 2022, the SDE scaling rule for Adam) - default
    none     nothing

and, for linear and sqrt, ``warmup_steps / k`` (rounded; at least 1 where it was at least 1): the
warmup covers the same number of samples. ``optim.weight_decay`` is not scaled: AdamW's decay is
decoupled (each step multiplies the weights by ``1 - lr x weight_decay``), per step and not per
sample, and it follows the scaled lr already. ``run.steps`` and ``optim.ema_decay`` are the run's own.

The config a run records (its ``config.json``, its checkpoints) holds the scaled values with
``reference_batch`` set to its own global batch, so that reading it back scales nothing again.
"""

from __future__ import annotations

import dataclasses
import math

from engine.config import TrainConfig

DEFAULT_SCALING = "sqrt"  # for optim.lr_scaling left unset
FAR = 2.0  # a global batch more than this factor from the reference, with lr_scaling unset, is warned of


def global_batch(cfg: TrainConfig, world_size: int) -> int:
    """Images per optimizer step over all ranks (at the base resolution under data.multiscale)."""
    return cfg.data.batch_size * world_size * cfg.optim.grad_accum


def factor(mode: str, run_batch: int, reference_batch: int) -> float:
    """What ``mode`` multiplies the learning rate by for ``run_batch`` against ``reference_batch``."""
    k = run_batch / reference_batch
    return {"linear": k, "sqrt": math.sqrt(k), "none": 1.0}[mode]


def scaled_warmup(mode: str, warmup: int, run_batch: int, reference_batch: int) -> int:
    """The warmup in steps that covers the reference's warmup samples (``mode`` none: unchanged)."""
    if mode == "none" or warmup == 0:
        return warmup
    return max(1, round(warmup * reference_batch / run_batch))


def scale_for_batch(cfg: TrainConfig, world_size: int) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with lr, min_lr and warmup_steps for the run's global batch, and the lines to log
    (one saying what was scaled; warnings, each starting ``warning:``). Without
    ``optim.reference_batch``: ``cfg`` itself and no lines."""
    o = cfg.optim
    if o.reference_batch is None:
        return cfg, []
    run, ref = global_batch(cfg, world_size), o.reference_batch
    mode = o.lr_scaling or DEFAULT_SCALING
    f = factor(mode, run, ref)
    lr, min_lr = o.lr * f, o.min_lr * f
    warmup = scaled_warmup(mode, o.warmup_steps, run, ref)
    how = f"{mode}, {'optim.lr_scaling' if o.lr_scaling else 'the default: optim.lr_scaling unset'}"
    lines = [
        f"lr scaling ({how}): global batch {run:,} (per-GPU {cfg.data.batch_size} x {world_size} "
        f"GPUs x grad_accum {o.grad_accum}) against optim.reference_batch {ref:,}: "
        f"lr {o.lr:.4g} -> {lr:.4g}, min_lr {o.min_lr:.4g} -> {min_lr:.4g}, "
        f"warmup {o.warmup_steps:,} -> {warmup:,} steps; weight decay {o.weight_decay:g} (decoupled: not scaled)"
    ]
    ratio = max(run / ref, ref / run)
    if o.lr_scaling is None and ratio > FAR:
        side = "larger" if run > ref else "smaller"
        lines.append(
            f"warning: global batch {run:,} is {ratio:.3g}x {side} than optim.reference_batch {ref:,} "
            f"and optim.lr_scaling is unset: scaled by the default ({DEFAULT_SCALING}); set "
            "optim.lr_scaling to linear, sqrt or none to choose"
        )
    if warmup >= cfg.run.steps:
        lines.append(
            f"warning: the warmup ({warmup:,} steps at this global batch) is not shorter than run.steps "
            f"({cfg.run.steps:,}): the run ends before the peak lr"
        )
    optim = dataclasses.replace(o, lr=lr, min_lr=min_lr, warmup_steps=warmup, reference_batch=run)
    return dataclasses.replace(cfg, optim=optim), lines
