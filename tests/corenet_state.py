"""A state dict with corenet's ViT names and shapes, for the interop and fine-tuning tests."""

from __future__ import annotations

import torch


def corenet_vit(width: int = 96, depth: int = 3, classes: int = 11, *, flash: bool = True, seed: int = 0):
    """A state dict with corenet's VisionTransformer names and shapes (corenet/modeling/models/
    classification/vit.py, modules/flash_transformer.py, modules/transformer.py,
    layers/positional_embedding.py, layers/conv_layer.py), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    stem = max(32, width // 4)
    s = {
        "patch_emb.0.block.conv.weight": r(stem, 3, 4, 4),
        "patch_emb.1.block.conv.weight": r(stem, stem, 2, 2),
        "patch_emb.2.block.conv.weight": r(width, stem, 2, 2),
        "patch_emb.2.block.conv.bias": r(width),
        "cls_token": r(1, 1, width),
        "pos_embed.pos_embed.pos_embed": r(1, 1, 196, width),
        "post_transformer_norm.weight": r(width),
        "post_transformer_norm.bias": r(width),
        "classifier.weight": r(classes, width),
        "classifier.bias": r(classes),
        "neural_augmentor.brightness._low": r(1),
    }
    for i in (0, 1):
        s |= {
            f"patch_emb.{i}.block.norm.weight": r(stem),
            f"patch_emb.{i}.block.norm.bias": r(stem),
            f"patch_emb.{i}.block.norm.running_mean": r(stem),
            f"patch_emb.{i}.block.norm.running_var": r(stem).abs(),
            f"patch_emb.{i}.block.norm.num_batches_tracked": torch.tensor(5),
        }
    out_proj = "out_proj_attn" if flash else "out_proj"
    for i in range(depth):
        b = f"transformer.{i}."
        s |= {
            b + "pre_norm_mha.0.weight": r(width), b + "pre_norm_mha.0.bias": r(width),
            b + "pre_norm_mha.1.qkv_proj.weight": r(3 * width, width), b + "pre_norm_mha.1.qkv_proj.bias": r(3 * width),
            b + f"pre_norm_mha.1.{out_proj}.weight": r(width, width), b + f"pre_norm_mha.1.{out_proj}.bias": r(width),
            b + "pre_norm_ffn.0.weight": r(width), b + "pre_norm_ffn.0.bias": r(width),
            b + "pre_norm_ffn.1.weight": r(4 * width, width), b + "pre_norm_ffn.1.bias": r(4 * width),
            b + "pre_norm_ffn.4.weight": r(width, 4 * width), b + "pre_norm_ffn.4.bias": r(width),
        }  # fmt: skip
    return s
