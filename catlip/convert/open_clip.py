"""open_clip's visual tower into our ViT: ``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``, ``ln_post`` (a whole CLIP state's ``visual.*`` too). A layer scale (``ls_1.gamma``)
is folded into the projection before it, the missing patch-embedding bias becomes zeros, and
``proj`` (the map into the joint image-text space) is dropped: our encoder's output is the
``ln_post``'d class token before it, the features a new classifier reads. Not visible in a state
dict, so not checked: OpenAI CLIP towers use QuickGELU (ours exact GELU) and LayerNorm eps 1e-5
(the ``openclip_vit_*`` presets say so).
"""

from __future__ import annotations

import torch

from catlip.convert.state import Tensor, _depth, _fold_layer_scale, _Taker


def from_open_clip(t: _Taker) -> dict[str, Tensor]:
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
