"""FLOP and byte counts of the CatLIP and CLIP training steps (forward + backward = 3 x forward).

Matrix multiplies only (2 FLOPs per multiply-add); norms, softmax and activations are a few
percent and left out, as MFU conventions do (PaLM appendix B). Per transformer layer with S tokens
of width W and an MLP of ratio r:

    qkv 6 S W^2 + attention 4 S^2 W + out-proj 2 S W^2 + MLP 4 r S W^2   (forward)
"""

from __future__ import annotations

from dataclasses import dataclass


def transformer_forward_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0) -> float:
    per_layer = (8 + 4 * mlp_ratio) * tokens * width**2 + 4 * tokens**2 * width
    return depth * per_layer


@dataclass(frozen=True)
class Tower:
    """A ViT image tower, or a text tower when ``patch == 0`` (``tokens`` = context length)."""

    width: int
    depth: int
    tokens: int
    patch: int = 0
    mlp_ratio: float = 4.0

    def forward_flops(self) -> float:
        flops = transformer_forward_flops(self.tokens, self.width, self.depth, self.mlp_ratio)
        if self.patch:
            flops += 2 * (self.tokens - 1) * 3 * self.patch**2 * self.width  # patch embedding
        return flops

    def params(self) -> float:
        return self.depth * (4 + 2 * self.mlp_ratio) * self.width**2


def image_tower(name: str) -> Tower:
    from catlip.models import vit_config

    cfg = vit_config(name)
    return Tower(cfg.width, cfg.depth, cfg.num_tokens, cfg.patch_size, cfg.mlp_ratio)


TEXT_TOWER = Tower(width=512, depth=12, tokens=77)  # open_clip's default text config


def catlip_flops_per_image(image: Tower, vocab: int) -> float:
    """Training FLOPs per image: image tower + Linear(width, V) head, forward and backward."""
    return 3 * (image.forward_flops() + 2 * image.width * vocab)


def clip_flops_per_image(image: Tower, text: Tower, embed: int, global_batch: int) -> float:
    """Training FLOPs per image-text pair, with the contrastive logits against the global batch.

    open_clip's local_loss computes two (B_local x B_global) logit matrices of depth ``embed`` per
    rank: 2 x 2 x B_global x embed FLOPs per local sample forward."""
    towers = image.forward_flops() + text.forward_flops() + 2 * (image.width + text.width) * embed
    logits = 2 * 2 * global_batch * embed
    return 3 * (towers + logits)


def clip_allgather_bytes(global_batch: int, world: int, embed: int, bytes_per_elem: int = 4) -> float:
    """Bytes each rank receives per step when image and text embeddings are all-gathered."""
    return 2 * (world - 1) / world * global_batch * embed * bytes_per_elem
