"""The DeepSpeed config of a run: what the engine requires, and a user's own DeepSpeed file under it.

The engine sets the batch sizes, accumulation, clipping, the optimizer (AdamW with the optim
section's rate, betas and eps), the ZeRO stage and its bounds, offload and precision from the run
config (:func:`engine_config`). ``parallel.deepspeed_config: FILE`` (JSON, or YAML for ``.yaml`` /
``.yml``) adds DeepSpeed's other settings (``comms_logger``, ``flops_profiler``, ``aio``,
``zero_optimization.overlap_comm``, ...) at any depth (:func:`merge_user_config`). A key of the
file that the engine sets to another value is refused, naming the key (dotted), both values and the
run config key that sets it: one setting, one place. So are keys that the run config decides by
leaving them out (``scheduler``, ``fp16``, ``zero_optimization.offload_optimizer``,
``optimizer.params.weight_decay``). The file may change what the engine only picks as a default
(``USER_MAY_SET``): DeepSpeed's printing and timers, and which Adam steps the optimizer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from catlip.readers import load_json, load_yaml, shown
from engine.config import TrainConfig
from engine.distributed import cuda_available
from engine.errors import ConfigError

KEY = "parallel.deepspeed_config"

# where each engine-set DeepSpeed key comes from, for the message that refuses a different value
SOURCES = {
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "train_batch_size": "data.batch_size x optim.grad_accum x ranks",
    "gradient_clipping": "optim.grad_clip",
    "optimizer.type": "the engine's AdamW",
    "optimizer.params.lr": "optim.lr",
    "optimizer.params.betas": "optim.betas",
    "optimizer.params.eps": "optim.eps",
    "optimizer.params.weight_decay": "optim.weight_decay, per parameter group",
    "scheduler": "optim.warmup_steps and optim.min_lr: the engine's warmup + cosine",
    "zero_optimization.stage": "parallel.zero_stage",
    "zero_optimization.offload_optimizer": "parallel.offload_optimizer",
    "zero_optimization.stage3_param_persistence_threshold": "parallel.persistence_threshold",
    "zero_optimization.model_persistence_threshold": "parallel.persistence_threshold",
    "zero_optimization.reduce_bucket_size": "parallel.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size": "parallel.prefetch_bucket_size",
    "zero_optimization.stage3_max_live_parameters": "parallel.max_live_parameters",
    "zero_optimization.stage3_max_reuse_distance": "parallel.max_reuse_distance",
    "zero_optimization.sub_group_size": "parallel.sub_group_size",
    "bf16.enabled": "parallel.precision",
    "fp16": "parallel.precision",
    "zero_force_ds_cpu_optimizer": "the engine: torch's AdamW may step offloaded states",
}
# decided by the run config even where the engine leaves them out of DeepSpeed's config
RESERVED = ("scheduler", "fp16", "zero_optimization.offload_optimizer", "optimizer.params.weight_decay")
# the engine's defaults that a user's file may change
USER_MAY_SET = ("steps_per_print", "wall_clock_breakdown", "optimizer.params.torch_adam")


def use_bf16(cfg: TrainConfig) -> bool:
    return cfg.parallel.precision == "bf16" or (cfg.parallel.precision == "auto" and cuda_available())


def torch_adam(device: str, offload_optimizer: str) -> bool:
    """Whether torch's AdamW steps the optimizer (DeepSpeed's ``torch_adam``) rather than DeepSpeed's
    own: its FusedAdam (multi-tensor CUDA kernels) on a GPU that holds the optimizer states, torch's
    on CPU ranks (FusedAdam is a CUDA op) and where the states are offloaded to host memory
    (DeepSpeed's CPU Adam is a C++ op that it would build at start)."""
    return not (device == "cuda" and offload_optimizer == "none")


def engine_config(cfg: TrainConfig, world_size: int, device: str) -> dict[str, Any]:
    """What the engine sets, from the run config, for ranks on ``device`` ("cuda" | "cpu")."""
    o, r = cfg.optim, cfg.parallel
    zero: dict[str, Any] = {"stage": r.zero_stage}
    if r.zero_stage == 3:
        zero.update(
            stage3_param_persistence_threshold=r.persistence_threshold,
            model_persistence_threshold=r.persistence_threshold,
            reduce_bucket_size=r.reduce_bucket_size,
            stage3_prefetch_bucket_size=r.prefetch_bucket_size,
            stage3_max_live_parameters=r.max_live_parameters,
            stage3_max_reuse_distance=r.max_reuse_distance,
            sub_group_size=r.sub_group_size,
        )
    if r.offload_optimizer != "none":  # optimizer states and step in host memory
        zero["offload_optimizer"] = {"device": r.offload_optimizer}
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": cfg.data.batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,  # DeepSpeed's default is 1.0: always set it
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "torch_adam": torch_adam(device, r.offload_optimizer),
            },
        },
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,  # torch's AdamW may step offloaded states
        "bf16": {"enabled": use_bf16(cfg)},
        "steps_per_print": 10**9,  # logging is ours
        "wall_clock_breakdown": False,
    }


def deepspeed_config(cfg: TrainConfig, world_size: int, device: str | None = None) -> dict[str, Any]:
    """The config handed to ``deepspeed.initialize``: the engine's, with ``parallel.deepspeed_config``
    merged under it. ``device``: "cuda" | "cpu", by default where this process trains."""
    device = device or ("cuda" if cuda_available() else "cpu")
    config = engine_config(cfg, world_size, device)
    if cfg.parallel.deepspeed_config:
        path = cfg.parallel.deepspeed_config
        config = merge_user_config(config, read_user_config(path), f"{KEY} {path}")
    return config


def read_user_config(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed config file: JSON, or YAML for ``.yaml`` / ``.yml``; errors name the key and file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{KEY}: cannot read {path} ({err})") from None
    if path.suffix in (".yaml", ".yml"):
        data = load_yaml(text, f"{KEY} {path}", ConfigError)
    else:
        data = load_json(f"{KEY} {path}", ConfigError, text=text)
    if not isinstance(data, dict):
        raise ConfigError(f"{KEY} {path}: expected a mapping of DeepSpeed settings, got {shown(data)}")
    return data


def merge_user_config(engine: dict[str, Any], user: dict[str, Any], source: str) -> dict[str, Any]:
    """``engine`` with ``user``'s keys added at every depth (a copy). A key the engine sets to
    another value, or one of ``RESERVED``, is a ConfigError naming every such key and both values;
    ``USER_MAY_SET`` keys take the user's value."""
    merged = copy.deepcopy(engine)
    conflicts: list[str] = []
    _merge(merged, user, "", conflicts)
    if conflicts:
        raise ConfigError(f"{source}: {'; '.join(conflicts)} (set these in the run config, not in the file)")
    return merged


def _merge(into: dict[str, Any], user: dict[str, Any], prefix: str, conflicts: list[str]) -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if dotted in USER_MAY_SET:
            into[key] = copy.deepcopy(value)
        elif key not in into:
            if dotted in RESERVED:
                conflicts.append(f"{dotted} is {shown(value)}, but it is set by {SOURCES[dotted]}")
            else:
                into[key] = copy.deepcopy(value)
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, f"{dotted}.", conflicts)
        elif not _same(into[key], value):
            origin = SOURCES.get(dotted) or next(
                (s for k, s in SOURCES.items() if dotted.startswith(f"{k}.")), ""
            )
            conflicts.append(
                f"{dotted} is {shown(value)}, but the engine sets {shown(into[key])}"
                + (f" (from {origin})" if origin else "")
            )


def _same(engine: Any, user: Any) -> bool:
    if isinstance(engine, bool) or isinstance(user, bool):
        return type(engine) is type(user) and engine == user
    if isinstance(engine, list | tuple) and isinstance(user, list | tuple):
        return len(engine) == len(user) and all(_same(a, b) for a, b in zip(engine, user, strict=True))
    return engine == user
