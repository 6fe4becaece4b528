"""The CatLIP pre-training recipes (configs/catlip_vit_*.yaml), read with the engine's own config
loader, against corenet's: every value in the table below was read from corenet's YAML (or, where
the YAML leaves it to a default, from the corenet source file named) at the commit ``CORENET``.
What the engine does not reproduce is listed in docs/training.md, "Recipes and corenet"."""

from __future__ import annotations

from pathlib import Path

import pytest

from catlip.models import VIT_PRESETS
from engine.config import load_config
from engine.scaling import scale_for_batch

ROOT = Path(__file__).resolve().parents[1]
CORENET = "apple/corenet@1aa3acd17b7b02ba51889b648b1182845c4323eb"
PRE = "projects/catlip/pretraining"
# corenet has no ViT-H/14: the H/14 recipe follows its ViT-H/16 one
SOURCE = {"b16": "vit_base.yaml", "l16": "vit_large.yaml", "h16": "vit_huge.yaml", "h14": "vit_huge.yaml"}
RECIPES = tuple(SOURCE)

# engine key -> (corenet field in f"{PRE}/{SOURCE[recipe]}", value: one for all recipes, or per recipe)
TABLE = {
    "optim.lr": ("scheduler.cosine.max_lr", {"b16": 0.001, "l16": 0.0006, "h16": 0.0004, "h14": 0.0004}),
    "optim.min_lr": (
        "scheduler.cosine.min_lr",
        {"b16": 0.00001, "l16": 0.000006, "h16": 0.000004, "h14": 0.000004},
    ),
    "data.batch_size": ("dataset.train_batch_size0", {"b16": 1024, "l16": 512, "h16": 256, "h14": 256}),
    "run.steps": ("scheduler.max_iterations", 200000),
    "optim.warmup_steps": ("scheduler.warmup_iterations", 10000),
    "optim.weight_decay": ("optim.weight_decay", 0.2),
    "optim.betas": ("optim.adamw.beta1, optim.adamw.beta2", (0.9, 0.999)),
    "optim.grad_clip": ("common.grad_clip", 1.0),
    "optim.ema_decay": ("ema.enable true, ema.momentum 0.0005: decay = 1 - momentum", 1 - 0.0005),
    "parallel.precision": ('common.mixed_precision true, mixed_precision_dtype "bfloat16"', "bf16"),
    "parallel.grad_checkpointing": ("model.activation_checkpointing", True),
    "model.image_size": ("sampler.vbs.crop_size_width, crop_size_height", 224),
    "objective.name": ('loss.composite_loss[0]: classification "binary_cross_entropy"', "catlip"),
    "checkpoint.every": ("common.save_interval_freq", 5000),
    # sampler.vbs: min/max_crop_size 128/320, check_scale 16, max_n_scales 25 (ViT-H/14: the same
    # range on the 14-px patch grid)
    "data.multiscale": (
        "sampler.vbs",
        {
            **{r: {"min": 128, "max": 320, "step": 16, "scales": 25} for r in ("b16", "l16", "h16")},
            "h14": {"min": 126, "max": 322, "step": 14, "scales": 25},
        },
    ),
    # dataset comment: "effective batch size is 65k (1024 images per GPU * 8 A100 40 GB GPUs * 8 Nodes)"
    "optim.reference_batch": ("dataset.train_batch_size0 x 8 GPUs x nodes (the YAML's comment)", 65536),
}
# what the YAMLs leave to corenet's defaults: engine key -> (corenet file and option, value)
DEFAULTS = {
    "optim.eps": ("corenet/optims/base_optim.py --optim.eps", 1e-8),
    "data.scale": (
        "corenet/data/transforms/image_pil.py --image-augmentation.random-resized-crop.scale",
        (0.08, 1.0),
    ),
    "objective.label_smoothing": (
        "corenet/loss_fn/classification/binary_cross_entropy.py: no smoothing",
        0.0,
    ),
}
# nodes in the YAMLs' batch comments (8 A100 each): ViT-B 8, ViT-L 16, ViT-H 32
GPUS = {"b16": 8 * 8, "l16": 16 * 8, "h16": 32 * 8, "h14": 32 * 8}
# corenet/modeling/models/classification/config/vit.py: mode base, large, huge
WIDTH_DEPTH_HEADS = {
    "b16": (768, 12, 12),
    "l16": (1024, 24, 16),
    "h16": (1280, 32, 20),
    "h14": (1280, 32, 20),
}


def value(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def recipe(name: str):
    return load_config(ROOT / "configs" / f"catlip_vit_{name}.yaml")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_follows_corenet(name):
    cfg = recipe(name)
    for key, (field, expected) in {**TABLE, **DEFAULTS}.items():
        want = expected[name] if isinstance(expected, dict) and name in expected else expected
        got = value(cfg, key)
        where = f"{key}: corenet {CORENET} {PRE}/{SOURCE[name]} {field}"
        assert got == (pytest.approx(want, rel=1e-12) if isinstance(want, float) else want), where
    o = cfg.optim
    assert o.min_lr == pytest.approx(o.lr / 100)  # corenet's cosine ends at max_lr / 100
    assert o.layer_decay == 1.0  # pre-training: no layer-wise lr decay
    assert o.lr_scaling is None  # unset: a run far from 65,536 is warned of


@pytest.mark.parametrize("name", RECIPES)
def test_global_batch_is_65536_and_nothing_is_scaled_at_it(name):
    cfg = recipe(name)
    assert cfg.data.batch_size * GPUS[name] * cfg.optim.grad_accum == cfg.optim.reference_batch == 65536
    scaled, lines = scale_for_batch(cfg, GPUS[name])
    assert (scaled.optim.lr, scaled.optim.min_lr, scaled.optim.warmup_steps) == (
        cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps,
    )  # fmt: skip
    assert len(lines) == 1 and "warning" not in lines[0]
    # on a quarter of the GPUs with 4x accumulation: the same global batch
    cfg.optim.grad_accum = 4
    assert scale_for_batch(cfg, GPUS[name] // 4)[0].optim.lr == cfg.optim.lr


@pytest.mark.parametrize("name", RECIPES)
def test_the_model_is_corenets_size(name):
    vit = VIT_PRESETS[recipe(name).model.name]
    width, depth, heads = WIDTH_DEPTH_HEADS[name]
    assert (vit.width, vit.depth, vit.patch_size) == (width, depth, 14 if name == "h14" else 16)
    # ViT-H/14 keeps head_dim 80 (16 heads), as open_clip's ViT-H-14; corenet's ViT-H: 20 x 64
    assert vit.heads == (16 if name == "h14" else heads)


def test_the_docs_list_the_deviations():
    text = (ROOT / "docs" / "training.md").read_text()
    assert "## Recipes and corenet" in text
    section = text.split("## Recipes and corenet", 1)[1].split("\n## ", 1)[0]
    for word in (
        CORENET.split("@")[1][:12],
        "RangeAugment",
        "warmup_init_lr",
        "reference_batch",
        "lr_scaling",
    ):
        assert word in section, word
