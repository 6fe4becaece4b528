"""Typed run configuration, loaded from YAML, in sections by concern:

    model       the network: preset, resolution, op implementations     ModelConfig
    objective   the task (engine/objectives.py) and its task-only keys   ObjectiveConfig
    data        packed shards, batch, loader, multi-scale                DataConfig
    optim       AdamW, schedule, accumulation, EMA, batch scaling        OptimConfig
    parallel    ZeRO, precision, recompute, compile (engine/parallel.py) ParallelConfig
    checkpoint  how often checkpoints are written, how many are kept     CheckpointConfig
    run         output folder, steps, seed, logging, evaluation, resume  RunConfig

Unknown keys are errors (a typo must not silently fall back to a default). Command-line
``--set section.key=value`` overrides apply on top, parsed as YAML scalars. YAML is read by
``catlip.readers.load_yaml`` (no anchors or aliases, one-line errors) and values are shown cut
short in messages, so a hostile file or ``--set`` is an error, not a hang.

Keys that moved to another section (``MOVED``, docs/config_migration.md) are still read, in files
and ``--set``, for one release: each prints one line naming its new key, and errors name the keys
as the config spells them. Configs saved in checkpoints and exports before the move are read with
:func:`with_new_keys`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from catlip.readers import load_yaml, shown
from engine.errors import ConfigError


@dataclass(slots=True)
class ModelConfig:
    """The network: its preset, resolution and the implementation of its ops."""

    name: str = "vit_tiny"  # a catlip.models.VIT_PRESETS key (CLIP: the clip_<name> preset)
    image_size: int | None = None  # override the preset's resolution
    # the position table at other sizes (catlip.models.ViTConfig.pos_interp): "bicubic" | "corenet";
    # None: the preset's (corenet for the corenet_vit_* presets, whose checkpoints compute corenet's
    # function at every size with it)
    pos_interp: str | None = None
    attn_impl: str = "sdpa"  # "sdpa" | "math"
    loss_impl: str = "torch"  # "torch" (reference) | "triton" (fused kernel)


@dataclass(slots=True)
class ObjectiveConfig:
    """The training task (engine/objectives.py) and what only some tasks read."""

    name: str = "catlip"  # an engine.objectives.OBJECTIVES key: catlip | clip | siglip | finetune | probe
    label_smoothing: float = 0.0  # catlip, and finetune/probe on a single-label class pack
    # contrastive baselines (clip, siglip): open_clip's all-gather modes, SigLIP's exchange
    local_loss: bool = True
    gather_with_grad: bool = True
    siglip_dist_impl: str = "bidir"  # "bidir" (neighbour exchange) | "gather"
    # transfer (finetune, probe): the pre-trained backbone and the classifier's start
    init_from: str | None = (
        None  # a checkpoint dir, a catlip safetensors export, a timm/open_clip/corenet file
    )
    classifier_init: str = "random"  # "random" | "zero" | "synset" (the pre-trained head's class rows)


@dataclass(slots=True)
class DataConfig:
    train: str = ""  # directory of packed shards (dataset.json) from `catlip pack`
    val: str | None = None  # held-out shards for the mAP metric
    batch_size: int = 32  # per rank, per micro-step
    max_labels: int = 32  # labels per sample after padding
    num_threads: int = 2  # DALI CPU threads per rank
    decode_device: str = "auto"  # "auto" | "cpu" | "mixed"
    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    cache_features: bool = False  # probe: the frozen tower's features of the un-augmented train images, once
    # variable-resolution batches (corenet's variable batch sampler), e.g. {min: 128, max: 320, step: 16,
    # scales: 25}: engine/multiscale.py. None: every batch at model.image_size.
    multiscale: dict[str, int] | None = None


@dataclass(slots=True)
class OptimConfig:
    lr: float = 1e-3  # peak, reached after warmup
    min_lr: float = 1e-6
    weight_decay: float = 0.2  # corenet's CatLIP recipe
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 disables the EMA of weights
    layer_decay: float = 1.0  # layer-wise lr decay (BEiT): block i's lr x layer_decay ** (depth - i); 1: off
    # the global batch (data.batch_size x GPUs x grad_accum) that lr, min_lr and warmup_steps are for;
    # a run at another global batch scales them (engine/scaling.py). None: nothing is scaled
    reference_batch: int | None = None
    # how: "linear" | "sqrt" | "none"; None (unset): sqrt, with a warning when the run's global batch
    # is more than 2x away from reference_batch (docs/training.md, "Learning rate and batch")
    lr_scaling: str | None = None


@dataclass(slots=True)
class ParallelConfig:
    """What engine/parallel.py applies to the built model: ZeRO, precision, recompute, compile."""

    zero_stage: int = 2
    precision: str = "auto"  # "auto" (bf16 on a GPU, fp32 on the CPU) | "bf16" | "fp32"
    grad_checkpointing: bool = False  # recompute each block in the backward
    compile: bool = False  # torch.compile each transformer block (ZeRO 0-2)
    # ZeRO-3: build the model partitioned (deepspeed.zero.Init via engine.parallel.build_model), so
    # no rank ever holds it whole; off: built whole on every rank, then partitioned
    zero_init: bool = False
    offload_optimizer: str = "none"  # "none" | "cpu": DeepSpeed's offload_optimizer (ZeRO 1-3)
    persistence_threshold: int = 100_000  # ZeRO-3: params smaller than this stay whole on every rank
    # ZeRO-3 working-memory bounds, in elements (defaults: DeepSpeed's, sized for GPUs; fp32 bytes
    # = 4x). perf/bench_zero3.py lowers them to fit ViT-H on a small CPU host.
    reduce_bucket_size: int = 500_000_000  # gradients reduced per bucket (the bucket is preallocated)
    prefetch_bucket_size: int = 50_000_000  # parameters gathered ahead of the module that needs them
    max_live_parameters: int = 1_000_000_000  # gathered parameters kept before releasing any
    max_reuse_distance: int = 1_000_000_000  # keep a gathered parameter reused within this many
    sub_group_size: int = 1_000_000_000  # optimizer step per sub-group (bounds its temporaries)
    # a DeepSpeed config file (JSON; YAML for .yaml/.yml) merged under the engine's settings: keys the
    # engine does not set are added, one it sets to another value is an error (engine/ds_config.py)
    deepspeed_config: str | None = None


@dataclass(slots=True)
class CheckpointConfig:
    """How often checkpoints are written and how many are kept (engine/checkpoint.py)."""

    every: int = 500  # optimizer steps between checkpoints (0: only at the end)
    keep: int = 2  # the newest complete checkpoints kept


@dataclass(slots=True)
class RunConfig:
    out_dir: str = "runs/catlip"
    steps: int = 1000  # optimizer steps
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    resume: str = "auto"  # "auto" (latest in out_dir if any) | "never" | a checkpoint directory
    max_skipped_steps: int = 10  # DeepSpeed overflow-skipped optimizer steps in a row before stopping


@dataclass(slots=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CLASSIFIER_INITS = ("random", "zero", "synset")
LR_SCALINGS = ("linear", "sqrt", "none")  # optim.lr_scaling (engine/scaling.py)


def _coerce(section: str, key: str, typ: Any, value: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    if typ in (int, float, str, bool):
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typ is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ConfigError(f"{section}.{key}: expected {typ.__name__}, got {shown(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(typ.__args__):
            raise ConfigError(f"{section}.{key}: expected a list of {len(typ.__args__)}, got {shown(value)}")
        return tuple(_coerce(section, key, t, v) for t, v in zip(typ.__args__, value, strict=True))
    args = getattr(typ, "__args__", ())
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(section, key, inner, value)
    return value


def from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    return _from_sections(raw, source, {})


def _from_sections(raw: Any, source: str, old_used: dict[str, str]) -> TrainConfig:
    """The config of ``raw`` (moved keys read at their new places); errors name the keys as
    ``raw`` spells them (``old_used``: new key -> the old one the config used)."""
    raw = _upgrade(raw, source, old_used, say=True)
    try:
        return _build(raw, source)
    except ConfigError as err:
        raise ConfigError(_as_spelled(str(err), raw, old_used)) from None


def _build(raw: Any, source: str) -> TrainConfig:
    cfg = TrainConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = [f.name for f in dataclasses.fields(cfg)]
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section {shown(section)} (sections: {', '.join(sections)})")
        target = getattr(cfg, section)
        hints = get_type_hints(type(target))
        if not isinstance(values, dict | None):
            raise ConfigError(f"{source}: section {section} must be a mapping of keys, got {shown(values)}")
        for key, value in (values or {}).items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key if isinstance(key, str) else shown(key)} (known: {', '.join(hints)})"
                )
            setattr(target, key, _coerce(section, key, hints[key], value))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    raw: dict[str, Any] = {}
    old_used: dict[str, str] = {}  # new key -> the old one this config spelled
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read it ({err})") from err
        raw = _upgrade(load_yaml(text, str(path), ConfigError) or {}, str(path), old_used, say=True)
    for item in overrides:
        dotted, eq, value = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {shown(item)}: expected section.key=value")
        if not isinstance(raw, dict):
            break  # from_dict names what the file holds instead of sections
        parsed = load_yaml(value, f"--set {dotted}", ConfigError)
        if dotted in MOVED:  # the old key, read at its new place
            _say_moved(dotted, "--set")
            old_used[MOVED[dotted]] = dotted
            section, _, key = MOVED[dotted].partition(".")
        else:
            old_used.pop(dotted, None)  # the new key overrides the file's old one
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict | None):
            break  # likewise
        raw[section] = dict(raw[section] or {}, **{key: parsed})
    return _from_sections(raw, str(path or "defaults"), old_used)


# ------------------------------------------------------------------------------ keys that moved
# Old key -> new key: read, with one line each, until the next release (docs/config_migration.md).
MOVED = {
    "model.objective": "objective.name",
    "model.label_smoothing": "objective.label_smoothing",
    "model.local_loss": "objective.local_loss",
    "model.gather_with_grad": "objective.gather_with_grad",
    "model.siglip_dist_impl": "objective.siglip_dist_impl",
    "model.init_from": "objective.init_from",
    "model.classifier_init": "objective.classifier_init",
    "model.grad_checkpointing": "parallel.grad_checkpointing",
    "model.compile": "parallel.compile",
    "run.zero_stage": "parallel.zero_stage",
    "run.precision": "parallel.precision",
    "run.zero_init": "parallel.zero_init",
    "run.offload_optimizer": "parallel.offload_optimizer",
    "run.persistence_threshold": "parallel.persistence_threshold",
    "run.reduce_bucket_size": "parallel.reduce_bucket_size",
    "run.prefetch_bucket_size": "parallel.prefetch_bucket_size",
    "run.max_live_parameters": "parallel.max_live_parameters",
    "run.max_reuse_distance": "parallel.max_reuse_distance",
    "run.sub_group_size": "parallel.sub_group_size",
    "run.ckpt_every": "checkpoint.every",
    "run.keep_checkpoints": "checkpoint.keep",
}


def with_new_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A config saved before the keys moved (a checkpoint's, an export's ``catlip_config``) with
    every moved key at its new place, silently; a config saved after is returned as it is."""
    return _upgrade(raw, "saved config", {}, say=False)


def _upgrade(raw: Any, source: str, old_used: dict[str, str], *, say: bool) -> Any:
    """``raw``'s sections with the moved keys at their new places (a copy); records each old key
    used in ``old_used`` (new -> old), saying so where ``say``."""
    if not isinstance(raw, dict):
        return raw  # from_dict names what it holds instead of sections
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
    for old, new in MOVED.items():
        (section, key), (new_section, new_key) = old.split("."), new.split(".")
        values = out.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        if out.get(new_section) is None:
            out[new_section] = {}
        target = out[new_section]
        if not isinstance(target, dict):
            continue  # from_dict names the section
        if new_key in target:
            raise ConfigError(
                f"{source}: {old} and {new} are one setting ({old} is its old name): give {new} only"
            )
        target[new_key] = values.pop(key)
        old_used[new] = old
        if say:
            _say_moved(old, source)
    return out


def _say_moved(old: str, source: str) -> None:
    """One line on stderr (rank 0's only: every rank reads the config)."""
    if os.environ.get("RANK", "0") == "0":
        print(
            f"deprecated: {old} is now {MOVED[old]} (in {source}; the old key is read until the next release)",
            file=sys.stderr,
        )


def _as_spelled(message: str, raw: Any, old_used: dict[str, str]) -> str:
    """``message`` naming moved keys as the config spells them: by their old name where it used
    that, or used old names for that section's other moved keys and did not spell this one anew."""
    if not old_used:
        return message
    spelled = {f"{s}.{k}" for s, v in raw.items() if isinstance(v, dict) for k in v} - set(old_used)
    moves = {(old.split(".")[0], new.split(".")[0]) for new, old in old_used.items()}
    for old, new in MOVED.items():
        if new in old_used or ((old.split(".")[0], new.split(".")[0]) in moves and new not in spelled):
            message = re.sub(rf"(?<![\w.]){re.escape(new)}\b", old, message)
    return message


def validate(cfg: TrainConfig) -> None:
    from catlip.models import ATTN_IMPLS, LOSS_IMPLS, POS_INTERPS, VIT_PRESETS
    from engine.objectives import OBJECTIVES  # the registry: a new objective is one entry there

    checks = [
        (cfg.objective.name in OBJECTIVES, f"objective.name must be one of {tuple(OBJECTIVES)}"),
        (cfg.model.name in VIT_PRESETS, f"model.name must be one of {list(VIT_PRESETS)}"),
        (cfg.objective.siglip_dist_impl in ("bidir", "gather"), "objective.siglip_dist_impl: bidir | gather"),
        (cfg.model.attn_impl in ATTN_IMPLS, f"model.attn_impl must be one of {ATTN_IMPLS}"),
        (
            cfg.model.pos_interp in (None, *POS_INTERPS),
            f"model.pos_interp must be one of {POS_INTERPS} (or unset: the preset's), got {cfg.model.pos_interp!r}",
        ),
        (cfg.model.loss_impl in LOSS_IMPLS, f"model.loss_impl must be one of {LOSS_IMPLS}"),
        (0 <= cfg.objective.label_smoothing < 1, "objective.label_smoothing must be in [0, 1)"),
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.decode_device in ("auto", "cpu", "mixed"), "data.decode_device: auto | cpu | mixed"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (0 <= cfg.optim.ema_decay < 1, "optim.ema_decay must be in [0, 1)"),
        (0 < cfg.optim.layer_decay <= 1, f"optim.layer_decay must be in (0, 1], got {cfg.optim.layer_decay}"),
        (
            cfg.optim.reference_batch is None or cfg.optim.reference_batch >= 1,
            f"optim.reference_batch must be >= 1 (or unset), got {cfg.optim.reference_batch}",
        ),
        (
            cfg.optim.lr_scaling in (None, *LR_SCALINGS),
            f"optim.lr_scaling must be one of {LR_SCALINGS} (or unset), got {shown(cfg.optim.lr_scaling)}",
        ),
        (
            cfg.optim.lr_scaling in (None, "none") or cfg.optim.reference_batch is not None,
            f"optim.lr_scaling {cfg.optim.lr_scaling} needs optim.reference_batch (the global batch optim.lr is for)",
        ),
        (
            cfg.objective.classifier_init in CLASSIFIER_INITS,
            f"objective.classifier_init must be one of {CLASSIFIER_INITS}, got {cfg.objective.classifier_init!r}",
        ),
        (
            cfg.objective.classifier_init != "synset" or bool(cfg.objective.init_from),
            "objective.classifier_init synset needs objective.init_from (the pre-trained checkpoint whose head it reads)",
        ),
        (
            not cfg.data.cache_features or cfg.objective.name == "probe",
            "data.cache_features is for objective.name probe (a frozen tower) only",
        ),
        (
            not cfg.data.cache_features or cfg.parallel.zero_stage < 3,
            "data.cache_features needs parallel.zero_stage 0-2 (the tower is called outside the engine)",
        ),
        (cfg.parallel.zero_stage in (0, 1, 2, 3), "parallel.zero_stage must be 0, 1, 2 or 3"),
        (cfg.parallel.precision in ("auto", "bf16", "fp32"), "parallel.precision: auto | bf16 | fp32"),
        (cfg.run.steps >= 1, "run.steps must be >= 1"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (0 <= cfg.optim.min_lr <= cfg.optim.lr, "optim.min_lr must be in [0, optim.lr]"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (cfg.run.log_every >= 1, f"run.log_every must be >= 1, got {cfg.run.log_every}"),
        (
            cfg.checkpoint.every >= 0 and cfg.run.eval_every >= 0,
            "checkpoint.every and run.eval_every must be >= 0",
        ),
        (cfg.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        (cfg.run.max_skipped_steps >= 0, "run.max_skipped_steps must be >= 0"),
        (cfg.parallel.offload_optimizer in ("none", "cpu"), "parallel.offload_optimizer: none | cpu"),
        (
            min(cfg.parallel.reduce_bucket_size, cfg.parallel.sub_group_size) >= 1
            and min(cfg.parallel.prefetch_bucket_size, cfg.parallel.max_live_parameters) >= 0
            and cfg.parallel.max_reuse_distance >= 0,
            "parallel.reduce_bucket_size and parallel.sub_group_size must be >= 1, the other ZeRO-3 bounds >= 0",
        ),
        (cfg.parallel.deepspeed_config != "", "parallel.deepspeed_config: a file path, or unset"),
        (
            not cfg.parallel.zero_init or cfg.parallel.zero_stage == 3,
            "parallel.zero_init needs parallel.zero_stage 3",
        ),
        (
            not (cfg.parallel.zero_init and cfg.objective.init_from),
            "parallel.zero_init builds the model partitioned; objective.init_from loads a whole state into it: use one",
        ),
        (
            cfg.parallel.offload_optimizer == "none" or cfg.parallel.zero_stage >= 1,
            "parallel.offload_optimizer cpu needs parallel.zero_stage 1, 2 or 3",
        ),
        (
            0 < cfg.data.scale[0] <= cfg.data.scale[1] <= 1,
            f"data.scale must be [min, max] with 0 < min <= max <= 1, got {list(cfg.data.scale)}",
        ),
    ]
    errors = [msg for ok, msg in checks if not ok]
    if cfg.data.multiscale is not None:
        from engine.multiscale import MultiScaleConfig

        try:
            MultiScaleConfig.from_dict(cfg.data.multiscale)
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("; ".join(errors))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``, shared by ``catlip train`` and ``python -m engine.train``."""
    p.add_argument(
        "--config",
        type=Path,
        help="YAML run config (sections model, objective, data, optim, parallel, checkpoint, run)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set run.steps=200 (repeatable)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
