"""Weights across libraries: our ViT to timm and back, open_clip and corenet towers, corenet's vocabulary.

``export_timm(state, meta, out)`` writes a CatLIP state dict (``encoder.*``, ``head.*``) under timm's
``VisionTransformer`` names, with ``timm_model`` and ``timm_kwargs`` (JSON) in the safetensors
metadata beside :func:`engine.checkpoint.consolidate`'s entries, so that::

    m = timm.create_model(meta["timm_model"], pretrained=False, num_classes=V, **json.loads(meta["timm_kwargs"]))
    m.load_state_dict(safetensors.torch.load_file(F), strict=True)

computes our logits (``timm_num_classes`` holds V). Our ViT is timm's with ``class_token=True``,
``global_pool="token"``, no fc-norm, a pre-norm only where ``ViTConfig.pre_norm``, qkv bias, exact GELU and LayerNorm eps 1e-6; the
key names differ only in ``patch_embed.proj`` and ``mlp.fc1``/``mlp.fc2``.

``load_encoder_state(path_or_state)`` reads, into our names (``encoder.*``, and ``head.*`` where the
source has a classifier), the image tower of
  * this engine: a catlip export or checkpoint state (``encoder.*``), a CLIP run's ``visual.*``;
  * timm's ``VisionTransformer`` (``patch_embed.proj``, ``blocks.N.mlp.fc1``, ``head``; also a
    ``catlip export --format timm`` file);
  * open_clip's visual tower (``conv1``, ``class_embedding``, ``positional_embedding``,
    ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
    ``ln_post``, ``proj``; a whole CLIP state's ``visual.*``);
  * corenet's ``VisionTransformer`` (``corenet/modeling/models/classification/vit.py``:
    ``patch_emb``, ``cls_token``, ``pos_embed.pos_embed.pos_embed``, ``transformer.N.pre_norm_mha``
    / ``pre_norm_ffn`` of ``TransformerEncoder`` or ``FlashTransformerEncoder``,
    ``post_transformer_norm``, ``classifier``), as its checkpoints hold it (``model_state_dict``;
    a training ``checkpoint.pt`` that also holds ``ema_state_dict`` gives the EMA weights, saying
    so), into the ``corenet_vit_*`` presets: its convolutional stem (``patch_emb.{0,1,2}.block``: conv
    k4 s4 + batch norm + GELU, conv k2 s2 + batch norm + GELU, conv k2 s2) is our ``ConvStem``
    (``ViTConfig(stem="conv")``), running statistics included.
The source is told by its key names. What maps exactly:
  * a norm before the blocks (open_clip ``ln_pre``, timm ``norm_pre``) is our ``norm_pre``
    (``ViTConfig.pre_norm``; the ``openclip_vit_*`` presets, eps 1e-5, export to timm's
    ``vit_*_clip_224``);
  * a layer scale (timm ``ls1.gamma``, open_clip ``ls_1.gamma``) is folded into the projection before
    it; a missing qkv or patch-embedding bias (open_clip's ``conv1`` has none) becomes zeros;
  * a position embedding without a class-token row (timm ``no_embed_class``, corenet: its class
    token gets none, as in DeiT III) gets a zero row, which is the same computation;
  * corenet keeps 196 positions and interpolates them linearly over the flattened sequence for
    other resolutions: the ``corenet_vit_*`` presets keep that table and do the same at every
    forward (``ViTConfig.pos_interp``); with ``image_size`` the interpolation is done here once,
    as corenet does it, for a model that holds a table per resolution.
What does not, and is refused with the reason (``partial=True`` leaves those tensors out, with a
warning, for an initialisation that will be trained further):
  * (to timm) the conv stem: timm's patch embedding is one convolution;
  * attention pooling, register tokens, an fc-norm (average pooling), q/k norms, other MLPs.
Dropped on purpose: open_clip's ``proj`` (the map into the joint image-text space; our encoder's
output is the ``ln_post``'d class token before it, the features a new classifier reads), corenet's
``neural_augmentor`` (a training-time augmentation) and ``simple_fpn`` (detection). Not visible in
a state dict, so not checked: the activation (OpenAI CLIP towers use QuickGELU, ours exact GELU)
and LayerNorm eps (open_clip's is 1e-5, ours 1e-6 unless ``ViTConfig.norm_eps`` says otherwise).

``read_corenet_vocab(pkl)`` reads corenet's released vocabulary, a pickled ``{"n5928118": count}``
(part of speech + unpadded WordNet 3.0 offset, most frequent first; the order is the head's row
order), with an unpickler that resolves no global at all, so a pickle that names a function (the
way pickles run code) is refused before anything runs; ``write_corenet_vocab`` writes it as our
vocabulary TSV (catlip/labels.py's ``Vocabulary``: wnid, synset name and lemma from WordNet).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from catlip.models import (
    ViTConfig,
    WeightsError,
    check_weights,
    conv_stem_shapes,
    interpolate_pos_sequence,
    resample_pos_embed,
    run_vit_config,
)
from catlip.readers import load_json

Tensor = torch.Tensor

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


class InteropError(ValueError):
    """A state dict that cannot be converted; the message says which tensor and why."""


# ----------------------------------------------------------------------------------- export


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


def check_vit_state(state: Mapping[str, Tensor], cfg: ViTConfig | None = None, *, where: str = "") -> dict:
    """Check that ``state`` (our names, ``encoder.*``) is one consistent ViT, and of ``cfg`` if given.

    Returns its dimensions (width, depth, patch_size, image_size, mlp_hidden, tokens); raises
    :class:`InteropError` naming the first tensor that is missing or of the wrong shape."""
    at = f" in {where}" if where else ""

    def get(key: str) -> Tensor:
        if key not in state:
            raise InteropError(f"{key} is missing{at}")
        return state[key]

    if "encoder.patch_embed.0.weight" in state:  # corenet's convolutional stem (ConvStem)
        width, p, stem_kind = get("encoder.patch_embed.6.weight").shape[0], 16, "conv"
        stem = {f"encoder.patch_embed.{k}": v for k, v in conv_stem_shapes(width).items()}
    else:
        patch = get("encoder.patch_embed.weight")  # (W, 3, p, p)
        if patch.ndim != 4 or patch.shape[1] != 3 or patch.shape[2] != patch.shape[3]:
            raise InteropError(
                f"encoder.patch_embed.weight{at} has shape {tuple(patch.shape)}, expected (W, 3, p, p)"
            )
        width, p, stem_kind = patch.shape[0], patch.shape[2], "patch"
        stem = {"encoder.patch_embed.weight": tuple(patch.shape), "encoder.patch_embed.bias": (width,)}
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))), default=-1
    )
    hidden = get("encoder.blocks.0.mlp.0.weight").shape[0] if depth else 4 * width
    tokens = get("encoder.pos_embed").shape[1] if get("encoder.pos_embed").ndim == 3 else -1
    grid = math.isqrt(max(tokens - 1, 0))
    pre_norm = "encoder.norm_pre.weight" in state
    expected = {
        **stem,
        **({"encoder.norm_pre.weight": (width,), "encoder.norm_pre.bias": (width,)} if pre_norm else {}),
        "encoder.cls_token": (1, 1, width),
        "encoder.pos_embed": (1, grid * grid + 1, width),
        "encoder.norm.weight": (width,),
        "encoder.norm.bias": (width,),
    }
    block = {
        "norm1.weight": (width,), "norm1.bias": (width,),
        "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,),
        "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
        "norm2.weight": (width,), "norm2.bias": (width,),
        "mlp.0.weight": (hidden, width), "mlp.0.bias": (hidden,),
        "mlp.2.weight": (width, hidden), "mlp.2.bias": (width,),
    }  # fmt: skip
    for i in range(depth):
        expected.update({f"encoder.blocks.{i}.{k}": s for k, s in block.items()})
    for key, shape in expected.items():
        if tuple(get(key).shape) != shape:
            raise InteropError(f"{key}{at} has shape {tuple(state[key].shape)}, expected {shape}")
    extra = sorted(k for k in state if k.startswith("encoder.") and k not in expected)
    if extra:
        raise InteropError(f"tensors our ViT does not have{at}: {extra[:6]}")
    if "head.weight" in state:
        hw, hb = state["head.weight"], state.get("head.bias")
        if hw.ndim != 2 or hw.shape[1] != width or hb is None or tuple(hb.shape) != (hw.shape[0],):
            raise InteropError(
                f"head{at}: weight {tuple(hw.shape)}, bias {None if hb is None else tuple(hb.shape)}; "
                f"expected (V, {width}) and (V,)"
            )
    dims = {
        "width": width,
        "depth": depth,
        "patch_size": p,
        "image_size": grid * p,
        "mlp_hidden": hidden,
        "stem": stem_kind,
        "pre_norm": pre_norm,
    }
    if cfg is not None:
        want = {
            "stem": cfg.stem,
            "pre_norm": cfg.pre_norm,
            "width": cfg.width,
            "depth": cfg.depth,
            "patch_size": cfg.patch_size,
            "mlp_hidden": int(cfg.width * cfg.mlp_ratio),
        }
        if cfg.pos_interp == "bicubic":  # the table is for image_size
            want["image_size"] = cfg.image_size
        else:  # corenet's: a fixed number of rows at any image_size
            dims["position rows"], want["position rows"] = grid * grid + 1, cfg.pos_rows
        wrong = {k: (dims[k], v) for k, v in want.items() if dims[k] != v}
        if wrong:
            raise InteropError(
                f"the weights{at} are not the configured model: "
                + ", ".join(f"{k} {got} (config says {v})" for k, (got, v) in wrong.items())
            )
    return dims


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


# ----------------------------------------------------------------------------------- import


def _read_state(src: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(src, Mapping):
        return dict(src)
    path = Path(src)
    if not path.is_file():
        raise InteropError(f"{path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise InteropError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # also what a file that is no torch file at all gives
        raise InteropError(
            f"{path}: not a torch state dict, or one that asks to build objects (weights_only load refused it: "
            f"{str(err)[:200]})"
        ) from None
    if not isinstance(obj, Mapping):
        raise InteropError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


_WRAPPERS = ("ema_state_dict", "model_state_dict", "state_dict", "model", "module")


def _unwrap(state: dict[str, Any]) -> tuple[dict[str, Tensor], str | None]:
    """The tensors of a checkpoint: descend into {"ema_state_dict" | "model_state_dict" |
    "state_dict" | "model" | "module": {...}} wrappers, drop non-tensors, strip DDP's "module." and
    compile's "_orig_mod.". A corenet training checkpoint (``checkpoint.pt``) holds the weights
    (``model_state_dict``) and their EMA (``ema_state_dict``, what CatLIP's results use): the EMA is
    taken, and the returned note says so (None when there was no choice)."""
    note = None
    for _ in range(3):
        found = [k for k in _WRAPPERS if isinstance(state.get(k), Mapping)]
        if not found or any(isinstance(v, Tensor) for v in state.values()):
            break
        if found[0] == "ema_state_dict" and "model_state_dict" in found:
            note = "ema_state_dict (the EMA weights), not model_state_dict"
        state = dict(state[found[0]])
    out = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            for prefix in ("module.", "_orig_mod."):
                key = key.removeprefix(prefix)
            out[key] = value
    return out, note


def _kind(s: Mapping[str, Tensor]) -> str | None:
    if "patch_embed.weight" in s and "cls_token" in s:
        return "catlip"
    if "patch_embed.proj.weight" in s:
        return "timm"
    if "conv1.weight" in s and "class_embedding" in s:
        return "open_clip"
    if any(k.startswith("patch_emb.") for k in s) and any(k.startswith("transformer.0.pre_norm_") for k in s):
        return "corenet"
    return None


def detect_source(state: Mapping[str, Tensor]) -> tuple[str, str]:
    """(kind, prefix) of the image tower in ``state``: kind is "catlip" | "timm" | "open_clip" |
    "corenet", prefix the key prefix it lives under ("", "encoder.", "visual.", ...)."""
    prefixes = sorted({""} | {k[: k.index(".") + 1] for k in state if "." in k}, key=len)
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        kind = _kind(sub)
        if kind:
            return kind, prefix
    sample = ", ".join(sorted(state)[:8])
    raise InteropError(
        f"not a ViT image tower this module reads (ours, timm, open_clip or corenet); the first keys are: {sample}"
    )


def _fold_layer_scale(w: Tensor, b: Tensor | None, gamma: Tensor) -> tuple[Tensor, Tensor | None]:
    """x + gamma * (W x + b) == x + (diag(gamma) W) x + gamma * b."""
    return w * gamma[:, None], None if b is None else b * gamma


class _Taker:
    """Takes tensors out of a source state by name; what is left over at the end was not mapped."""

    def __init__(self, state: Mapping[str, Tensor], where: str) -> None:
        self.left = dict(state)
        self.where = where

    def pop(self, key: str, default: Tensor | None = None, *, required: bool = True) -> Tensor | None:
        if key in self.left:
            return self.left.pop(key)
        if default is None and required:
            raise InteropError(f"{key} is missing in {self.where}")
        return default

    def take_prefix(self, prefix: str) -> list[str]:
        keys = [k for k in self.left if k.startswith(prefix)]
        for k in keys:
            del self.left[k]
        return keys


def _depth(state: Mapping[str, Tensor], pattern: str) -> int:
    return 1 + max((int(m.group(1)) for k in state if (m := re.match(pattern, k))), default=-1)


def _from_timm(t: _Taker) -> dict[str, Tensor]:
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


def _from_open_clip(t: _Taker) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    patch = t.pop("conv1.weight")  # (W, 3, p, p), no bias
    width = patch.shape[0]
    out["encoder.patch_embed.weight"] = patch
    out["encoder.patch_embed.bias"] = t.pop("conv1.bias", torch.zeros(width))
    out["encoder.cls_token"] = t.pop("class_embedding").reshape(1, 1, width)
    out["encoder.pos_embed"] = t.pop("positional_embedding").unsqueeze(0)  # (1, S, W)
    if "ln_pre.weight" in t.left:  # open_clip's default (no_ln_pre=False)
        out["encoder.norm_pre.weight"], out["encoder.norm_pre.bias"] = (
            t.pop("ln_pre.weight"),
            t.pop("ln_pre.bias"),
        )
    for i in range(_depth(t.left, r"transformer\.resblocks\.(\d+)\.")):
        b = f"transformer.resblocks.{i}."
        o = f"encoder.blocks.{i}."
        for ours, w_key, b_key in (
            ("norm1", "ln_1.weight", "ln_1.bias"),
            ("attn.qkv", "attn.in_proj_weight", "attn.in_proj_bias"),
            ("attn.proj", "attn.out_proj.weight", "attn.out_proj.bias"),
            ("norm2", "ln_2.weight", "ln_2.bias"),
            ("mlp.0", "mlp.c_fc.weight", "mlp.c_fc.bias"),
            ("mlp.2", "mlp.c_proj.weight", "mlp.c_proj.bias"),
        ):
            w = t.pop(b + w_key)
            bias = t.pop(b + b_key, torch.zeros(w.shape[0]))
            if ours in ("attn.proj", "mlp.2"):
                gamma = t.pop(b + ("ls_1" if ours == "attn.proj" else "ls_2") + ".gamma", required=False)
                if gamma is not None:
                    w, bias = _fold_layer_scale(w, bias, gamma)
            out[o + ours + ".weight"], out[o + ours + ".bias"] = w, bias
    out["encoder.norm.weight"], out["encoder.norm.bias"] = t.pop("ln_post.weight"), t.pop("ln_post.bias")
    t.pop("proj", required=False)  # the joint-space projection: see the module docstring
    return out


def corenet_pos_embed(pos: Tensor, num_patches: int) -> Tensor:
    """corenet's LearnablePositionalEmbedding for ``num_patches``: its (1, 1, 196, W) table,
    bilinearly interpolated over (sequence, width) like corenet's forward (so linearly over the
    flattened sequence), as (1, num_patches, W) (:func:`catlip.models.interpolate_pos_sequence`)."""
    return interpolate_pos_sequence(pos.reshape(1, -1, pos.shape[-1]), num_patches, num_prefix=0)


def _from_corenet(t: _Taker, image_size: int | None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    # The stem: corenet's ConvLayer2d blocks patch_emb.{0,1,2}.block.{conv,norm} (conv k4 s4 + BN +
    # GELU, conv k2 s2 + BN + GELU, conv k2 s2) -> our ConvStem's layers 0, 1 | 3, 4 | 6.
    for theirs, (conv, norm) in {0: (0, 1), 1: (3, 4), 2: (6, None)}.items():
        b = f"patch_emb.{theirs}.block."
        out[f"encoder.patch_embed.{conv}.weight"] = t.pop(b + "conv.weight")
        if theirs == 2:
            w = out["encoder.patch_embed.6.weight"]
            out["encoder.patch_embed.6.bias"] = t.pop(b + "conv.bias", torch.zeros(w.shape[0]))
        else:
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"encoder.patch_embed.{norm}.{k}"] = t.pop(b + "norm." + k)
    cls = t.pop("cls_token", required=False)
    if cls is None:
        raise InteropError(
            f"{t.where} has no cls_token: a corenet ViT with no_cls_token pools by averaging, our ViT reads its class token"
        )
    width = cls.shape[-1]
    out["encoder.cls_token"] = cls.reshape(1, 1, width)
    pos = t.pop("pos_embed.pos_embed.pos_embed", required=False)
    if pos is None:
        raise InteropError(
            f"{t.where} has no learnable position embedding (pos_embed.pos_embed.pos_embed): a corenet ViT with "
            "sinusoidal_pos_emb is not supported"
        )
    table_patches = pos.shape[-2]
    if image_size is None:
        num_patches = table_patches
    else:
        stride = 16  # corenet's stem: 4 * 2 * 2 (classification output stride)
        num_patches = (image_size // stride) ** 2
    # corenet adds the embedding to the patches before the class token joins: the class token's row is 0
    out["encoder.pos_embed"] = torch.cat(
        [pos.new_zeros(1, 1, width), corenet_pos_embed(pos, num_patches)], dim=1
    )
    for i in range(_depth(t.left, r"transformer\.(\d+)\.")):
        b = f"transformer.{i}."
        o = f"encoder.blocks.{i}."
        out_proj = (
            b + "pre_norm_mha.1.out_proj_attn."
            if b + "pre_norm_mha.1.out_proj_attn.weight" in t.left
            else (b + "pre_norm_mha.1.out_proj.")
        )  # FlashTransformerEncoder's FlashMultiHeadSelfAttention | TransformerEncoder's MultiHeadAttention
        for ours, theirs in (
            ("norm1", b + "pre_norm_mha.0."),
            ("attn.qkv", b + "pre_norm_mha.1.qkv_proj."),
            ("attn.proj", out_proj),
            ("norm2", b + "pre_norm_ffn.0."),
            ("mlp.0", b + "pre_norm_ffn.1."),
            ("mlp.2", b + "pre_norm_ffn.4."),
        ):
            w = t.pop(theirs + "weight")
            out[o + ours + ".weight"] = w
            out[o + ours + ".bias"] = t.pop(theirs + "bias", torch.zeros(w.shape[0]))
    out["encoder.norm.weight"] = t.pop("post_transformer_norm.weight")
    out["encoder.norm.bias"] = t.pop("post_transformer_norm.bias")
    if "classifier.weight" in t.left:
        out["head.weight"] = t.pop("classifier.weight")
        out["head.bias"] = t.pop("classifier.bias", torch.zeros(out["head.weight"].shape[0]))
    t.take_prefix("neural_augmentor.")  # RangeAugment's parameters: training-time only
    t.take_prefix("simple_fpn.")  # detection neck
    return out


_WHY = {  # leftover tensor prefix (in the source's names) -> why our ViT cannot hold it
    "fc_norm.": "timm's fc_norm (average pooling): our ViT reads the normed class token",
    "reg_token": "register tokens: our ViT has none",
    "attn_pool": "attention pooling: our ViT reads the class token",
    "q_norm.": "q/k norms in attention: our attention has none",
    "k_norm.": "q/k norms in attention: our attention has none",
    "norm.": "a norm inside the MLP or attention (timm's scale_norm / scale_mlp_norm): ours has none",
}


def _why(key: str) -> str:
    for prefix, why in _WHY.items():
        if prefix in key:
            return why
    return "no counterpart in our ViT"


def load_encoder_state(
    src: str | Path | Mapping[str, Any],
    *,
    image_size: int | None = None,
    partial: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Tensor]:
    """Our ``encoder.*`` (and ``head.*``, when the source has a classifier) from a state dict or a
    file (.safetensors, or a torch file read with ``weights_only=True``) of our ViT, timm's,
    open_clip's visual tower or corenet's ViT; see the module docstring for what maps and what is
    refused. ``image_size``: resample the position embedding to that resolution (corenet's own
    linear rule for corenet; bicubic over the grid, as timm's ``resample_abs_pos_embed``, for the
    others). ``partial``: leave out, with a warning, the tensors our ViT cannot hold instead of
    refusing. Every shape is checked, and weights that are not floating point or not finite are
    refused; errors are :class:`InteropError` (a ValueError). A checkpoint holding both weights and
    their EMA (corenet's ``checkpoint.pt``) gives the EMA, and one line through ``log`` says so."""
    where = str(src) if not isinstance(src, Mapping) else "the state dict"
    state, note = _unwrap(_read_state(src))
    if note:
        log(f"{where}: loaded {note}")
    kind, prefix = detect_source(state)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:  # before any arithmetic or cast: int8 weights would become meaningless floats
        check_weights({prefix + k: v for k, v in sub.items()}, where)
    except WeightsError as err:
        raise InteropError(str(err)) from None
    t = _Taker(sub, f"{where} ({kind}{' under ' + prefix if prefix else ''})")
    if kind == "catlip":
        out = {"encoder." + k: t.pop(k) for k in list(t.left) if k.split(".")[0] in _OUR_TOWER}
        if prefix == "encoder.":
            out.update({k: v for k, v in state.items() if k.startswith("head.")})
        # the rest of a whole CatLIP / CLIP state (its text tower, projections) is not the image tower
        t.left.clear()
    elif kind == "timm":
        out = _from_timm(t)
    elif kind == "open_clip":
        out = _from_open_clip(t)
    else:
        out = _from_corenet(t, image_size)
    if t.left:
        reasons: dict[str, list[str]] = {}
        for key in sorted(t.left):
            reasons.setdefault(_why(key), []).append(key)
        msg = "; ".join(f"{why} ({len(keys)} tensors, e.g. {keys[0]})" for why, keys in reasons.items())
        if not partial:
            raise InteropError(
                f"{t.where}: cannot be represented exactly in our ViT: {msg}. "
                "load_encoder_state(..., partial=True) leaves those tensors out (an initialisation to fine-tune)"
            )
        warnings.warn(f"{t.where}: left out: {msg}", stacklevel=2)
    out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}  # BN's count stays int
    return _checked(out, t.where, image_size, kind)


_OUR_TOWER = {"patch_embed", "cls_token", "pos_embed", "blocks", "norm"}


def _checked(out: dict[str, Tensor], where: str, image_size: int | None, kind: str) -> dict[str, Tensor]:
    patch = out.get("encoder.patch_embed.weight")
    p = 16 if "encoder.patch_embed.0.weight" in out else (None if patch is None else patch.shape[-1])
    if image_size is not None and kind != "corenet" and p is not None:
        if image_size % p:
            raise InteropError(f"image_size {image_size} is not a multiple of the patch size {p} of {where}")
        if out["encoder.pos_embed"].shape[1] != (image_size // p) ** 2 + 1:
            out["encoder.pos_embed"] = resample_pos_embed(out["encoder.pos_embed"], (image_size // p,) * 2)
    check_vit_state(out, where=where)
    return out


# ------------------------------------------------------------------------------- vocabulary


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a global (a class or function): this reader loads plain data only."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers; any global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedPickle(
            f"the pickle names the global {module}.{name}; a vocabulary is plain data (a dict of str -> int), "
            "so it is refused without running anything"
        )


def read_corenet_pickle(path: str | Path) -> dict[str, int]:
    """corenet's vocabulary pickle ({"n5928118": count, ...}, in its order), loaded with no globals."""
    data = Path(path).read_bytes()
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(data)).load()
    except RefusedPickle as err:
        raise InteropError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InteropError(f"{path}: not a readable pickle ({err})") from None
    if not isinstance(obj, dict):
        raise InteropError(
            f"{path}: holds a {type(obj).__name__}, expected corenet's dict {{'n5928118': count}}"
        )
    for key, count in obj.items():
        if not (isinstance(key, str) and re.fullmatch(r"n\d{1,8}", key)):
            raise InteropError(
                f"{path}: key {key!r} is not corenet's pos + offset ('n' + WordNet noun offset)"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InteropError(f"{path}: count of {key} is {count!r}, not a non-negative integer")
    return obj


def _wordnet_name(offset: int) -> str:
    from catlip.nltk_setup import wordnet

    with warnings.catch_warnings():  # NLTK warns, then returns None, for an offset it does not know
        warnings.simplefilter("ignore")
        synset = wordnet().synset_from_pos_and_offset("n", offset)
    if synset is None:
        raise LookupError(f"no noun synset at offset {offset}")
    return synset.name()


def read_corenet_vocab(
    path: str | Path, *, vocab_size: int | None = None, synset_name: Callable[[int], str] | None = None
):
    """corenet's vocabulary pickle as our :class:`catlip.labels.Vocabulary`, in corenet's order (the
    order of its head's rows), cut to its first ``vocab_size`` entries as corenet's dataset does.
    ``synset_name(offset)`` gives a synset's name (default: NLTK's WordNet 3.0, as ``catlip vocab``)."""
    from catlip.labels import Vocabulary, wnid

    counts = read_corenet_pickle(path)
    keys = list(counts)[:vocab_size] if vocab_size is not None else list(counts)
    name_of = synset_name or _wordnet_name
    try:
        from nltk.corpus.reader.wordnet import WordNetError
    except ImportError:  # a supplied lookup without NLTK installed
        WordNetError = LookupError  # noqa: N806
    wnids, names = [], []
    for key in keys:
        offset = int(key[1:])
        try:
            names.append(name_of(offset))
        except (WordNetError, LookupError, ValueError) as err:
            raise InteropError(f"{path}: {key} is no WordNet 3.0 noun synset ({err})") from None
        wnids.append(wnid(offset))
    return Vocabulary(wnids, names, [counts[k] for k in keys])


def write_corenet_vocab(
    pkl: str | Path,
    out: str | Path,
    *,
    vocab_size: int | None = None,
    synset_name: Callable[[int], str] | None = None,
) -> Path:
    """Convert corenet's vocabulary pickle to our vocabulary TSV (``catlip vocab``'s format)."""
    vocab = read_corenet_vocab(pkl, vocab_size=vocab_size, synset_name=synset_name)
    vocab.save(out)
    return Path(out)
