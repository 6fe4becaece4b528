"""The CLIP baseline in the same engine: this package's ViT image tower + open_clip's text tower.

Image tower: :class:`catlip.models.VisionTransformer` (the class-token features after its final
LayerNorm), then a bias-free projection to the embedding dim, as open_clip's ``proj``. Text tower:
open_clip's default ``TextTransformer`` (token + learned position embeddings, pre-norm blocks with
a causal mask, final LayerNorm, features of the end-of-text token, i.e. the position of the
largest id, then a bias-free projection). Both outputs are L2-normalised.

A learnable temperature: ``logit_scale`` (log of the scale; init log(1/0.07) for CLIP, log(10)
for SigLIP) and, for SigLIP, ``logit_bias`` (init -10). ``forward`` returns the features with
``logit_scale.exp()`` (and the bias), ready for :mod:`catlip.contrastive`.

Presets (``CLIP_PRESETS``; the image tower is the ``vit_*`` preset of the same suffix, the text
tower and embedding dim are open_clip's for that model):
  clip_vit_tiny   vit_tiny + text width 64, 2 layers, 2 heads, embed 64: a CPU test model
  clip_vit_small  ViT-S/16 + text 384 / 12 layers / 6 heads, embed 384 (open_clip ViT-S-16)
  clip_vit_b16    ViT-B/16 + the default text tower (512 / 12 / 8), embed 512 (ViT-B-16)
  clip_vit_l16    ViT-L/16 + text 768 / 12 / 12, embed 768 (ViT-L-16)
  clip_vit_h16    corenet's ViT-H/16 + text 1024 / 24 / 16, embed 1024 (ViT-H-16's text tower)
  clip_vit_h14    open_clip's ViT-H/14 + text 1024 / 24 / 16, embed 1024 (ViT-H-14)
All text towers: vocabulary 49,408 (catlip.tokenizer), context 77, MLP ratio 4, LayerNorm eps 1e-5.

Attention uses the ViT's backend names: "sdpa" (``is_causal=True``) and "math" (explicit mask,
the reference). Pure PyTorch; DeepSpeed and compile wrapping live in engine/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from catlip.models import Block, VisionTransformer, ViTConfig, vit_config

TEXT_ATTN_IMPLS = ("sdpa", "math")  # backends with a causal mask


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    vision: ViTConfig = field(default_factory=lambda: vit_config("vit_b16"))
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # SigLIP: -10; None: no bias (CLIP)


def _preset(vit: str, embed_dim: int, width: int, depth: int, heads: int) -> CLIPConfig:
    text = TextConfig(width=width, depth=depth, heads=heads)
    return CLIPConfig(vision=vit_config(vit), text=text, embed_dim=embed_dim)


CLIP_PRESETS: dict[str, CLIPConfig] = {
    "clip_vit_tiny": _preset("vit_tiny", 64, 64, 2, 2),
    "clip_vit_small": _preset("vit_small", 384, 384, 12, 6),
    "clip_vit_b16": _preset("vit_b16", 512, 512, 12, 8),
    "clip_vit_l16": _preset("vit_l16", 768, 768, 12, 12),
    "clip_vit_h16": _preset("vit_h16", 1024, 1024, 24, 16),
    "clip_vit_h14": _preset("vit_h14", 1024, 1024, 24, 16),
}

SIGLIP_INIT = {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}


def clip_config(name: str, *, siglip: bool = False, **overrides) -> CLIPConfig:
    """A preset by name; ``siglip=True`` sets SigLIP's logit scale and bias; fields overridable."""
    if name not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP model {name!r}; presets: {', '.join(CLIP_PRESETS)}")
    return replace(CLIP_PRESETS[name], **({**SIGLIP_INIT, **overrides} if siglip else overrides))


class TextTransformer(nn.Module):
    """Token ids (B, context) -> end-of-text features (B, embed_dim), unnormalised."""

    def __init__(
        self, cfg: TextConfig, embed_dim: int, *, attn_impl: str = "sdpa", grad_checkpointing: bool = False
    ) -> None:
        super().__init__()
        if attn_impl not in TEXT_ATTN_IMPLS:
            raise ValueError(f"text attn_impl must be one of {TEXT_ATTN_IMPLS} (causal), got {attn_impl!r}")
        self.cfg = cfg
        self.grad_checkpointing = grad_checkpointing
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        # open_clip's name: decayed like the token embedding (param_groups.no_weight_decay spares pos_embed).
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(
            Block(
                cfg.width,
                cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                norm_eps=cfg.norm_eps,
                attn_impl=attn_impl,
                causal=True,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """open_clip's text-tower init: residual projections scaled by (2 * depth) ** -0.5."""
        w = self.cfg.width
        proj_std = w**-0.5 * (2 * self.cfg.depth) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=w**-0.5)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.normal_(block.mlp[0].weight, std=(2 * w) ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
            for lin in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                nn.init.zeros_(lin.bias)
        nn.init.normal_(self.proj.weight, std=w**-0.5)

    def set_attn_impl(self, impl: str) -> None:
        if impl not in TEXT_ATTN_IMPLS:
            raise ValueError(f"text attn_impl must be one of {TEXT_ATTN_IMPLS} (causal), got {impl!r}")
        for block in self.blocks:
            block.attn.attn_impl = impl

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position features after the final LayerNorm: (B, S, width)."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"expected token ids (B, <= {self.cfg.context_length}), got {tuple(tokens.shape)}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (B, S, W)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(tokens)  # (B, S, W)
        eot = tokens.argmax(dim=-1)  # <end_of_text> has the largest id (49407)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])  # (B, E)


class CLIPOutput(NamedTuple):
    image_features: torch.Tensor  # (B, E), unit norm
    text_features: torch.Tensor  # (B, E), unit norm
    logit_scale: torch.Tensor  # scalar, exp(log scale)
    logit_bias: torch.Tensor | None  # scalar (SigLIP) or None (CLIP)


class CLIPModel(nn.Module):
    """Image tower + text tower + learnable temperature (and SigLIP's bias).

    ``forward(images, tokens)`` -> :class:`CLIPOutput` (image_features, text_features,
    logit_scale.exp(), logit_bias or None), which unpacks into ``ContrastiveLoss`` or
    ``SigLipLoss``: ``loss_fn(*model(images, tokens))``.
    """

    def __init__(
        self,
        cfg: CLIPConfig | str,
        *,
        attn_impl: str = "sdpa",
        text_attn_impl: str | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        """``text_attn_impl`` defaults to ``attn_impl`` where that backend masks causally, else sdpa."""
        super().__init__()
        cfg = clip_config(cfg) if isinstance(cfg, str) else cfg
        self.cfg = cfg
        self.visual = VisionTransformer(
            cfg.vision, attn_impl=attn_impl, grad_checkpointing=grad_checkpointing
        )
        self.visual_proj = nn.Linear(cfg.vision.width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=cfg.vision.width**-0.5)
        self.text = TextTransformer(
            cfg.text,
            cfg.embed_dim,
            attn_impl=text_attn_impl or (attn_impl if attn_impl in TEXT_ATTN_IMPLS else "sdpa"),
            grad_checkpointing=grad_checkpointing,
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        bias = cfg.init_logit_bias
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual_proj(self.visual(images))  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(tokens)  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        return CLIPOutput(
            self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp(), self.logit_bias
        )
