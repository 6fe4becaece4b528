"""Vision transformers and the CatLIP model (image tower + linear head over the synset vocabulary).

Pure PyTorch: no DeepSpeed, DALI or compile wrapping here (that lives in engine/). The backends are
the kernels' own dispatchers, called with the module's setting: attention through
``kernels.flash_attention.attention_qkv(qkv, causal=..., impl=attn_impl)`` ("sdpa":
torch.nn.functional.scaled_dot_product_attention; "math": kernels.reference.attention_reference,
the numerical reference; "triton": the fused kernel, reading the packed qkv buffer without
copies, non-causal only), the head's loss through ``kernels.linear_bce.linear_bce(...,
impl=loss_impl)`` ("torch" | "triton"). Triton is imported only when a "triton" backend runs.

Presets (``VIT_PRESETS``):
  vit_tiny   64 px, patch 8, width 96, 4 layers, 3 heads: a CPU demo/test model (65 tokens)
  vit_small  ViT-S/16: 224 px, width 384, 12 layers, 6 heads
  vit_b16    ViT-B/16: width 768, 12 layers, 12 heads (197 tokens)
  vit_l16    ViT-L/16: width 1024, 24 layers, 16 heads
  vit_h16    corenet's ViT-H/16: width 1280, 32 layers, 20 heads, head dim 64
  vit_h14    open_clip's ViT-H/14: width 1280, 32 layers, 16 heads, head dim 80, 257 tokens
  openclip_vit_{b16,l14,h14}  open_clip's towers: a LayerNorm before the blocks (``ln_pre``,
             ``ViTConfig.pre_norm``), eps 1e-5; the architecture of its released weights
  corenet_vit_{tiny,b16,l16,h16}  with corenet's convolutional stem (``ConvStem``) and position
             table (``pos_interp="corenet"``: 196 rows at any resolution, interpolated linearly
             over the sequence): vit_tiny's width and depth at 64 px, patch 16 (CPU tests), and
             the B/L/H-16 towers, the architecture of corenet's released CatLIP checkpoints
             (catlip.convert loads them)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kernels.flash_attention import ATTN_IMPLS, attention_qkv
from kernels.linear_bce import IMPLS as LOSS_IMPLS
from kernels.linear_bce import linear_bce

STEMS = ("patch", "conv")
POS_INTERPS = ("bicubic", "corenet")
# corenet's VisionTransformer keeps (224 / 16)^2 = 196 position rows whatever the resolution it trains
# or runs at (num_patch_embeddings in corenet/modeling/models/classification/vit.py)
CORENET_POS_GRID = 224 // 16


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    stem: str = "patch"  # "patch": one p x p convolution | "conv": corenet's convolutional stem (p = 16)
    pre_norm: bool = False  # a LayerNorm over the embedded tokens before the blocks (CLIP's ln_pre)
    # The position table at another patch grid (VisionTransformer.pos_embed_for):
    #   "bicubic": a table for image_size, resampled over the 2-D grid (timm's resample_abs_pos_embed);
    #   "corenet": corenet's table of CORENET_POS_GRID^2 rows at any image_size, interpolated
    #   linearly over the flattened sequence to each input's patch count, at every forward
    #   (interpolate_pos_sequence): a corenet checkpoint computes corenet's function at every size.
    pos_interp: str = "bicubic"

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + class token

    @property
    def pos_grid(self) -> int:
        """Side of the square patch grid the position table is for (its rows: 1 + pos_grid^2)."""
        return CORENET_POS_GRID if self.pos_interp == "corenet" else self.image_size // self.patch_size

    @property
    def pos_rows(self) -> int:
        return self.pos_grid**2 + 1  # patch positions + the class token's row

    @property
    def pos_image_size(self) -> int:
        """The resolution the position table is for (224 for corenet's table)."""
        return self.pos_grid * self.patch_size

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.pos_interp not in POS_INTERPS:
            raise ValueError(f"pos_interp must be one of {POS_INTERPS}, got {self.pos_interp!r}")
        if self.stem == "conv" and self.patch_size != 16:
            raise ValueError(f"the conv stem has stride 16 (4 x 2 x 2), got patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )


VIT_PRESETS: dict[str, ViTConfig] = {
    "vit_tiny": ViTConfig(image_size=64, patch_size=8, width=96, depth=4, heads=3),
    "vit_small": ViTConfig(width=384, depth=12, heads=6),
    "vit_b16": ViTConfig(width=768, depth=12, heads=12),
    "vit_l16": ViTConfig(width=1024, depth=24, heads=16),
    "vit_h16": ViTConfig(width=1280, depth=32, heads=20),
    "vit_h14": ViTConfig(patch_size=14, width=1280, depth=32, heads=16),
    # open_clip's image towers (its ViT-B-16, ViT-L-14, ViT-H-14 configs: ln_pre, LayerNorm eps 1e-5)
    "openclip_vit_b16": ViTConfig(width=768, depth=12, heads=12, pre_norm=True, norm_eps=1e-5),
    "openclip_vit_l14": ViTConfig(
        patch_size=14, width=1024, depth=24, heads=16, pre_norm=True, norm_eps=1e-5
    ),
    "openclip_vit_h14": ViTConfig(
        patch_size=14, width=1280, depth=32, heads=16, pre_norm=True, norm_eps=1e-5
    ),
    # corenet's CatLIP ViTs (apple/corenet: its released checkpoints): the same towers with its stem
    "corenet_vit_tiny": ViTConfig(
        image_size=64, width=96, depth=4, heads=3, stem="conv", pos_interp="corenet"
    ),  # CPU tests
    "corenet_vit_b16": ViTConfig(width=768, depth=12, heads=12, stem="conv", pos_interp="corenet"),
    "corenet_vit_l16": ViTConfig(width=1024, depth=24, heads=16, stem="conv", pos_interp="corenet"),
    "corenet_vit_h16": ViTConfig(width=1280, depth=32, heads=20, stem="conv", pos_interp="corenet"),
}


def resample_pos_embed(
    pos: torch.Tensor, grid: tuple[int, int], *, num_prefix: int = 1, antialias: bool = True
) -> torch.Tensor:
    """(1, P + g*g, W) position table -> (1, P + gh*gw, W) for a (gh, gw) patch grid.

    The P prefix rows (the class token's) are kept; the square g x g patch rows are resampled
    bicubically in fp32 (align_corners False, antialiased when shrinking), as timm's
    ``resample_abs_pos_embed``, and cast back. The identity for the table's own grid."""
    g = math.isqrt(pos.shape[1] - num_prefix)
    if g * g != pos.shape[1] - num_prefix:
        raise ValueError(f"position table of {pos.shape[1]} rows is not {num_prefix} + a square grid")
    if tuple(grid) == (g, g):
        return pos
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    img = patches.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
    img = nn.functional.interpolate(
        img, size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    patches = img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, patches], dim=1)


def interpolate_pos_sequence(pos: torch.Tensor, num_patches: int, *, num_prefix: int = 1) -> torch.Tensor:
    """(1, P + N0, W) position rows -> (1, P + num_patches, W), by corenet's rule
    (``LearnablePositionalEmbedding.forward``): the N0 patch rows, as a (1, 1, N0, W) image,
    bilinearly interpolated to (num_patches, W) (align_corners False), so linearly over the
    flattened sequence whatever the grid's shape; the P prefix rows (the class token's) kept.
    Computed in fp32 at least (bf16 tables too) and cast back; the identity for N0 rows, as
    corenet skips the call there."""
    if pos.shape[1] - num_prefix == num_patches:
        return pos
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    table = patches.to(torch.promote_types(patches.dtype, torch.float32)).unsqueeze(1)  # (1, 1, N0, W)
    table = nn.functional.interpolate(table, size=(num_patches, pos.shape[-1]), mode="bilinear")
    return torch.cat([prefix, table.squeeze(1).to(pos.dtype)], dim=1)  # (1, P + N, W)


def run_vit_config(model: Mapping[str, Any]) -> ViTConfig:
    """The ViTConfig of a run's ``model`` config section, as checkpoints record it: the preset
    ``name``, with ``image_size`` and ``pos_interp`` where set (None: the preset's). A record
    without a ``pos_interp`` key was written before that option, when every model resampled its
    position table bicubically: it keeps doing so, and its table keeps its shape."""
    overrides: dict[str, Any] = {}
    if model.get("image_size"):
        overrides["image_size"] = int(model["image_size"])
    if "pos_interp" not in model:
        overrides["pos_interp"] = "bicubic"
    elif model["pos_interp"]:
        overrides["pos_interp"] = model["pos_interp"]
    return vit_config(model["name"], **overrides)


class WeightsError(ValueError):
    """Weights a model cannot compute with; the message names the file and the tensor."""


INTEGER_BUFFERS = ("num_batches_tracked",)  # batch norm's step count (the conv stem): an integer


def check_weights(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse a state dict whose weights are not floating point (int8: a quantised or foreign file,
    which a cast would turn into meaningless scores) or not finite (NaN or inf: a diverged run or a
    damaged file), naming ``where`` (the file) and the first such tensor. Integer buffers
    (``INTEGER_BUFFERS``) are allowed."""
    for name, t in state.items():
        if name.rsplit(".", 1)[-1] in INTEGER_BUFFERS:
            continue
        if not t.is_floating_point():
            raise WeightsError(
                f"{where}: refused: tensor {name} is {str(t.dtype).removeprefix('torch.')}, not floating point: these "
                "are not weights a model can compute with (a quantised or foreign file?); give the float "
                "weights (a checkpoint directory, or `catlip export` of one)"
            )
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise WeightsError(
                f"{where}: refused: tensor {name} has {int((~finite).sum())} NaN or infinite values among "
                f"{t.numel()}: the weights are not finite (a diverged run or a damaged file); use an earlier "
                "checkpoint"
            )


def vit_config(name: str, **overrides) -> ViTConfig:
    """A preset by name, with optional field overrides (e.g. ``image_size=96``)."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(VIT_PRESETS)}")
    return replace(VIT_PRESETS[name], **overrides)


class Attention(nn.Module):
    """Multi-head self-attention over a packed qkv projection; ``causal``: position i sees <= i."""

    def __init__(self, width: int, heads: int, attn_impl: str = "sdpa", *, causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_impl = attn_impl
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, w // self.heads)  # (B, S, 3, H, Dh)
        # "triton" reads q, k, v straight from the packed buffer and writes (B, S, H, Dh) memory
        out = attention_qkv(qkv, causal=self.causal, impl=self.attn_impl)  # (B, S, H, Dh)
        return self.proj(out.reshape(b, s, w))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) (GELU MLP).

    Shared by the ViT (non-causal) and the CLIP text tower (``causal=True``)."""

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
        causal: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads, attn_impl, causal=causal)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_stem_channels(width: int) -> int:
    return max(32, width // 4)


def conv_stem_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """``ConvStem(width)``'s state-dict names (inside it) and shapes, read off one built (ViT-H's:
    2M parameters, ~40 ms) without moving the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        stem = ConvStem(width)
    return {k: tuple(v.shape) for k, v in stem.state_dict().items()}


class ConvStem(nn.Sequential):
    """corenet's ViT stem (after "Early Convolutions Help Transformers See Better", Xiao et al.
    2021): conv 4x4 stride 4 (padding 1, no bias) -> BatchNorm -> GELU, conv 2x2 stride 2 (no bias)
    -> BatchNorm -> GELU, conv 2x2 stride 2 (bias): an H x W image -> an (H/16) x (W/16) grid of
    ``width`` features, with max(32, width / 4) channels inside. Layer indices 0-6 are its
    state-dict names (catlip.convert.corenet maps corenet's ``patch_emb.{0,1,2}.block.*`` onto them).

    The batch norms keep running statistics: in training mode (``model.train()``) each rank
    normalises with its own batch's statistics and updates its running ones; a frozen tower
    (linear probe) is kept in eval mode by ``ImageClassifier``."""

    def __init__(self, width: int) -> None:
        c = conv_stem_channels(width)
        super().__init__(
            nn.Conv2d(3, c, kernel_size=4, stride=4, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, width, kernel_size=2, stride=2),
        )
        for m in self:
            if isinstance(m, nn.Conv2d):  # corenet's conv_init for CatLIP: kaiming normal, fan out
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class VisionTransformer(nn.Module):
    """ViT image tower: images (B, 3, H, W) -> pooled class-token features (B, width).

    Any H and W that are multiples of the patch size are accepted (multi-scale training,
    evaluation at another resolution): the position table is resampled to the (H/p, W/p) grid,
    by ``cfg.pos_interp``'s rule: ``resample_pos_embed`` (bicubic over the grid) from the table
    learnt for ``cfg.image_size``, or ``interpolate_pos_sequence`` (corenet's, linear over the
    flattened sequence) from corenet's fixed 196-row table. In training the resampling is part of
    the graph (the table gets its gradient through it); with gradients off it is cached per grid
    until the table changes."""

    def __init__(self, cfg: ViTConfig, *, attn_impl: str = "sdpa", grad_checkpointing: bool = False) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.cfg = cfg
        self.grad_checkpointing = grad_checkpointing
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.width)
        else:
            self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_rows, cfg.width))
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps, attn_impl=attn_impl)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self._pos_cache: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_attn_impl(self, impl: str) -> None:
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for block in self.blocks:
            block.attn.attn_impl = impl

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1, 1 + gh*gw, W) position rows for a (gh, gw) patch grid."""
        grid, base = tuple(grid), self.cfg.pos_grid
        if self.cfg.pos_interp == "corenet":
            if grid[0] * grid[1] == base * base:  # corenet interpolates only another patch count
                return self.pos_embed

            def resample(p: torch.Tensor) -> torch.Tensor:
                return interpolate_pos_sequence(p, grid[0] * grid[1])
        else:
            if grid == (base, base):
                return self.pos_embed

            def resample(p: torch.Tensor) -> torch.Tensor:
                return resample_pos_embed(p, grid)

        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            return resample(self.pos_embed)
        p = self.pos_embed
        key = (p._version, p.data_ptr(), p.device, p.dtype)  # any in-place update or re-gather misses
        hit = self._pos_cache.get(grid)
        if hit is None or hit[0] != key:
            hit = (key, resample(p.detach()))
            self._pos_cache[grid] = hit
        return hit[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        h, w = images.shape[-2:]
        if images.dim() != 4 or h % p or w % p:
            raise ValueError(
                f"expected (B, 3, H, W) images with H and W multiples of the patch size {p}, got {tuple(images.shape)}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, W)
        pos = self.pos_embed_for((h // p, w // p))
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + pos  # (B, S, W)
        x = self.norm_pre(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x[:, 0])  # (B, W)


class CatLIPHead(nn.Linear):
    """Linear(width, V) over the synset vocabulary that, given labels, returns the BCE loss.

    The loss is computed inside this module's forward so that, under DeepSpeed ZeRO-3, the forward
    hooks gather the (partitioned) weight for it and its gradients reach the shards, whichever
    ``loss_impl`` computes it: "torch" (kernels/reference.py) or "triton" (kernels.linear_bce,
    which never materialises the (B, V) logits), both behind kernels.linear_bce's dispatcher.
    """

    def __init__(
        self, width: int, vocab_size: int, *, loss_impl: str = "torch", label_smoothing: float = 0.0
    ):
        super().__init__(width, vocab_size)
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {loss_impl!r}")
        self.loss_impl = loss_impl
        self.label_smoothing = label_smoothing
        nn.init.zeros_(self.weight)
        # Start at the label prior: with ~5 positives among V classes, sigmoid(b) ~ 5 / V.
        nn.init.constant_(self.bias, -math.log(vocab_size))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if labels is None:
            return super().forward(x)  # (B, V) logits
        return linear_bce(
            x, self.weight, self.bias, labels, reduction="batch_mean",
            label_smoothing=self.label_smoothing, sample_weight=sample_weight, impl=self.loss_impl,
        )  # fmt: skip


class CatLIPModel(nn.Module):
    """Image tower + CatLIP head, trained with sigmoid BCE over the synset vocabulary.

    ``forward(images)`` returns logits (B, V); ``forward(images, labels)`` returns the loss
    (corenet's batch_mean: summed over labels, divided by B), so a DeepSpeed engine can call it
    directly. Labels are padded (B, L) index tensors (-1 = padding).
    """

    def __init__(
        self,
        cfg: ViTConfig | str,
        vocab_size: int,
        *,
        attn_impl: str = "sdpa",
        loss_impl: str = "torch",
        grad_checkpointing: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        cfg = vit_config(cfg) if isinstance(cfg, str) else cfg
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.encoder = VisionTransformer(cfg, attn_impl=attn_impl, grad_checkpointing=grad_checkpointing)
        self.head = CatLIPHead(cfg.width, vocab_size, loss_impl=loss_impl, label_smoothing=label_smoothing)

    @property
    def cfg(self) -> ViTConfig:
        return self.encoder.cfg

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head(self.encoder(images), labels, sample_weight)


class ClassifierHead(nn.Linear):
    """Linear(width, C) over a downstream class set that, given labels, returns the loss.

    ``multi_label``: sigmoid BCE over the C classes from padded label lists (corenet's batch_mean,
    as :class:`CatLIPHead`, through the same dispatcher); otherwise softmax cross-entropy against
    each sample's first label, with ``label_smoothing``. Both are summed over the batch and divided
    by B, samples weighted by ``sample_weight`` (0: padding or an image that failed to decode).
    Initialised as timm's and corenet's classifier (truncated normal, std 0.02; zero bias); the
    objective may overwrite it (zero, or the pre-trained head's synset rows).
    """

    def __init__(
        self,
        width: int,
        num_classes: int,
        *,
        multi_label: bool,
        label_smoothing: float = 0.0,
        loss_impl: str = "torch",
    ) -> None:
        super().__init__(width, num_classes)
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {loss_impl!r}")
        self.multi_label, self.label_smoothing, self.loss_impl = multi_label, label_smoothing, loss_impl
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if labels is None:
            return super().forward(x)  # (B, C) logits
        if self.multi_label:
            return linear_bce(
                x, self.weight, self.bias, labels, reduction="batch_mean",
                label_smoothing=self.label_smoothing, sample_weight=sample_weight, impl=self.loss_impl,
            )  # fmt: skip
        logits = super().forward(x).float()  # (B, C)
        target = labels[:, 0]  # (B,) the class of each sample; -1: none (padding)
        weight = (target >= 0).to(logits.dtype)
        if sample_weight is not None:
            weight = weight * sample_weight.to(logits.dtype)
        per_sample = nn.functional.cross_entropy(
            logits, target.clamp(min=0), reduction="none", label_smoothing=self.label_smoothing
        )  # (B,)
        return (per_sample * weight).sum() / len(target)


class ImageClassifier(nn.Module):
    """Image tower + a classifier over a downstream class set (fine-tuning, linear probes).

    ``forward(images)`` returns logits (B, C), ``forward(images, labels, sample_weight)`` the loss;
    ``images`` may also be features (B, width) the tower computed before (a probe's feature
    cache). ``freeze_encoder``: the tower takes no gradients and runs under ``no_grad`` (a linear
    probe). State keys are CatLIPModel's (``encoder.*``, ``head.*``), the head having C rows.
    """

    def __init__(
        self,
        cfg: ViTConfig | str,
        num_classes: int,
        *,
        multi_label: bool,
        label_smoothing: float = 0.0,
        attn_impl: str = "sdpa",
        loss_impl: str = "torch",
        grad_checkpointing: bool = False,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        cfg = vit_config(cfg) if isinstance(cfg, str) else cfg
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.encoder = VisionTransformer(cfg, attn_impl=attn_impl, grad_checkpointing=grad_checkpointing)
        self.head = ClassifierHead(
            cfg.width,
            num_classes,
            multi_label=multi_label,
            label_smoothing=label_smoothing,
            loss_impl=loss_impl,
        )
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    @property
    def cfg(self) -> ViTConfig:
        return self.encoder.cfg

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.freeze_encoder:  # a frozen tower's batch norms (conv stem) keep their statistics
            self.encoder.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, width): the tower's pooled output."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder(images)
        return self.encoder(images)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = images if images.dim() == 2 else self.features(images)  # (B, width)
        return self.head(x, labels, sample_weight)
