"""corenet's ``VisionTransformer`` (``corenet/modeling/models/classification/vit.py``) into our ViT:
``patch_emb``, ``cls_token``, ``pos_embed.pos_embed.pos_embed``, ``transformer.N.pre_norm_mha`` /
``pre_norm_ffn`` of ``TransformerEncoder`` or ``FlashTransformerEncoder``, ``post_transformer_norm``,
``classifier``, into the ``corenet_vit_*`` presets. Its convolutional stem (``patch_emb.{0,1,2}
.block``: conv k4 s4 + batch norm + GELU, conv k2 s2 + batch norm + GELU, conv k2 s2) is our
``ConvStem``, running statistics included. corenet keeps 196 positions and interpolates them
linearly over the flattened sequence for other resolutions: with ``image_size`` the interpolation
is done here once, as corenet does it. Dropped on purpose: ``neural_augmentor`` (a training-time
augmentation) and ``simple_fpn`` (detection). Its vocabulary pickle: catlip/convert/corenet_vocab.py.
"""

from __future__ import annotations

import torch

from catlip.convert.state import InteropError, Tensor, _depth, _Taker
from catlip.models import interpolate_pos_sequence


def corenet_pos_embed(pos: Tensor, num_patches: int) -> Tensor:
    """corenet's LearnablePositionalEmbedding for ``num_patches``: its (1, 1, 196, W) table,
    bilinearly interpolated over (sequence, width) like corenet's forward (so linearly over the
    flattened sequence), as (1, num_patches, W) (:func:`catlip.models.interpolate_pos_sequence`)."""
    return interpolate_pos_sequence(pos.reshape(1, -1, pos.shape[-1]), num_patches, num_prefix=0)


def from_corenet(t: _Taker, image_size: int | None) -> dict[str, Tensor]:
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
