"""catlip.convert: exports that real timm loads with our logits, timm / open_clip / corenet towers into
our ViT, corenet's vocabulary pickle read without running code.

The checks against real timm and open_clip run tests/interop_check.py in scripts/env_interop.sh's
virtualenv (torch 2.14.1 + torchvision + timm + open_clip; built on first use under a lock, a few
minutes once, then cached), one child process for all of them (test_real_* below share it).
The rest runs here, on state dicts written from the names in the libraries' sources.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from corenet_state import corenet_vit as _corenet_vit
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from catlip.convert import (
    InteropError,
    check_vit_state,
    export_timm,
    load_encoder_state,
    read_corenet_vocab,
    timm_model_args,
    to_timm_state,
    write_corenet_vocab,
)
from catlip.models import CatLIPModel, VisionTransformer, ViTConfig, vit_config

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_size=64, patch_size=8, width=96, depth=4, heads=3)


def _meta(name: str, image_size: int | None = None) -> dict[str, str]:
    cfg = {"model": {"name": name, "image_size": image_size, "objective": "catlip"}}
    return {
        "catlip_config": json.dumps(cfg),
        "vocab": json.dumps({"vocab": "vocab.tsv", "vocab_size": 37, "vocab_sha256": "ab" * 32}),
        "step": "7",
        "weights": "trained",
    }


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved by noise (no unit norms, no zero biases): a swap then shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _tiny_model(vocab: int = 37, seed: int = 0) -> CatLIPModel:
    torch.manual_seed(seed)
    model = _perturbed(CatLIPModel("vit_tiny", vocab), seed)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)  # logits of order 1, not the zero-init head's constants
    return model


# --------------------------------------------------------------------------------- export, here


def test_timm_names_and_kwargs_for_each_preset() -> None:
    assert timm_model_args(vit_config("vit_b16"), "vit_b16") == ("vit_base_patch16_224", {})
    assert timm_model_args(vit_config("vit_l16"), "vit_l16") == ("vit_large_patch16_224", {})
    assert timm_model_args(vit_config("vit_h14"), "vit_h14") == ("vit_huge_patch14_224", {})
    assert timm_model_args(vit_config("vit_small"), "vit_small") == ("vit_small_patch16_224", {})
    assert timm_model_args(vit_config("vit_h16"), "vit_h16") == (
        "vit_huge_patch14_224",
        {"patch_size": 16, "num_heads": 20},
    )
    assert timm_model_args(vit_config("vit_tiny"), "vit_tiny") == (
        "vit_tiny_patch16_224",
        {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4},
    )
    assert timm_model_args(vit_config("vit_b16", image_size=384), "vit_b16") == (
        "vit_base_patch16_224",
        {"img_size": 384},
    )
    with pytest.raises(InteropError, match="norm_eps"):
        timm_model_args(vit_config("vit_b16", norm_eps=1e-5), "vit_b16")


def test_export_writes_timm_names_and_keeps_the_metadata(tmp_path: Path) -> None:
    state = _tiny_model().state_dict()
    out = export_timm(state, _meta("vit_tiny"), tmp_path / "t.safetensors")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["timm_model"] == "vit_tiny_patch16_224"
    assert json.loads(meta["timm_kwargs"]) == {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4}
    assert meta["timm_num_classes"] == "37" and meta["format"] == "timm"
    for key, value in _meta("vit_tiny").items():
        assert meta[key] == value
    names = set(load_file(str(out)))
    block0 = {k for k in names if k.startswith("blocks.0.")}
    assert block0 == {
        f"blocks.0.{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    }
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
    } <= names
    assert {"head.weight", "head.bias"} <= names and len(names) == 4 + 4 * 12 + 2 + 2
    back = load_encoder_state(out)  # our own timm export reads back unchanged
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_export_refuses_weights_that_are_not_the_configured_model(tmp_path: Path) -> None:
    state = _tiny_model().state_dict()
    with pytest.raises(InteropError, match=r"not the configured model: width 96 \(config says 768\)"):
        export_timm(state, _meta("vit_b16"), tmp_path / "x.safetensors")
    with pytest.raises(InteropError, match="more than an image model"):
        export_timm({**state, "logit_scale": torch.zeros(())}, _meta("vit_tiny"), tmp_path / "x.safetensors")
    with pytest.raises(InteropError, match="model.name"):
        export_timm(state, {"catlip_config": "{}"}, tmp_path / "x.safetensors")


# -------------------------------------------------------------------------- import: shape errors


def test_shape_errors_name_the_tensor() -> None:
    state = to_timm_state(_tiny_model().state_dict())
    bad = dict(state)
    bad["blocks.2.attn.qkv.weight"] = bad["blocks.2.attn.qkv.weight"][:-3]
    with pytest.raises(
        InteropError, match=r"encoder.blocks.2.attn.qkv.weight .* has shape \(285, 96\), expected \(288, 96\)"
    ):
        load_encoder_state(bad)
    missing = {k: v for k, v in state.items() if k != "blocks.1.norm2.weight"}
    with pytest.raises(InteropError, match="blocks.1.norm2.weight is missing"):
        load_encoder_state(missing)
    odd = dict(state, pos_embed=state["pos_embed"][:, :-2])
    with pytest.raises(InteropError, match="encoder.pos_embed"):
        load_encoder_state(odd)
    with pytest.raises(InteropError, match="not a ViT image tower.*first keys are: conv.weight"):
        load_encoder_state({"conv.weight": torch.zeros(3), "fc.weight": torch.zeros(3)})
    with pytest.raises(InteropError, match="head"):
        check_vit_state({**load_encoder_state(state), "head.weight": torch.zeros(5, 95)})


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(InteropError, match="not a readable safetensors file"):
        load_encoder_state(tmp_path / "x.safetensors")
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(InteropError, match="not a torch state dict"):
        load_encoder_state(tmp_path / "x.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module, not weights
    with pytest.raises(InteropError, match="asks to build objects"):
        load_encoder_state(tmp_path / "module.pt")
    with pytest.raises(InteropError, match="is not a file"):
        load_encoder_state(tmp_path / "missing.pt")


def test_unrepresentable_parts_are_refused_with_the_reason() -> None:
    state = to_timm_state(_tiny_model().state_dict())
    pooled = dict(state, **{"fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96)})
    with pytest.raises(InteropError, match="fc_norm .*average pooling"):
        load_encoder_state(pooled)
    with pytest.warns(UserWarning, match="left out: timm's fc_norm"):
        out = load_encoder_state(pooled, partial=True)
    assert "encoder.fc_norm.weight" not in out and "encoder.blocks.3.mlp.2.bias" in out
    with pytest.raises(InteropError, match="register tokens"):
        load_encoder_state(dict(state, reg_token=torch.zeros(1, 4, 96)))


def test_a_pre_norm_maps_from_timm_and_open_clip_and_back_to_timm() -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(**TINY, pre_norm=True, norm_eps=1e-5)
    model = CatLIPModel(cfg, 37).eval()
    with torch.no_grad():
        model.encoder.norm_pre.weight.normal_(1.0, 0.2)
        model.encoder.norm_pre.bias.normal_(0.0, 0.2)
    timm_state = to_timm_state(model.state_dict())
    assert torch.equal(timm_state["norm_pre.weight"], model.encoder.norm_pre.weight)
    back = load_encoder_state(timm_state)
    assert torch.equal(back["encoder.norm_pre.bias"], model.encoder.norm_pre.bias)
    assert check_vit_state(back, cfg)["pre_norm"] is True
    with pytest.raises(InteropError, match="pre_norm True .config says False"):
        check_vit_state(back, ViTConfig(**TINY, norm_eps=1e-5))
    # the tower without its pre-norm computes something else: the norm is not a no-op here
    plain = VisionTransformer(ViTConfig(**TINY, norm_eps=1e-5)).eval()
    plain.load_state_dict(
        {k[8:]: v for k, v in back.items() if k.startswith("encoder.") and "norm_pre" not in k}
    )
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain(images), model.encoder(images), atol=1e-3)
    name, kwargs = timm_model_args(cfg, None)
    assert name == "vit_base_patch16_clip_224" and "pre_norm" not in kwargs  # the CLIP arch has it
    assert timm_model_args(vit_config("openclip_vit_h14"), "openclip_vit_h14") == (
        "vit_huge_patch14_clip_224",
        {},
    )
    with pytest.raises(InteropError, match="norm_eps 1e-06 is not the LayerNorm eps 1e-05"):
        timm_model_args(replace(vit_config("openclip_vit_b16"), norm_eps=1e-6), "openclip_vit_b16")


def test_our_states_under_their_prefixes() -> None:
    model = _tiny_model()
    state = model.state_dict()
    wrapped = {"module": {"module." + k: v for k, v in state.items()}, "step": 3}
    out = load_encoder_state(wrapped)
    assert out.keys() == state.keys()
    clip_like = {"visual." + k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    clip_like |= {"text.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.zeros(())}
    out = load_encoder_state(clip_like)  # this engine's CLIP run: its image tower
    assert set(out) == {k for k in state if k.startswith("encoder.")}


def test_pos_embed_resampled_to_another_resolution() -> None:
    state = to_timm_state(_tiny_model().state_dict())
    out = load_encoder_state(state, image_size=96)
    assert out["encoder.pos_embed"].shape == (1, 12 * 12 + 1, 96)
    assert torch.equal(out["encoder.pos_embed"][:, 0], state["pos_embed"][:, 0])
    model = VisionTransformer(ViTConfig(**{**TINY, "image_size": 96}))
    model.load_state_dict({k[len("encoder.") :]: v for k, v in out.items() if k.startswith("encoder.")})


# ---------------------------------------------------------------------------------- corenet names


def _corenet_forward(s: dict, images: torch.Tensor, heads: int, *, flash: bool = True) -> torch.Tensor:
    """corenet's ViT forward written out from its modules (conv_layer.py: padding (k - 1) // 2, so
    1 for the 4x4 stem conv; BatchNorm2d eps 1e-5 in eval; GELU; flattened patches + the 196-row
    table, interpolated to the patch count as positional_embedding.py's LearnablePositionalEmbedding
    does at any other size (F.interpolate of the (1, 1, 196, W) table to (N, W), mode "bilinear",
    align_corners left at its default), then the class token, no position; pre-norm blocks with
    LayerNorm eps 1e-6 and qkv as (B, S, 3, heads, Dh)); returns the classifier's logits."""
    F = torch.nn.functional
    x = images
    for i, pad in ((0, 1), (1, 0)):
        b = f"patch_emb.{i}.block."
        x = F.conv2d(x, s[b + "conv.weight"], stride=s[b + "conv.weight"].shape[-1], padding=pad)
        x = F.batch_norm(
            x, s[b + "norm.running_mean"], s[b + "norm.running_var"], s[b + "norm.weight"],
            s[b + "norm.bias"], training=False, eps=1e-5,
        )  # fmt: skip
        x = F.gelu(x)
    x = F.conv2d(x, s["patch_emb.2.block.conv.weight"], s["patch_emb.2.block.conv.bias"], stride=2)
    x = x.flatten(2).transpose(1, 2)  # (B, N, W)
    table = s["pos_embed.pos_embed.pos_embed"]  # (1, 1, 196, W)
    if x.shape[1] != table.shape[2]:
        table = F.interpolate(table, size=(x.shape[1], x.shape[2]), mode="bilinear")
    x = x + table.reshape(1, x.shape[1], x.shape[2])
    x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    width = x.shape[-1]
    out_proj = "out_proj_attn" if flash else "out_proj"
    for i in range(len({k.split(".")[1] for k in s if k.startswith("transformer.")})):
        b = f"transformer.{i}."
        h = F.layer_norm(x, (width,), s[b + "pre_norm_mha.0.weight"], s[b + "pre_norm_mha.0.bias"], eps=1e-6)
        qkv = F.linear(h, s[b + "pre_norm_mha.1.qkv_proj.weight"], s[b + "pre_norm_mha.1.qkv_proj.bias"])
        q, k, v = qkv.reshape(*x.shape[:2], 3, heads, -1).permute(2, 0, 3, 1, 4)  # (B, heads, S, Dh) each
        attn = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(x.shape)
        x = x + F.linear(
            attn, s[b + f"pre_norm_mha.1.{out_proj}.weight"], s[b + f"pre_norm_mha.1.{out_proj}.bias"]
        )
        h = F.layer_norm(x, (width,), s[b + "pre_norm_ffn.0.weight"], s[b + "pre_norm_ffn.0.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, s[b + "pre_norm_ffn.1.weight"], s[b + "pre_norm_ffn.1.bias"]))
        x = x + F.linear(h, s[b + "pre_norm_ffn.4.weight"], s[b + "pre_norm_ffn.4.bias"])
    x = F.layer_norm(
        x[:, 0], (width,), s["post_transformer_norm.weight"], s["post_transformer_norm.bias"], eps=1e-6
    )
    return F.linear(x, s["classifier.weight"], s["classifier.bias"])


@pytest.mark.parametrize("flash", [True, False], ids=["FlashTransformerEncoder", "TransformerEncoder"])
def test_corenet_vit_loads_whole_and_computes_corenets_logits(tmp_path: Path, flash: bool) -> None:
    src = _corenet_vit(flash=flash)
    for i in (0, 1):  # running statistics of a trained stem (positive variances near 1)
        src[f"patch_emb.{i}.block.norm.running_var"] = 0.5 + src[f"patch_emb.{i}.block.norm.running_var"]
    path = tmp_path / "checkpoint_ema_best.pt"
    torch.save({"model_state_dict": src, "epoch": 3}, path)  # corenet's checkpoint wrapper
    out = load_encoder_state(path)  # no partial: every tensor has its place (the augmentor is dropped)
    cfg = ViTConfig(width=96, depth=3, heads=3, stem="conv")
    model = CatLIPModel(cfg, 11).double().eval()
    model.load_state_dict(out, strict=True)
    assert model.encoder.patch_embed[1].num_batches_tracked.item() == 5
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        ours = model(images)
    theirs = _corenet_forward(
        {k: v.double() if v.is_floating_point() else v for k, v in src.items()}, images, 3, flash=flash
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # the stem is corenet's: the same tower with a patch stem cannot take these weights
    with pytest.raises(InteropError, match="stem conv"):
        check_vit_state(out, ViTConfig(width=96, depth=3, heads=3), where="x")
    # and it has no timm counterpart: the export refuses it, saying why
    meta = {"catlip_config": json.dumps({"model": {"name": "corenet_vit_b16"}})}
    with pytest.raises(InteropError, match="no timm VisionTransformer counterpart"):
        export_timm(out, meta, tmp_path / "x.safetensors")


@pytest.mark.parametrize("image_size", [224, 256], ids=["model_224px", "model_256px"])
@pytest.mark.parametrize("size", [(160, 160), (256, 256), (160, 224)], ids=["160", "256", "160x224"])
def test_a_corenet_checkpoint_computes_corenets_logits_at_every_size(size, image_size) -> None:
    """pos_interp corenet (the corenet_vit_* presets): the 196-row table is kept whatever the
    model's image_size, and interpolated at every forward as corenet does, so the logits are
    corenet's at any input size; the bicubic resampling of the grid (pos_interp bicubic) is not."""
    src = _corenet_vit()
    for i in (0, 1):  # running statistics of a trained stem (positive variances near 1)
        src[f"patch_emb.{i}.block.norm.running_var"] += 0.5
    src = {k: v.double() if v.is_floating_point() else v for k, v in src.items()}  # fp32 values, exactly
    cfg = vit_config("corenet_vit_b16", width=96, depth=3, heads=3, image_size=image_size)
    assert cfg.pos_interp == "corenet" and cfg.pos_rows == 197
    model = CatLIPModel(cfg, 11).double().eval()
    model.load_state_dict(load_encoder_state(src), strict=True)
    torch.manual_seed(0)
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    theirs = _corenet_forward(src, images, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(images), theirs, rtol=1e-10, atol=1e-10)
        # as the engine did before: the table for the model's size (corenet's rule, once), then
        # bicubic over the grid for the input's
        bicubic = CatLIPModel(replace(cfg, pos_interp="bicubic"), 11).double().eval()
        bicubic.load_state_dict(load_encoder_state(src, image_size=image_size), strict=True)
        if size != (image_size, image_size):
            assert (bicubic(images) - theirs).abs().max() > 1e-3 * theirs.abs().max()


@pytest.mark.parametrize("flash", [True, False], ids=["FlashTransformerEncoder", "TransformerEncoder"])
def test_corenet_vit_names_map_onto_ours(tmp_path: Path, flash: bool) -> None:
    src = _corenet_vit(flash=flash)
    path = tmp_path / "checkpoint_ema_best.pt"
    torch.save({"model_state_dict": src, "epoch": 3}, path)  # corenet's checkpoint wrapper
    out = load_encoder_state(path)
    assert not any("augment" in k for k in out)
    out_proj = "out_proj_attn" if flash else "out_proj"
    pairs = {
        "encoder.cls_token": "cls_token",
        "encoder.norm.weight": "post_transformer_norm.weight",
        "encoder.norm.bias": "post_transformer_norm.bias",
        "head.weight": "classifier.weight",
        "head.bias": "classifier.bias",
    }
    for i in range(3):
        o, b = f"encoder.blocks.{i}.", f"transformer.{i}."
        for p in ("weight", "bias"):
            pairs |= {
                o + f"norm1.{p}": b + f"pre_norm_mha.0.{p}",
                o + f"attn.qkv.{p}": b + f"pre_norm_mha.1.qkv_proj.{p}",
                o + f"attn.proj.{p}": b + f"pre_norm_mha.1.{out_proj}.{p}",
                o + f"norm2.{p}": b + f"pre_norm_ffn.0.{p}",
                o + f"mlp.0.{p}": b + f"pre_norm_ffn.1.{p}",
                o + f"mlp.2.{p}": b + f"pre_norm_ffn.4.{p}",
            }
    for i, (conv, norm) in enumerate(((0, 1), (3, 4), (6, None))):
        pairs[f"encoder.patch_embed.{conv}.weight"] = f"patch_emb.{i}.block.conv.weight"
        if norm is None:
            pairs[f"encoder.patch_embed.{conv}.bias"] = f"patch_emb.{i}.block.conv.bias"
        else:
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                pairs[f"encoder.patch_embed.{norm}.{k}"] = f"patch_emb.{i}.block.norm.{k}"
    assert set(out) == set(pairs) | {"encoder.pos_embed"}
    for ours, theirs in pairs.items():
        assert torch.equal(out[ours], src[theirs]), ours
    # corenet adds its 196 positions to the patches and then prepends the class token (no position):
    # our cat(cls, patches) + pos_embed computes the same with a zero first row.
    pos = out["encoder.pos_embed"]
    assert pos.shape == (1, 197, 96) and torch.equal(pos[0, 0], torch.zeros(96))
    table = src["pos_embed.pos_embed.pos_embed"]
    assert torch.equal(pos[0, 1:], table[0, 0])
    patches, cls = torch.randn(2, 196, 96), out["encoder.cls_token"]
    theirs = torch.cat([cls.expand(2, -1, -1), patches + table.reshape(1, 196, 96)], dim=1)
    ours = torch.cat([cls.expand(2, -1, -1), patches], dim=1) + pos
    assert torch.equal(ours, theirs)
    # at 256 px (256 patches), corenet's forward interpolates the table over (sequence, width)
    big = load_encoder_state(path, image_size=256)["encoder.pos_embed"]
    expect = torch.nn.functional.interpolate(table, size=(256, 96), mode="bilinear")
    assert big.shape == (1, 257, 96) and torch.allclose(big[0, 1:], expect[0, 0])


def test_corenet_training_checkpoint_gives_its_ema_weights_and_says_so(tmp_path: Path, capsys) -> None:
    """corenet's checkpoint.pt (corenet/utils/checkpoint_utils.py get_training_state): the weights
    under model_state_dict, their EMA (CatLIP's reported model) under ema_state_dict."""
    weights, ema = _corenet_vit(seed=0), _corenet_vit(seed=1)
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3))]).state_dict()
    path = tmp_path / "checkpoint.pt"
    state = {"iterations": 9, "epoch": 2, "model_state_dict": weights, "optim_state_dict": optim}
    torch.save({**state, "best_metric": 0.31, "is_interval_ckpt": False, "ema_state_dict": ema}, path)
    said: list[str] = []
    out = load_encoder_state(path, log=said.append)
    assert torch.equal(out["head.weight"], ema["classifier.weight"])
    assert torch.equal(out["encoder.blocks.2.mlp.0.weight"], ema["transformer.2.pre_norm_ffn.1.weight"])
    assert said == [f"{path}: loaded ema_state_dict (the EMA weights), not model_state_dict"]
    load_encoder_state(path)  # by default the line is printed
    assert capsys.readouterr().out == said[0] + "\n"
    # without an EMA there is no choice, and nothing to say
    torch.save(state, path)
    out = load_encoder_state(path, log=said.append)
    assert torch.equal(out["head.weight"], weights["classifier.weight"]) and len(said) == 1


@pytest.mark.filterwarnings("ignore:.*left out:")
def test_corenet_shape_errors() -> None:
    src = _corenet_vit()
    src["transformer.1.pre_norm_ffn.4.weight"] = src["transformer.1.pre_norm_ffn.4.weight"][:, :-16]
    with pytest.raises(
        InteropError, match=r"encoder.blocks.1.mlp.2.weight .*\(96, 368\), expected \(96, 384\)"
    ):
        load_encoder_state(src, partial=True)
    src = _corenet_vit()
    del src["cls_token"]
    with pytest.raises(InteropError, match="no cls_token"):
        load_encoder_state(src, partial=True)


# ---------------------------------------------------------------------------- corenet vocabulary


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_corenet_vocab_pickle_with_a_global_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "vocab.pkl"
    evil.write_bytes(pickle.dumps({"n2084071": 5, "x": _RunsCode(marker)}))
    with pytest.raises(InteropError, match=r"names the global (posix|os)\.system.*refused without running"):
        read_corenet_vocab(evil, synset_name=lambda o: "dog.n.01")
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the same bytes with pickle's own loader do run it
    assert marker.exists()
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(["n2084071"]))
    with pytest.raises(InteropError, match="holds a list"):
        read_corenet_vocab(tmp_path / "list.pkl")
    (tmp_path / "key.pkl").write_bytes(pickle.dumps({"02084071": 3}))
    with pytest.raises(InteropError, match="not corenet's pos \\+ offset"):
        read_corenet_vocab(tmp_path / "key.pkl")


def test_corenet_vocab_to_our_tsv(tmp_path: Path) -> None:  # WordNet 3.0: `catlip setup-nltk`
    from catlip.labels import Vocabulary

    counts = {"n4379243": 90, "n2084071": 70, "n2121620": 70, "n7942152": 10}  # table, dog, cat, people
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(counts, protocol=4))
    out = write_corenet_vocab(tmp_path / "v.pkl", tmp_path / "vocab.tsv", vocab_size=3)
    vocab = Vocabulary.load(out)
    assert vocab.wnids == ["n04379243", "n02084071", "n02121620"]  # corenet's order, padded offsets
    assert vocab.synsets == ["table.n.02", "dog.n.01", "cat.n.01"]
    assert vocab.lemmas == ["table", "dog", "cat"] and vocab.counts == [90, 70, 70]
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"n1": 1}))
    with pytest.raises(InteropError, match="n1 is no WordNet 3.0 noun synset"):
        read_corenet_vocab(tmp_path / "bad.pkl")


# ------------------------------------------------------------------ real timm and open_clip (venv)


def _open_clip_kwargs(**kw):
    return dict(image_size=64, patch_size=8, width=96, layers=2, heads=3, mlp_ratio=4.0, output_dim=96, **kw)


MAKE = {  # name -> (library, model name, kwargs, our ViTConfig for it)
    "timm_plain": ("timm", "vit_tiny_patch16_224", dict(img_size=64, patch_size=8, embed_dim=96, depth=2, num_classes=11), {}),
    "timm_ls_noembedcls_noqkvbias": (
        "timm",
        "vit_tiny_patch16_224",
        dict(img_size=64, patch_size=8, embed_dim=96, depth=2, num_classes=0, init_values=0.1, no_embed_class=True, qkv_bias=False),
        {},
    ),
    "open_clip_no_ln_pre_ls": ("open_clip", "", _open_clip_kwargs(no_ln_pre=True, ls_init_value=0.1), {"norm_eps": 1e-5}),
    "open_clip": ("open_clip", "", _open_clip_kwargs(), {"norm_eps": 1e-5, "pre_norm": True}),
    "timm_clip": (
        "timm",
        "vit_base_patch16_clip_224",
        dict(img_size=64, patch_size=8, embed_dim=96, depth=2, num_heads=3, num_classes=11),
        {"norm_eps": 1e-5, "pre_norm": True},
    ),
}  # fmt: skip


def _fast_random(name: str, vocab: int) -> CatLIPModel:
    """A model with random weights without the initialiser's truncated normals (~10 s for ViT-B)."""
    with torch.device("meta"):
        model = CatLIPModel(name, vocab)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_pre.weight")):
                p.fill_(1.0)  # LayerNorm gains (the perturbation below moves them off 1)
            else:
                p.normal_(0, 0.02)
    return _perturbed(model, 1)


def _checkpoint_tag(model: CatLIPModel, tmp: Path, name: str = "vit_tiny") -> Path:
    """A ZeRO-0 checkpoint tag directory as DeepSpeed writes it (the model states file with the
    run config and vocabulary identity)."""
    tag = tmp / "checkpoints" / "step_00000007"
    tag.mkdir(parents=True)
    meta = _meta(name)
    states = {
        "module": model.state_dict(),
        "config": json.loads(meta["catlip_config"]),
        "vocab": json.loads(meta["vocab"]),
        "step": 7,
        "ds_config": {"zero_optimization": {"stage": 0}},
    }
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    return tag


def _export_command(model: CatLIPModel, tmp: Path) -> Path:
    """`catlip export TAG --out F --format timm` on a checkpoint tag directory."""
    from engine.cli import main

    out = tmp / "vit_tiny.safetensors"
    assert main(["export", str(_checkpoint_tag(model, tmp)), "--out", str(out), "--format", "timm"]) == 0
    return out


def test_export_command_errors_are_messages(tmp_path: Path, capsys) -> None:
    from engine.cli import main

    tag = _checkpoint_tag(CatLIPModel(vit_config("corenet_vit_tiny"), 37), tmp_path, "corenet_vit_tiny")
    out = tmp_path / "x.safetensors"
    assert main(["export", str(tag), "--out", str(out), "--format", "timm"]) == 2
    err = capsys.readouterr().err
    assert "--format timm: a ViT with the conv stem" in err and "Traceback" not in err and not out.exists()
    assert main(["export", str(tag), "--out", str(out)]) == 0  # our own format holds it
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "catlip export: error:" in capsys.readouterr().err


RESAMPLE_GRIDS = [(8, 8), (20, 12), (25, 9), (7, 20)]  # multi-scale grids, non-square included


@pytest.fixture(scope="module")
def real_libraries(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of tests/interop_check.py in the interop venv: our exports into timm, and models made
    there for the reverse direction."""
    tmp = tmp_path_factory.mktemp("interop")
    job: dict = {"parity": [], "make": [], "atol": 1e-5, "rtol": 1e-5, "threads": 2}
    for name, image_size, batch in (
        ("vit_tiny", None, 4),
        ("vit_b16", None, 1),
        ("openclip_vit_b16", None, 1),
    ):
        torch.manual_seed(1)
        model = _tiny_model() if name == "vit_tiny" else _fast_random(name, 53)
        images = torch.randn(batch, 3, model.cfg.image_size, model.cfg.image_size)
        with torch.no_grad():
            logits = model(images)
        if name == "vit_tiny":  # through the command, from a checkpoint tag directory
            export = _export_command(model, tmp)
        else:
            export = export_timm(model.state_dict(), _meta(name, image_size), tmp / f"{name}.safetensors")
        save_file({"images": images, "logits": logits}, str(tmp / f"{name}.case"))
        job["parity"].append({"export": str(export), "case": str(tmp / f"{name}.case")})
    for i, (key, (library, model_name, kwargs, _)) in enumerate(MAKE.items()):
        job["make"].append(
            {
                "library": library,
                "name": model_name,
                "kwargs": kwargs,
                "out": str(tmp / f"{key}.safetensors"),
                "seed": 10 + i,
            }
        )
    torch.manual_seed(5)
    save_file({"pos": torch.randn(1, 1 + 14 * 14, 16)}, str(tmp / "pos.safetensors"))
    job["resample"] = [
        {
            "in": str(tmp / "pos.safetensors"),
            "grid": list(grid),
            "out": str(tmp / f"pos_{grid[0]}x{grid[1]}.safetensors"),
        }
        for grid in RESAMPLE_GRIDS
    ]
    (tmp / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = (
        f"source scripts/env_interop.sh >&2 && python tests/interop_check.py {tmp}/job.json {tmp}/result.json"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )  # ~30 s with the venv cached; building it takes a few minutes, once
    result = json.loads((tmp / "result.json").read_text()) if (tmp / "result.json").is_file() else {}
    return {"proc": proc, "result": result, "tmp": tmp}


def _ran(real: dict) -> dict:
    proc = real["proc"]
    assert real["result"], (
        f"interop_check.py failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return real["result"]


@pytest.mark.slow
def test_real_timm_loads_our_export_strictly_with_our_logits(real_libraries: dict) -> None:
    result = _ran(real_libraries)
    assert result["torch"].startswith("2.14.1")
    parity = {Path(p["export"]).stem: p for p in result["parity"]}
    assert parity["vit_tiny"]["timm_model"] == "vit_tiny_patch16_224"
    with safe_open(parity["vit_tiny"]["export"], "pt") as f:  # written by `catlip export --format timm`
        meta = f.metadata()
    assert meta["step"] == "7" and json.loads(meta["vocab"])["vocab_sha256"] == "ab" * 32
    assert json.loads(meta["catlip_config"])["model"]["name"] == "vit_tiny" and meta["weights"] == "trained"
    assert (
        parity["vit_b16"]["timm_model"] == "vit_base_patch16_224" and parity["vit_b16"]["timm_kwargs"] == "{}"
    )
    clip = parity["openclip_vit_b16"]  # norm_pre, eps 1e-5: timm's CLIP tower, no kwargs
    assert clip["timm_model"] == "vit_base_patch16_clip_224" and clip["timm_kwargs"] == "{}"
    for name, p in parity.items():
        assert p["ok"], (
            f"{name}: timm's logits differ from ours by {p['max_abs_diff']:.3g} (|logit| up to {p['max_abs_logit']:.3g})"
        )
    assert real_libraries["proc"].returncode == 0, real_libraries["proc"].stdout


@pytest.mark.slow
@pytest.mark.parametrize("key", list(MAKE))
def test_real_timm_and_open_clip_towers_give_our_outputs(real_libraries: dict, key: str) -> None:
    _ran(real_libraries)
    library, _, kwargs, overrides = MAKE[key]
    path = real_libraries["tmp"] / f"{key}.safetensors"
    case = load_file(str(path) + ".case")
    state = load_encoder_state(path)
    depth = kwargs.get("depth", kwargs.get("layers"))
    cfg = ViTConfig(**{**TINY, "depth": depth, **overrides})
    encoder = VisionTransformer(cfg).eval()
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")})
    with torch.no_grad():
        out = encoder(case["images"])  # (B, W)
        if "head.weight" in state:
            out = torch.nn.functional.linear(out, state["head.weight"], state["head.bias"])
    assert out.shape == case["output"].shape
    torch.testing.assert_close(out, case["output"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("grid", RESAMPLE_GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_position_tables_resample_as_timms_function(real_libraries: dict, grid: tuple[int, int]) -> None:
    """catlip.models.resample_pos_embed (multi-scale batches, other resolutions) against timm's
    resample_abs_pos_embed, run in the interop venv on the same table."""
    from catlip.models import resample_pos_embed

    _ran(real_libraries)
    tmp = real_libraries["tmp"]
    pos = load_file(str(tmp / "pos.safetensors"))["pos"]
    theirs = load_file(str(tmp / f"pos_{grid[0]}x{grid[1]}.safetensors"))["pos"]
    torch.testing.assert_close(resample_pos_embed(pos, grid), theirs, rtol=0, atol=1e-6)
