"""Typed run configuration, loaded from YAML: sections model, data, optim, run.

Unknown keys are errors (a typo must not silently fall back to a default). Command-line
``--set section.key=value`` overrides apply on top, parsed as YAML scalars. YAML is read by
``catlip.readers.load_yaml`` (no anchors or aliases, one-line errors) and values are shown cut
short in messages, so a hostile file or ``--set`` is an error, not a hang.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from catlip.readers import load_yaml, shown
from engine.errors import ConfigError


@dataclass
class ModelConfig:
    objective: str = "catlip"  # "catlip" | "clip" | "siglip" (contrastive baselines) | "finetune" | "probe"
    name: str = "vit_tiny"  # a catlip.models.VIT_PRESETS key (CLIP: the clip_<name> preset)
    image_size: int | None = None  # override the preset's resolution
    # the position table at other sizes (catlip.models.ViTConfig.pos_interp): "bicubic" | "corenet";
    # None: the preset's (corenet for the corenet_vit_* presets, whose checkpoints compute corenet's
    # function at every size with it)
    pos_interp: str | None = None
    attn_impl: str = "sdpa"  # "sdpa" | "math"
    loss_impl: str = "torch"  # "torch" (reference) | "triton" (fused kernel)
    grad_checkpointing: bool = False  # recompute each block in the backward (engine/parallel.py)
    compile: bool = False  # torch.compile each transformer block (ZeRO 0-2)
    label_smoothing: float = 0.0
    # contrastive baselines: open_clip's all-gather modes, SigLIP's exchange
    local_loss: bool = True
    gather_with_grad: bool = True
    siglip_dist_impl: str = "bidir"  # "bidir" (neighbour exchange) | "gather"
    # transfer (finetune, probe): the pre-trained backbone and the classifier's start
    init_from: str | None = (
        None  # a checkpoint dir, a catlip safetensors export, a timm/open_clip/corenet file
    )
    classifier_init: str = "random"  # "random" | "zero" | "synset" (the pre-trained head's class rows)


@dataclass
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


@dataclass
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


@dataclass
class RunConfig:
    out_dir: str = "runs/catlip"
    steps: int = 1000  # optimizer steps
    zero_stage: int = 2
    precision: str = "auto"  # "auto" (bf16 on a GPU, fp32 on the CPU) | "bf16" | "fp32"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    eval_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: str = "auto"  # "auto" (latest in out_dir if any) | "never" | a checkpoint directory
    persistence_threshold: int = 100_000  # ZeRO-3: params smaller than this stay whole on every rank
    max_skipped_steps: int = 10  # DeepSpeed overflow-skipped optimizer steps in a row before stopping
    offload_optimizer: str = "none"  # "none" | "cpu": DeepSpeed's offload_optimizer (ZeRO 1-3)
    # ZeRO-3 working-memory bounds, in elements (defaults: DeepSpeed's, sized for GPUs; fp32 bytes
    # = 4x). perf/bench_zero3.py lowers them to fit ViT-H on a small CPU host.
    reduce_bucket_size: int = 500_000_000  # gradients reduced per bucket (the bucket is preallocated)
    prefetch_bucket_size: int = 50_000_000  # parameters gathered ahead of the module that needs them
    max_live_parameters: int = 1_000_000_000  # gathered parameters kept before releasing any
    max_reuse_distance: int = 1_000_000_000  # keep a gathered parameter reused within this many
    sub_group_size: int = 1_000_000_000  # optimizer step per sub-group (bounds its temporaries)
    # ZeRO-3: build the model partitioned (deepspeed.zero.Init via engine.parallel.build_model), so
    # no rank ever holds it whole; off: built whole on every rank, then partitioned
    zero_init: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CLASSIFIER_INITS = ("random", "zero", "synset")


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
    cfg = TrainConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(
                f"{source}: unknown section {shown(section)} (sections: model, data, optim, run)"
            )
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
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read it ({err})") from err
        raw = load_yaml(text, str(path), ConfigError) or {}
    for item in overrides:
        dotted, eq, value = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {shown(item)}: expected section.key=value")
        if not isinstance(raw, dict):
            break  # from_dict names what the file holds instead of sections
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict | None):
            break  # likewise
        raw[section] = dict(raw[section] or {}, **{key: load_yaml(value, f"--set {dotted}", ConfigError)})
    return from_dict(raw, str(path or "defaults"))


def validate(cfg: TrainConfig) -> None:
    from catlip.models import ATTN_IMPLS, LOSS_IMPLS, POS_INTERPS, VIT_PRESETS
    from engine.objectives import OBJECTIVES  # the registry: a new objective is one entry there

    checks = [
        (cfg.model.objective in OBJECTIVES, f"model.objective must be one of {tuple(OBJECTIVES)}"),
        (cfg.model.name in VIT_PRESETS, f"model.name must be one of {list(VIT_PRESETS)}"),
        (cfg.model.siglip_dist_impl in ("bidir", "gather"), "model.siglip_dist_impl: bidir | gather"),
        (cfg.model.attn_impl in ATTN_IMPLS, f"model.attn_impl must be one of {ATTN_IMPLS}"),
        (
            cfg.model.pos_interp in (None, *POS_INTERPS),
            f"model.pos_interp must be one of {POS_INTERPS} (or unset: the preset's), got {cfg.model.pos_interp!r}",
        ),
        (cfg.model.loss_impl in LOSS_IMPLS, f"model.loss_impl must be one of {LOSS_IMPLS}"),
        (0 <= cfg.model.label_smoothing < 1, "model.label_smoothing must be in [0, 1)"),
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.decode_device in ("auto", "cpu", "mixed"), "data.decode_device: auto | cpu | mixed"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (0 <= cfg.optim.ema_decay < 1, "optim.ema_decay must be in [0, 1)"),
        (0 < cfg.optim.layer_decay <= 1, f"optim.layer_decay must be in (0, 1], got {cfg.optim.layer_decay}"),
        (
            cfg.model.classifier_init in CLASSIFIER_INITS,
            f"model.classifier_init must be one of {CLASSIFIER_INITS}, got {cfg.model.classifier_init!r}",
        ),
        (
            cfg.model.classifier_init != "synset" or bool(cfg.model.init_from),
            "model.classifier_init synset needs model.init_from (the pre-trained checkpoint whose head it reads)",
        ),
        (
            not cfg.data.cache_features or cfg.model.objective == "probe",
            "data.cache_features is for model.objective probe (a frozen tower) only",
        ),
        (
            not cfg.data.cache_features or cfg.run.zero_stage < 3,
            "data.cache_features needs run.zero_stage 0-2 (the tower is called outside the engine)",
        ),
        (cfg.run.zero_stage in (0, 1, 2, 3), "run.zero_stage must be 0, 1, 2 or 3"),
        (cfg.run.precision in ("auto", "bf16", "fp32"), "run.precision: auto | bf16 | fp32"),
        (cfg.run.steps >= 1, "run.steps must be >= 1"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (0 <= cfg.optim.min_lr <= cfg.optim.lr, "optim.min_lr must be in [0, optim.lr]"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (cfg.run.log_every >= 1, f"run.log_every must be >= 1, got {cfg.run.log_every}"),
        (
            cfg.run.ckpt_every >= 0 and cfg.run.eval_every >= 0,
            "run.ckpt_every and run.eval_every must be >= 0",
        ),
        (cfg.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        (cfg.run.max_skipped_steps >= 0, "run.max_skipped_steps must be >= 0"),
        (cfg.run.offload_optimizer in ("none", "cpu"), "run.offload_optimizer: none | cpu"),
        (
            min(cfg.run.reduce_bucket_size, cfg.run.sub_group_size) >= 1
            and min(cfg.run.prefetch_bucket_size, cfg.run.max_live_parameters) >= 0
            and cfg.run.max_reuse_distance >= 0,
            "run.reduce_bucket_size and run.sub_group_size must be >= 1, the other ZeRO-3 bounds >= 0",
        ),
        (not cfg.run.zero_init or cfg.run.zero_stage == 3, "run.zero_init needs run.zero_stage 3"),
        (
            not (cfg.run.zero_init and cfg.model.init_from),
            "run.zero_init builds the model partitioned; model.init_from loads a whole state into it: use one",
        ),
        (
            cfg.run.offload_optimizer == "none" or cfg.run.zero_stage >= 1,
            "run.offload_optimizer cpu needs run.zero_stage 1, 2 or 3",
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
    p.add_argument("--config", type=Path, help="YAML run config (sections model, data, optim, run)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set run.steps=200 (repeatable)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
