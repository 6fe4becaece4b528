"""Resume on another world size: a checkpoint written by N ranks, continued on M.

DeepSpeed 0.19's ``load_checkpoint`` refuses ZeRO optimizer states saved by another data-parallel
size ("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not
currently supported"); its universal checkpoint needs an offline conversion of every checkpoint
(``ds_to_universal``, a folder per parameter and state) and does not cover stage 0. This module
consolidates instead, as ``catlip export`` does for the weights: every new rank reads the old
ranks' files and puts each parameter's fp32 master weights, Adam moments (``exp_avg``,
``exp_avg_sq``) and step back together whole, keyed by parameter name (DeepSpeed's
``zero_to_fp32`` layout code, fed the moments' flat partitions as well as the weights'), then
writes them into its own new partitions: ZeRO 1-2 through DeepSpeed's fragment mappings
(``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``, the moments re-linked first:
:func:`link_moments`), ZeRO-3 by copying this rank's slice of each parameter into its partition,
its fp32 copy and its moments (DeepSpeed's ``set_full_hp_param`` reads past the end of a parameter
whose size the new world does not divide). Stage 0 keeps whole states in one file and loads as
usual: in fp32, and in bf16, where DeepSpeed 0.19 wraps the optimizer in its FP16 optimizer in
bf16 (``FP16_UnfusedOptimizer`` around torch's AdamW, ``FP16_Optimizer`` around its FusedAdam),
whose fp32 masters are whole in the model-states file. DeepSpeed's ``BF16_Optimizer`` keeps its
states per rank (``bf16_zero_*_optim_states.pt``); it takes stage 0 only under pipeline
parallelism or without a client optimizer, which this engine never configures, and such a
checkpoint is refused. The LR schedule, DeepSpeed's step counters and the client
state come from rank 0's model-states file. Each new rank holds the whole fp32 model three times
over while it loads (weights and two moments).

The EMA is taken whole (``engine.checkpoint.ema_state``) and, under ZeRO-3, cut into this rank's
partitions. RNG: new rank ``r`` takes old rank ``r``'s states; ranks beyond the old world keep this
run's seeds. The data position is the loader's (``load_resharded``; with multi-scale batches the
draws are regrouped for the new accumulation too). The global batch is kept by the accumulation
(:func:`keep_global_batch`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from engine.errors import ConfigError

MOMENTS = ("exp_avg", "exp_avg_sq")


def written_by(tag: Path) -> int:
    """The number of ranks that wrote a checkpoint tag (one ``extra_rank<R>.json`` each)."""
    return len(list(tag.glob("extra_rank*.json")))


def ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def keep_global_batch(saved: dict, batch: int, old_world: int, new_world: int) -> tuple[int, str]:
    """The accumulation that keeps the global batch (per-rank batch x ranks x accumulation) of a
    checkpoint's config ``saved`` with this run's per-rank ``batch`` on ``new_world`` ranks, and the
    line that says so; a global batch that cannot be kept is refused."""
    from engine.config import with_new_keys

    saved = with_new_keys(saved)  # a checkpoint from before the keys moved
    old_batch, old_accum = int(saved["data"]["batch_size"]), int(saved["optim"]["grad_accum"])
    total = old_batch * old_world * old_accum
    if total % (batch * new_world):
        raise ConfigError(
            f"cannot keep the global batch {total} (data.batch_size {old_batch} x {old_world} ranks x "
            f"optim.grad_accum {old_accum}) on {new_world} ranks with data.batch_size {batch}: "
            f"{batch} x {new_world} does not divide it; set data.batch_size so that it does"
        )
    new_accum = total // (batch * new_world)
    line = (
        f"resume: {ranks(old_world)} -> {ranks(new_world)}; global batch {total} kept: per-rank batch "
        f"{old_batch} -> {batch}, accumulation {old_accum} -> {new_accum}"
    )
    return new_accum, line


def load_engine_state(engine: Any, tag: Path) -> dict[str, Any]:
    """Model, optimizer, LR schedule and step counters of ``tag`` (written by any number of ranks)
    into ``engine``; returns the checkpoint's client state."""
    from engine.checkpoint import CheckpointError, model_states_file, safe_load

    states = safe_load(model_states_file(tag))
    stage = int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    if stage == 0:  # whole states in one file, whatever the world size
        partitioned = sorted(p.name for p in tag.glob("*_optim_states.pt"))
        if partitioned:
            raise CheckpointError(
                f"{tag} was written by {ranks(written_by(tag))} at ZeRO-0 with DeepSpeed's bf16 optimizer, whose "
                f"states are partitioned by rank ({partitioned[0]}, ...): a resume on another world size supports "
                "ZeRO-0 with whole states (fp32, and bf16 through DeepSpeed's FP16 optimizer, as this engine "
                "configures it) and ZeRO 1-3; resume on the same number of ranks"
            )
        engine.load_checkpoint(str(tag.parent), tag=tag.name)
        return states
    full, step = full_states(tag, stage)
    _adam_states(engine.optimizer)
    if stage == 3:
        _write_zero3(engine, full, step)
    else:
        _write_zero12(engine, full, step)
    if states.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(states["lr_scheduler"])
    engine.global_steps = int(states["global_steps"])
    engine.global_samples = int(states.get("global_samples", 0))
    engine.skipped_steps = int(states.get("skipped_steps", 0))
    return states


def full_states(tag: Path, stage: int) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """({"fp32" | "exp_avg" | "exp_avg_sq": {name: whole tensor}}, Adam's step) of a ZeRO 1-3
    checkpoint: the old ranks' flat partitions put back together by DeepSpeed's zero_to_fp32
    layout (its per-group alignment paddings at ZeRO 1-2, per-parameter partitions at ZeRO-3)."""
    from deepspeed.utils import zero_to_fp32 as z

    from engine.checkpoint import _torch_load_weights_only, safe_load

    # zero_to_fp32 prints its progress; on stderr, so stdout stays the run's own output
    with _torch_load_weights_only(), contextlib.redirect_stdout(sys.stderr):
        model_states = z.parse_model_states(z.get_model_state_files(str(tag)))
    files = z.get_optim_files(str(tag))
    parts = [safe_load(f, mmap=True)["optimizer_state_dict"] for f in files]
    world = len(parts)
    names = [n for shapes in model_states[0].param_shapes for n in shapes]
    if stage == 3:
        flats = {"fp32": [p["fp32_flat_groups"] for p in parts]}
        base = [p["optimizer_state_dict"]["state"] for p in parts]
        for key in MOMENTS:
            flats[key] = [
                [s[i][key] for i in range(len(p["fp32_flat_groups"]))]
                for s, p in zip(base, parts, strict=True)
            ]

        def merge(groups: list) -> dict:
            return z.to_torch_tensor(
                z._get_fp32_state_dict_from_zero3_checkpoint(world, groups, model_states, False)
            )
    else:
        flats = {"fp32": [p["single_partition_of_fp32_groups"] for p in parts]}
        base = [p["base_optimizer_state"]["state"] for p in parts]
        for key in MOMENTS:  # the moments keep the padding the fp32 partitions were saved without
            flats[key] = [
                [s[i][key][: s[i][key].numel() - pad] for i, pad in enumerate(p["group_paddings"])]
                for s, p in zip(base, parts, strict=True)
            ]
        align = parts[0].get("param_alignment_paddings")

        def merge(groups: list) -> dict:
            return z._get_fp32_state_dict_from_zero2_checkpoint(world, groups, model_states, False, align)

    with contextlib.redirect_stdout(sys.stderr):
        full = {key: {n: t.detach().float().clone() for n, t in merge(groups).items() if n in names}
                for key, groups in flats.items()}  # fmt: skip
    return full, base[0][0]["step"]


def _write_zero12(engine: Any, full: dict[str, dict[str, torch.Tensor]], step: torch.Tensor) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    for name, p in engine.module.named_parameters():
        p.data.copy_(full["fp32"][name].view_as(p).to(p.dtype))
        safe_set_full_fp32_param(p, full["fp32"][name])
        for key in MOMENTS:
            safe_set_full_optimizer_state(p, full[key][name], key)
    _set_step(engine.optimizer.optimizer, step)


def _write_zero3(engine: Any, full: dict[str, dict[str, torch.Tensor]], step: torch.Tensor) -> None:
    import torch.distributed as dist

    opt, rank = engine.optimizer, dist.get_rank()
    for name, p in engine.module.named_parameters():
        weights = full["fp32"][name]
        _copy_slice(p.ds_tensor.data, weights, rank)
        # a parameter kept whole (under the persistence threshold) needs no copy: DeepSpeed
        # gathers it from the partitions before the first forward (the test with whole parameters)
        for key in (None, *MOMENTS):
            dest, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
            _copy_slice(dest.data, weights if key is None else full[key][name], rank)
    _set_step(opt.optimizer, step)


def _adam_states(zero: Any) -> None:
    """AdamW creates its states at its first step; a run resumed before any step has none to write
    into, so they are made here (zeros, as AdamW makes them) and the ZeRO 1-2 fragment mappings,
    which read the states when made, are made again."""
    base = zero.optimizer
    # ZeRO-3 puts each sub-group's flat partition into AdamW's param groups only for its step
    flats = getattr(zero, "fp32_partitioned_groups_flat", None) or [
        p for group in base.param_groups for p in group["params"]
    ]
    for flat in flats:
        if not base.state[flat]:
            base.state[flat] = {
                "step": torch.zeros((), dtype=torch.float32),
                **{key: torch.zeros_like(flat, memory_format=torch.preserve_format) for key in MOMENTS},
            }
    link_moments(zero)


def link_moments(zero: Any) -> None:
    """Point ZeRO 1-2's per-parameter fragment mappings at AdamW's moments. DeepSpeed links them
    once, after its first optimizer step, and with torch's AdamW that first link finds no states
    (they are made later), which leaves ``safe_{get,set}_full_optimizer_state`` without them."""
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    if hasattr(zero, "single_partition_of_fp32_groups"):
        for lp, hp in zip(zero.bit16_groups, zero.single_partition_of_fp32_groups, strict=True):
            lazy_init_hp_params_optimizer_state(lp, hp, zero.optimizer.state)


def _copy_slice(dest: torch.Tensor, whole: torch.Tensor, rank: int) -> None:
    """Rank ``rank``'s ZeRO-3 partition of ``whole`` (``dest.numel()`` elements from
    ``rank x dest.numel()``, zero past the end) into ``dest``."""
    flat, size = whole.reshape(-1), dest.numel()
    piece = flat[rank * size : (rank + 1) * size]
    dest.view(-1).zero_()
    dest.view(-1)[: piece.numel()].copy_(piece.to(dest.dtype))


def _set_step(optimizer: torch.optim.Optimizer, step: torch.Tensor) -> None:
    for state in optimizer.state.values():
        if "step" in state:
            old = state["step"]
            state["step"] = step.clone().to(old.device) if torch.is_tensor(old) else type(old)(step)


def ema_for_rank(tag: Path, engine: Any, rank: int) -> dict[str, torch.Tensor] | None:
    """The checkpoint's EMA as this rank holds it: whole parameters (ZeRO 0-2), or this rank's
    flat partition of each (ZeRO-3, the size of its ``ds_tensor``); None without an EMA."""
    from engine.checkpoint import CheckpointError, ema_state

    try:
        whole = ema_state(tag)
    except CheckpointError as err:
        if "has no EMA weights" in str(err):
            return None
        raise
    out = {}
    for name, p in engine.module.named_parameters():
        if hasattr(p, "ds_tensor"):
            part = torch.zeros(p.ds_tensor.numel(), dtype=torch.float32)
            _copy_slice(part, whole[name], rank)
            out[name] = part
        else:
            out[name] = whole[name]
    return out


def resume(checkpointer: Any, tag: Path, loader: Any) -> tuple[int, dict | None, dict]:
    """:meth:`engine.checkpoint.Checkpointer.resume` for a tag written by another number of ranks:
    (step, EMA weights as this rank holds them, client state with the old ``world_size``)."""
    from safetensors.torch import load_file

    from catlip.readers import load_json
    from engine.checkpoint import CheckpointError, set_rng_state

    old_world, world, rank = written_by(tag), checkpointer.world_size, checkpointer.rank
    extras = [load_json(tag / f"extra_rank{r}.json") for r in range(old_world)]
    data = [extra["data"] for extra in extras]
    if data[0] is not None and not hasattr(loader, "load_resharded"):  # before anything is loaded
        raise CheckpointError(
            f"{tag} was written by {ranks(old_world)}, this run has {world}, and its train loader "
            f"({type(loader).__name__}) cannot continue an epoch on another world size"
        )
    states = load_engine_state(checkpointer.engine, tag)
    if data[0] is not None:
        try:
            checkpointer.log(loader.load_resharded(data).line())
        except ValueError as err:
            raise CheckpointError(f"{tag}: {err}") from None
    if rank < old_world:
        set_rng_state(extras[rank]["rng"], load_file(str(tag / f"extra_rank{rank}.safetensors")))
    fresh = ""
    if world > old_world:
        fresh = (
            f"; rank {old_world} keeps" if world == old_world + 1 else f"; ranks {old_world}-{world - 1} keep"
        )
        fresh += " this run's seeds"
    step = int(states["step"])
    checkpointer.log(f"resumed from {tag} at step {step} (written by {ranks(old_world)}, now {world}{fresh})")
    client = {"config": states.get("config") or {}, "vocab": states.get("vocab") or {}, "path": tag}
    return step, ema_for_rank(tag, checkpointer.engine, rank), {**client, "world_size": old_world}
