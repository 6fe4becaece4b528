"""What every converter shares: reading a checkpoint file into tensors, checking that a state dict
is one consistent ViT of ours (``encoder.*``, ``head.*``), and taking a source's tensors by name
so that what is left over at the end shows what did not map.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from catlip.models import ViTConfig, conv_stem_shapes

Tensor = torch.Tensor


class InteropError(ValueError):
    """A state dict that cannot be converted; the message says which tensor and why."""


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
