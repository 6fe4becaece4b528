"""timm's ``VisionTransformer``: our ViT to timm (``export_timm``, the names and the model args)
and timm's weights into ours (``from_timm``), as timm keeps ``checkpoint_filter_fn`` beside its model.

Our ViT is timm's with ``class_token=True``, ``global_pool="token"``, no fc-norm, a pre-norm only
where ``ViTConfig.pre_norm``, qkv bias, exact GELU and LayerNorm eps 1e-6; the key names differ only
in ``patch_embed.proj`` and ``mlp.fc1``/``mlp.fc2``. Read from timm: a layer scale (``ls1.gamma``)
is folded into the projection before it, ``norm_pre`` is our ``norm_pre``, a position embedding
without a class-token row (``no_embed_class``) gets a zero row. Not to timm: the conv stem (timm's
patch embedding is one convolution) and corenet's position table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from catlip.convert.state import InteropError, Tensor, _depth, _fold_layer_scale, _Taker, check_vit_state
from catlip.models import ViTConfig, run_vit_config
from catlip.readers import load_json

# timm's architectures, in our terms (timm/models/vision_transformer.py's model_args); the export
# names the one matching the preset and passes only the fields that differ as kwargs.
TIMM_ARCHS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": ViTConfig(width=192, depth=12, heads=3),
    "vit_small_patch16_224": ViTConfig(width=384, depth=12, heads=6),
    "vit_base_patch16_224": ViTConfig(width=768, depth=12, heads=12),
    "vit_large_patch16_224": ViTConfig(width=1024, depth=24, heads=16),
    "vit_huge_patch14_224": ViTConfig(patch_size=14, width=1280, depth=32, heads=16),
    # timm's CLIP towers: norm_pre and LayerNorm eps 1e-5 (partial(LayerNorm, eps=1e-5))
    "vit_base_patch16_clip_224": ViTConfig(width=768, depth=12, heads=12, pre_norm=True, norm_eps=1e-5),
    "vit_large_patch14_clip_224": ViTConfig(
        patch_size=14, width=1024, depth=24, heads=16, pre_norm=True, norm_eps=1e-5
    ),
    "vit_huge_patch14_clip_224": ViTConfig(
        patch_size=14, width=1280, depth=32, heads=16, pre_norm=True, norm_eps=1e-5
    ),
}
PRESET_TO_TIMM = {
    "vit_tiny": "vit_tiny_patch16_224",  # ours is smaller (64 px, patch 8, width 96, depth 4): kwargs
    "vit_small": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "vit_l16": "vit_large_patch16_224",
    "vit_h16": "vit_huge_patch14_224",  # + patch_size=16, num_heads=20
    "vit_h14": "vit_huge_patch14_224",
    "openclip_vit_b16": "vit_base_patch16_clip_224",
    "openclip_vit_l14": "vit_large_patch14_clip_224",
    "openclip_vit_h14": "vit_huge_patch14_clip_224",
}
_TIMM_KWARG = {  # our ViTConfig field -> timm VisionTransformer argument
    "image_size": "img_size",
    "patch_size": "patch_size",
    "width": "embed_dim",
    "depth": "depth",
    "heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "pre_norm": "pre_norm",
}

# our block's names -> timm's (the rest of a block is the same in both)
_BLOCK_TO_TIMM = {"mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."}
_BLOCK_PARTS = tuple(
    f"{m}.{p}"
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.0", "mlp.2")
    for p in ("weight", "bias")
)


def config_from_meta(meta: Mapping[str, str]) -> tuple[str, ViTConfig]:
    """The preset name and ViTConfig of a run, from consolidate()'s ``catlip_config`` metadata."""
    try:
        run = load_json("the checkpoint's catlip_config metadata", text=meta.get("catlip_config") or "{}")
    except ValueError as err:
        raise InteropError(str(err)) from None
    model = run.get("model") or {}
    name = model.get("name")
    if not name:
        raise InteropError(
            "the checkpoint's catlip_config records no model.name (cannot tell the architecture)"
        )
    return name, run_vit_config(model)


def timm_model_args(cfg: ViTConfig, preset: str | None = None) -> tuple[str, dict[str, Any]]:
    """timm's model name and the kwargs that make it ``cfg`` (only the fields that differ)."""
    if cfg.stem != "patch":
        raise InteropError(
            f"a ViT with the {cfg.stem} stem (corenet's convolutions with batch norm) has no timm "
            "VisionTransformer counterpart: timm's patch embedding is one convolution, and its hybrid ViTs "
            "take a ResNet backbone, not this stem"
        )
    if cfg.pos_interp != "bicubic":
        raise InteropError(
            f"pos_interp {cfg.pos_interp} (corenet's position table, interpolated linearly over the sequence) "
            "has no timm VisionTransformer counterpart: timm resamples its table bicubically over the grid"
        )
    name = PRESET_TO_TIMM.get(preset or "")
    if name is None:  # not a preset: timm's architecture of the same norm eps (and width, if any)
        same_eps = [n for n, a in TIMM_ARCHS.items() if a.norm_eps == cfg.norm_eps]
        name = next((n for n in same_eps if TIMM_ARCHS[n].width == cfg.width), None)
        name = name or (same_eps or ["vit_base_patch16_224"])[0]
    if cfg.norm_eps != TIMM_ARCHS[name].norm_eps:
        raise InteropError(
            f"norm_eps {cfg.norm_eps} is not the LayerNorm eps {TIMM_ARCHS[name].norm_eps} of timm's {name}, and "
            "timm takes the norm layer as a callable, which the safetensors metadata cannot carry"
        )
    arch = TIMM_ARCHS[name]
    kwargs = {
        timm_key: getattr(cfg, ours)
        for ours, timm_key in _TIMM_KWARG.items()
        if getattr(cfg, ours) != getattr(arch, ours)
    }
    return name, kwargs


def to_timm_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ``encoder.*`` / ``head.*`` names -> timm's VisionTransformer names (same tensors).

    With a pre-norm, timm's patch embedding has no bias (``bias=not pre_norm``): ours is added to
    the position rows of the patches instead, the same sum before the norm."""
    out: dict[str, Tensor] = {}
    state = dict(state)
    if "encoder.norm_pre.weight" in state and "encoder.patch_embed.bias" in state:
        bias, pos = state.pop("encoder.patch_embed.bias"), state["encoder.pos_embed"]
        state["encoder.pos_embed"] = torch.cat([pos[:, :1], pos[:, 1:] + bias], dim=1)
    for key, value in state.items():
        if key.startswith("head."):
            out[key] = value
            continue
        if not key.startswith("encoder."):
            raise InteropError(f"{key} is not part of a CatLIP image model (encoder.*, head.*)")
        name = key[len("encoder.") :]
        if name.startswith("patch_embed."):
            name = "patch_embed.proj." + name[len("patch_embed.") :]
        elif name.startswith("blocks."):
            for ours, theirs in _BLOCK_TO_TIMM.items():
                name = re.sub(rf"^(blocks\.\d+\.){re.escape(ours)}", rf"\g<1>{theirs}", name)
        out[name] = value
    return out


def export_timm(state: Mapping[str, Tensor], meta: Mapping[str, str], out: str | Path) -> Path:
    """Write ``state`` (CatLIPModel / ImageClassifier names) as a timm VisionTransformer safetensors
    file; the metadata keeps ``meta`` and adds ``timm_model``, ``timm_kwargs`` (JSON),
    ``timm_num_classes`` and ``format`` = "timm"."""
    from safetensors.torch import save_file

    preset, cfg = config_from_meta(meta)
    name, kwargs = timm_model_args(cfg, preset)  # first: refuses what timm cannot build
    check_vit_state(state, cfg, where="the checkpoint")
    unknown = sorted(k for k in state if not k.startswith(("encoder.", "head.")))
    if unknown:
        raise InteropError(
            f"the checkpoint holds more than an image model ({unknown[:4]}...): only CatLIP / fine-tuned ViTs "
            "(encoder.*, head.*) export to timm's VisionTransformer"
        )
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    timm_state = {k: v.detach().float().contiguous() for k, v in to_timm_state(state).items()}
    metadata = dict(meta)
    metadata.update(
        timm_model=name,
        timm_kwargs=json.dumps(kwargs, sort_keys=True),
        timm_num_classes=str(num_classes),
        format="timm",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(timm_state, str(out), metadata=metadata)
    return out


HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"  # the hub's names, which timm reads


def timm_hf_config(
    meta: Mapping[str, str],
    num_classes: int,
    data_config: Mapping[str, Any],
    labels: Sequence[str],
    descriptions: Mapping[str, str],
) -> dict[str, Any]:
    """The ``config.json`` of an export folder, in timm's layout (``architecture``, ``num_classes``,
    ``model_args``, ``pretrained_cfg``, ``label_names``, ``label_descriptions``, as
    ``timm.models._hub.save_config_for_hf`` writes it), plus our keys: ``catlip_config`` (the run
    config), ``vocab`` (the vocabulary's size and SHA-256, and the labeler that labelled it) and
    ``catlip_version``. ``data_config``: the eval transform as timm's ``input_size``,
    ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean`` and ``std``, so that
    ``timm.data.create_transform(**resolve_data_config(model=m))`` is it."""
    preset, cfg = config_from_meta(meta)
    name, kwargs = timm_model_args(cfg, preset)
    if len(labels) != num_classes:
        raise InteropError(f"{len(labels)} label names for a head of {num_classes} classes")
    vocab = json.loads(meta.get("vocab") or "{}")
    pretrained_cfg = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "fixed_input_size": True,
        "num_classes": num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    return {
        "architecture": name,
        "num_classes": num_classes,
        "num_features": cfg.width,
        "global_pool": "token",
        "model_args": kwargs,
        "pretrained_cfg": pretrained_cfg,
        "label_names": list(labels),
        "label_descriptions": {n: descriptions[n] for n in labels if n in descriptions},
        "catlip_config": json.loads(meta.get("catlip_config") or "{}"),
        "vocab": {k: vocab[k] for k in ("vocab_size", "vocab_sha256", "labeler") if k in vocab},
        "catlip_version": meta.get("catlip_version", ""),
    }


def export_timm_folder(
    state: Mapping[str, Tensor],
    meta: Mapping[str, str],
    out: str | Path,
    *,
    data_config: Mapping[str, Any],
    labels: Sequence[str],
    descriptions: Mapping[str, str],
) -> Path:
    """An export folder as the Hugging Face hub and timm lay one out: ``model.safetensors``
    (:func:`export_timm`) and ``config.json`` (:func:`timm_hf_config`);
    ``timm.create_model("local-dir:" + out, pretrained=True)`` builds it. Checked before anything
    is written."""
    num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    config = timm_hf_config(meta, num_classes, data_config, labels, descriptions)
    out = Path(out)
    export_timm(state, meta, out / HF_WEIGHTS)
    (out / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def from_timm(t: _Taker) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    patch = t.pop("patch_embed.proj.weight")
    width = patch.shape[0]
    out["encoder.patch_embed.weight"] = patch
    out["encoder.patch_embed.bias"] = t.pop("patch_embed.proj.bias", torch.zeros(width))
    out["encoder.cls_token"] = t.pop("cls_token")
    pos = t.pop("pos_embed")  # (1, S, W), or (1, N, W) with no_embed_class
    if math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        pos = torch.cat([pos.new_zeros(1, 1, width), pos], dim=1)  # timm no_embed_class
    out["encoder.pos_embed"] = pos
    if "norm_pre.weight" in t.left:  # pre_norm=True (timm's CLIP towers)
        out["encoder.norm_pre.weight"], out["encoder.norm_pre.bias"] = (
            t.pop("norm_pre.weight"),
            t.pop("norm_pre.bias"),
        )
    for i in range(_depth(t.left, r"blocks\.(\d+)\.")):
        b = f"blocks.{i}."
        o = f"encoder.blocks.{i}."
        for ours, theirs in (
            ("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
            ("norm2", "norm2"), ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"),
        ):  # fmt: skip
            w = t.pop(b + theirs + ".weight")
            bias = t.pop(b + theirs + ".bias", torch.zeros(w.shape[0]))
            gamma = None
            if ours in ("attn.proj", "mlp.2"):
                gamma = t.pop(b + ("ls1" if ours == "attn.proj" else "ls2") + ".gamma", required=False)
            if gamma is not None:
                w, bias = _fold_layer_scale(w, bias, gamma)
            out[o + ours + ".weight"], out[o + ours + ".bias"] = w, bias
    out["encoder.norm.weight"], out["encoder.norm.bias"] = t.pop("norm.weight"), t.pop("norm.bias")
    if "head.weight" in t.left:
        out["head.weight"] = t.pop("head.weight")
        out["head.bias"] = t.pop("head.bias", torch.zeros(out["head.weight"].shape[0]))
    return out
