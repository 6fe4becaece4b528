"""``load_encoder_state``: the image tower of any source we read, in our names (``encoder.*``, and
``head.*`` where the source has a classifier). The source is told by its key names
(``detect_source``), then its converter maps it: this engine's own states (a catlip export or
checkpoint, a CLIP run's ``visual.*``) as they are, timm (catlip/convert/timm.py), open_clip
(open_clip.py), corenet (corenet.py). What no converter maps is refused with the reason, or left
out with a warning (``partial=True``); every shape is checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from catlip.convert.corenet import from_corenet
from catlip.convert.open_clip import from_open_clip
from catlip.convert.state import InteropError, Tensor, _read_state, _Taker, _unwrap, check_vit_state
from catlip.convert.timm import from_timm
from catlip.models import WeightsError, check_weights, resample_pos_embed


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
    open_clip's visual tower or corenet's ViT; see catlip/convert/__init__.py for what maps and what is
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
        out = from_timm(t)
    elif kind == "open_clip":
        out = from_open_clip(t)
    else:
        out = from_corenet(t, image_size)
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
