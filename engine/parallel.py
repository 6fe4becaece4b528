"""The "parallelize" step (torchtitan's term): what turns a plain model into a training engine.

After the objective has built the model (pure PyTorch, identical on every rank), this applies, in
order: activation checkpointing, ``torch.compile`` (``parallel.compile``), and DeepSpeed:
``deepspeed.initialize`` with ZeRO stage 0-3, precision, AdamW, gradient clipping and accumulation,
and the warmup + cosine learning-rate schedule (the DeepSpeed config, with a user's own file merged
under it: engine/ds_config.py). Nothing here knows which objective is trained.
``build_model`` builds a model under ``deepspeed.zero.Init`` for ZeRO-3, partitioned as it is
constructed (the trainer's ``parallel.zero_init``; perf/bench_zero3.py runs ViT-H with it). What a
resumed run may change is engine/resume.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.config import TrainConfig
from engine.ds_config import deepspeed_config, use_bf16  # noqa: F401 - use_bf16: the trainer's
from engine.errors import ConfigError


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from ~0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(model_fn: Callable[[], nn.Module], cfg: TrainConfig, world_size: int) -> nn.Module:
    """``model_fn()``; under ZeRO-3 inside ``deepspeed.zero.Init``, so that no rank ever holds the
    whole model: each module's parameters are partitioned as its ``__init__`` returns.

    An initialisation that reaches parameters already partitioned (a parent's ``reset_parameters``
    over its blocks, as catlip.models.VisionTransformer's) would find them empty; here each such
    parameter is gathered when first touched, written on rank 0 and re-partitioned (broadcast)
    when the next is touched. At most one whole parameter exists beyond the partitions, and the
    weights are the ones the same seed gives without zero.Init (same draws, same order).
    Not covered: code after ``model_fn`` that reads parameter shapes (``p.ndim`` is 1 once
    partitioned; ``p.ds_shape`` is the real one) or loads a state dict into the model.
    """
    if cfg.parallel.zero_stage != 3:
        return model_fn()
    import deepspeed

    gather = _GatherOnTouch()
    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, world_size)):
        try:
            with gather:
                model = model_fn()
        finally:
            gather.release()
    return model


class _GatherOnTouch(TorchFunctionMode):
    """Any op given a partitioned ZeRO-3 parameter gathers it first (modifier rank 0); the one
    gathered before is re-partitioned then, so they are held one at a time."""

    def __init__(self) -> None:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        super().__init__()
        self._absent = ZeroParamStatus.NOT_AVAILABLE
        self._held: Any = None  # the open deepspeed.zero.GatheredParameters

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(func, "__name__", "__").startswith("__"):  # not a getter/setter (p.data = ...)
            for t in (*args, *kwargs.values()):
                if getattr(t, "ds_status", None) == self._absent:
                    import deepspeed

                    self.release()
                    self._held = deepspeed.zero.GatheredParameters([t], modifier_rank=0)
                    self._held.__enter__()
                    break
        return func(*args, **kwargs)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block in the backward: every submodule with a
    ``grad_checkpointing`` switch (timm's convention) turns it on. Returns how many did."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = True
            switched += 1
    return switched


def apply_compile(model: nn.Module, cfg: TrainConfig) -> int:
    """``torch.compile`` each transformer block in place (torchtitan's per-block compile: one
    graph reused by every layer; parameter names and checkpoints are unchanged). ZeRO-3 is
    refused: its per-module parameter gathering hooks would break every compiled graph."""
    if cfg.parallel.zero_stage == 3:
        raise ConfigError("parallel.compile with parallel.zero_stage 3 is not supported (use stage 0-2)")
    from catlip.models import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


def parallelize(model: nn.Module, cfg: TrainConfig, world_size: int, param_groups: list[dict]):
    """Checkpointing, compile and DeepSpeed applied to ``model``: returns (engine, scheduler)."""
    import deepspeed

    if cfg.parallel.grad_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.parallel.compile:
        apply_compile(model, cfg)
    total, min_ratio = cfg.run.steps, cfg.optim.min_lr / cfg.optim.lr
    for group in param_groups:  # layer-wise lr decay: the schedule multiplies each group's own rate
        if "lr_scale" in group:
            group["lr"] = cfg.optim.lr * group["lr_scale"]

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, cfg.optim.warmup_steps, total, min_ratio)
        )

    engine, _, _, sched = deepspeed.initialize(
        model=model,
        model_parameters=param_groups,
        config=deepspeed_config(cfg, world_size),
        lr_scheduler=scheduler,
    )
    return engine, sched


def partition_report(engine: Any, zero_stage: int) -> str:
    """How many parameters each rank holds (ZeRO-3 partitions them; the others hold all)."""
    import torch.distributed as dist

    params = list(engine.module.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    held = torch.tensor([sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)])
    counts = [torch.zeros_like(held) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, held)
    per_rank = ", ".join(f"rank {r}: {int(c):,}" for r, c in enumerate(counts))
    return f"ZeRO-{zero_stage}: {full:,} parameters; held per rank: {per_rank}"
