"""ViT presets, the attention switch, activation checkpointing, and the sparse-label BCE reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from catlip.models import (
    VIT_PRESETS,
    CatLIPModel,
    VisionTransformer,
    ViTConfig,
    interpolate_pos_sequence,
    resample_pos_embed,
    vit_config,
)
from catlip.param_groups import param_groups
from kernels.reference import bce_from_logits, check_labels, dense_targets, linear_bce_reference


@pytest.mark.parametrize(
    ("name", "width", "depth", "heads", "head_dim", "tokens"),
    [
        ("vit_b16", 768, 12, 12, 64, 197),
        ("vit_l16", 1024, 24, 16, 64, 197),
        ("vit_h16", 1280, 32, 20, 64, 197),
        ("vit_h14", 1280, 32, 16, 80, 257),
    ],
)
def test_presets_match_the_papers(name, width, depth, heads, head_dim, tokens):
    cfg = VIT_PRESETS[name]
    assert (cfg.width, cfg.depth, cfg.heads, cfg.head_dim, cfg.num_tokens) == (
        width,
        depth,
        heads,
        head_dim,
        tokens,
    )


def test_vit_b16_parameter_count():
    with torch.device("meta"):
        model = VisionTransformer(VIT_PRESETS["vit_b16"])
    assert 85.5e6 < sum(p.numel() for p in model.parameters()) < 86.5e6  # ViT-B/16 ~ 86M


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="unknown model"):
        vit_config("vit_giant")
    with pytest.raises(ValueError, match="attn_impl"):
        VisionTransformer(VIT_PRESETS["vit_tiny"], attn_impl="flash9")
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        VisionTransformer(VIT_PRESETS["vit_tiny"])(torch.randn(1, 3, 36, 32))


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


def _resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """float64 (n_out, n_in) weights of antialiased bicubic resizing (PIL's filter, a = -0.5):
    output i reads the inputs within 2 x max(scale, 1) of its centre, weights normalised."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 2 * support + 0.5), 0), min(int(centre + 2 * support + 0.5), n_in)
        for j in range(lo, hi):
            m[i, j] = _cubic((j - centre + 0.5) / support)
        m[i] /= m[i].sum()
    return m


@pytest.mark.parametrize("grid", [(8, 8), (20, 12), (25, 9), (7, 20), (14, 14)])
def test_resampled_position_table_equals_a_float64_reference(grid):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    out = resample_pos_embed(pos, grid)
    assert out.shape == (1, 1 + grid[0] * grid[1], 8) and torch.equal(out[:, 0], pos[:, 0])
    table = pos[0, 1:].double().reshape(14, 14, 8)
    ref = torch.einsum("ai,ijc,bj->abc", _resize_matrix(14, grid[0]), table, _resize_matrix(14, grid[1]))
    torch.testing.assert_close(out[0, 1:].double(), ref.reshape(-1, 8), rtol=0, atol=1e-5)


def test_vit_runs_any_grid_and_caches_the_table_only_without_gradients():
    torch.manual_seed(0)
    model = VisionTransformer(VIT_PRESETS["vit_tiny"]).eval()  # 64 px, patch 8: an 8 x 8 table
    wide = torch.randn(2, 3, 48, 80)  # a 6 x 10 grid: 61 tokens
    with torch.no_grad():
        out = model(wide)
        assert out.shape == (2, 96) and list(model._pos_cache) == [(6, 10)]
        cached = model._pos_cache[(6, 10)][1]
        assert model.pos_embed_for((6, 10)) is cached  # a hit
        torch.testing.assert_close(cached, resample_pos_embed(model.pos_embed, (6, 10)), rtol=0, atol=0)
        model.pos_embed.add_(1.0)  # an in-place update (an optimizer step) invalidates the cache
        assert model.pos_embed_for((6, 10)) is not cached
    model.train()
    model(torch.randn(1, 3, 32, 96)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("rows", [(1, 7), (5, 3)], ids=["196_to_7", "196_to_15"])
def test_corenet_position_interpolation_is_linear_over_the_sequence(rows):
    """interpolate_pos_sequence by hand: row i of N comes from the 196-row table at position
    (i + 0.5) * 196 / N - 0.5 (align_corners False, clamped at the ends), linearly."""
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 196, 8, dtype=torch.float64)
    n = rows[0] * rows[1]
    out = interpolate_pos_sequence(pos, n)
    assert out.shape == (1, 1 + n, 8) and torch.equal(out[:, 0], pos[:, 0])
    for i in range(n):
        x = min(max((i + 0.5) * 196 / n - 0.5, 0.0), 195.0)
        lo, w = int(x), x - int(x)
        hi = min(lo + 1, 195)
        torch.testing.assert_close(out[0, 1 + i], (1 - w) * pos[0, 1 + lo] + w * pos[0, 1 + hi])
    assert interpolate_pos_sequence(pos, 196) is pos


def test_corenet_vit_keeps_196_positions_at_any_size_and_trains_them():
    cfg = vit_config("corenet_vit_tiny")  # 64 px, conv stem, pos_interp corenet
    assert cfg.pos_interp == "corenet" and cfg.pos_rows == 197 and cfg.num_tokens == 17
    torch.manual_seed(0)
    model = VisionTransformer(cfg).eval()
    assert model.pos_embed.shape == (1, 197, 96)
    with torch.no_grad():
        model(torch.randn(2, 3, 48, 80))  # a 3 x 5 grid: 15 patches from the 196 rows
        cached = model._pos_cache[(3, 5)][1]
        torch.testing.assert_close(cached, interpolate_pos_sequence(model.pos_embed, 15), rtol=0, atol=0)
        assert model.pos_embed_for((7, 28)) is model.pos_embed  # 196 patches: the table itself
    model.train()
    model(torch.randn(1, 3, 64, 64)).pow(2).sum().backward()  # 16 patches: the table's gradient
    assert model.pos_embed.grad[:, 1:].abs().sum() > 0
    with pytest.raises(ValueError, match="pos_interp must be one of"):
        vit_config("vit_tiny", pos_interp="linear")
    assert vit_config("corenet_vit_tiny", pos_interp="bicubic").pos_rows == 17  # a table for 64 px


def _grads(model, images, labels):
    model.zero_grad()
    loss = model(images, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_attention_backends_and_checkpointing_agree():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, width=64, depth=2, heads=4)
    model = CatLIPModel(cfg, 37).double()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # zero-initialised head would hide the tower's grads
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([[1, 5, -1], [-1, -1, -1], [36, 0, 2]])
    loss_sdpa, grads_sdpa = _grads(model, images, labels)
    model.encoder.set_attn_impl("math")
    loss_math, grads_math = _grads(model, images, labels)
    model.encoder.grad_checkpointing = True
    loss_ckpt, grads_ckpt = _grads(model, images, labels)
    torch.testing.assert_close(loss_sdpa, loss_math)
    torch.testing.assert_close(loss_ckpt, loss_math)
    for name in grads_math:
        torch.testing.assert_close(grads_sdpa[name], grads_math[name], msg=name)
        torch.testing.assert_close(grads_ckpt[name], grads_math[name], msg=name)
    assert grads_math["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0


def test_triton_attention_matches_math_in_the_model():
    """The model's outputs and gradients agree across attn_impl triton / sdpa / math (fp32)."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, width=64, depth=1, heads=2)  # 17 tokens, head dim 32
    model = CatLIPModel(cfg, 11)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1, 5], [-1, -1]])
    results = {}
    for impl in ("math", "sdpa", "triton"):
        model.encoder.set_attn_impl(impl)
        results[impl] = _grads(model, images, labels)
    for impl in ("sdpa", "triton"):
        torch.testing.assert_close(results[impl][0], results["math"][0], rtol=1e-5, atol=1e-5)
        for name, grad in results["math"][1].items():
            torch.testing.assert_close(results[impl][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_head_starts_at_the_label_prior():
    model = CatLIPModel(VIT_PRESETS["vit_tiny"], 1000)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(torch.sigmoid(logits), torch.full_like(logits, 1 / 1001), rtol=1e-3, atol=0)


def test_weight_decay_groups():
    model = CatLIPModel(VIT_PRESETS["vit_tiny"], 10)
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert {"encoder.pos_embed", "encoder.cls_token", "head.bias"} <= {
        names[id(p)] for p in no_decay["params"]
    }
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


# ------------------------------------------------------------------------------------------- loss
def dense_loss(x, w, b, labels, eps=0.0, reduction="batch_mean"):
    """The obvious float64 formula: dense target, F.binary_cross_entropy_with_logits."""
    logits = F.linear(x.double(), w.double(), None if b is None else b.double())
    target = dense_targets(labels, w.size(0)).double() * (1 - eps) + eps / 2
    total = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    return {"sum": total, "batch_mean": total / x.size(0), "mean": total / logits.numel()}[reduction]


@pytest.mark.parametrize("reduction", ["batch_mean", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_bce_equals_dense_bce(reduction, eps, bias):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 80, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(97, 80, generator=g, dtype=torch.float64).mul_(0.1).requires_grad_()
    b = torch.randn(97, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.full((37, 9), -1)
    for i in range(37):
        k = i % 10  # rows with none and rows with many positives
        labels[i, : min(k, 9)] = torch.randperm(97, generator=g)[: min(k, 9)]
    ours = linear_bce_reference(x, w, b, labels, reduction=reduction, label_smoothing=eps)
    ref = dense_loss(x, w, b, labels, eps, reduction)
    torch.testing.assert_close(ours, ref)
    params = [t for t in (x, w, b) if t is not None]
    for g_ours, g_ref in zip(
        torch.autograd.grad(ours, params), torch.autograd.grad(ref, params), strict=True
    ):
        torch.testing.assert_close(g_ours, g_ref)


def test_fp32_accumulation_from_bf16_logits():
    torch.manual_seed(0)
    logits = (torch.randn(4, 24320) * 3).bfloat16()
    labels = torch.randint(0, 24320, (4, 5))
    got = bce_from_logits(logits, labels)
    ref = (
        F.binary_cross_entropy_with_logits(
            logits.double(), dense_targets(labels, 24320).double(), reduction="sum"
        )
        / 4
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=0)


def test_sample_weight_masks_failed_images():
    logits = torch.randn(3, 10)
    labels = torch.tensor([[1, -1], [2, 3], [0, -1]])
    full = bce_from_logits(logits, labels, reduction="sum")
    masked = bce_from_logits(logits, labels, reduction="sum", sample_weight=torch.tensor([1.0, 0.0, 1.0]))
    only = bce_from_logits(logits[[0, 2]], labels[[0, 2]], reduction="sum")
    torch.testing.assert_close(masked, only)
    assert not torch.allclose(full, masked)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([[0, 10]]), r"in \[0, 10\)"),
        (torch.tensor([[0, -2]]), r"min -2"),
        (torch.tensor([[3, 1, 3]]), "duplicate label ids in row 0"),
        (torch.tensor([3, 1]), r"\(B, L\)"),
        (torch.tensor([[0.0, 1.0]]), "int32 or int64"),
    ],
)
def test_bad_labels_are_errors(labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_labels(labels, 10)


def test_padding_may_repeat():
    assert check_labels(torch.tensor([[4, -1, -1], [-1, -1, -1]]), 10).sum() == 1


def test_conv_stem_is_corenets_shape_and_a_frozen_tower_keeps_its_batch_norm_statistics():
    from catlip.models import ConvStem, ImageClassifier, conv_stem_shapes

    stem = ConvStem(96)
    bn = {
        "weight": (32,),
        "bias": (32,),
        "running_mean": (32,),
        "running_var": (32,),
        "num_batches_tracked": (),
    }
    expected = {
        "0.weight": (32, 3, 4, 4),  # max(32, 96 / 4) channels inside
        **{f"1.{k}": v for k, v in bn.items()},
        "3.weight": (32, 32, 2, 2),
        **{f"4.{k}": v for k, v in bn.items()},
        "6.weight": (96, 32, 2, 2),
        "6.bias": (96,),
    }
    assert {k: tuple(v.shape) for k, v in stem.state_dict().items()} == expected == conv_stem_shapes(96)
    assert stem(torch.randn(1, 3, 80, 48)).shape == (1, 96, 5, 3)  # stride 16, any multiple of 16
    with pytest.raises(ValueError, match="stride 16"):
        vit_config("corenet_vit_tiny", patch_size=8)
    probe = ImageClassifier(vit_config("corenet_vit_tiny"), 5, multi_label=True, freeze_encoder=True).train()
    before = probe.encoder.patch_embed[1].running_mean.clone()
    probe(torch.randn(4, 3, 64, 64))
    assert probe.head.training and not probe.encoder.training
    assert torch.equal(probe.encoder.patch_embed[1].running_mean, before)
    tuned = ImageClassifier(vit_config("corenet_vit_tiny"), 5, multi_label=True).train()
    tuned(torch.randn(4, 3, 64, 64))
    assert not torch.equal(tuned.encoder.patch_embed[1].running_mean, before)  # fine-tuning updates them
