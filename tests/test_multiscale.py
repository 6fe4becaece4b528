"""Multi-scale batches (engine/multiscale.py): the size table, the draws (the same on every rank),
DeepSpeed with variable micro-batches against plain PyTorch, the DALI loader's batches and an
exact resume of a 2-rank run switched on from the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks

from engine.config import ConfigError, from_dict, load_config
from engine.data import TensorLoader
from engine.multiscale import MultiScale, MultiScaleConfig, Scale, from_config, scaled_batch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"min": 128, "max": 320, "step": 16, "scales": 25}  # corenet's sampler.vbs for CatLIP
# the DALI runs: vit_tiny at 32 px (patch 8), base batch 16 -> sides 16-48 with batches 64-8
SMALL = {"min": 16, "max": 48, "step": 8, "scales": 5}


# --------------------------------------------------------------------------------------- table
def test_recipe_table_is_corenets_with_batches_scaled_to_equal_pixels():
    table = MultiScaleConfig(**RECIPE).table(224, 1024, patch=16)
    assert [s.height for s in table] == list(range(128, 321, 16))  # 25 spread values -> 13 sides
    assert all(s.height == s.width for s in table)
    assert [s.tokens(16) for s in table][0::6] == [65, 197, 401]
    assert {s.height: s.batch for s in table}[224] == 1024  # the base keeps its batch
    assert (table[0].batch, table[-1].batch) == (3136, 504)  # 1024 x 224^2 / 128^2; 4.9 -> 504
    for s in table:
        assert s.batch % 8 == 0
        assert abs(s.batch * s.height * s.width / (1024 * 224**2) - 1) < 4 / s.batch + 0.01
    # the tiny CPU model: the base is its own 64 px, not a literal 224
    tiny = MultiScaleConfig(min=32, max=96, step=8, scales=9).table(64, 32, patch=8)
    assert [(s.height, s.batch) for s in tiny][:2] == [(32, 128), (40, 80)]
    assert {s.height: s.batch for s in tiny}[64] == 32
    # rounding: a multiple of 8 where that is at least 8, else the nearest integer, never 0
    assert [scaled_batch(b, 64, 96, 96) for b in (32, 8, 4, 1)] == [16, 4, 2, 1]
    assert MultiScale(tiny, seed=0).chunk == 8  # the DALI pipeline's iteration


def test_config_switch_errors_and_patch_check():
    base = {"model": {"name": "vit_b16"}, "data": {"multiscale": RECIPE}}
    cfg = from_dict(base)
    assert len(from_config(cfg, 224, 16).table) == 13
    assert from_config(from_dict({}), 224, 16) is None  # off by default
    assert load_config(ROOT / "configs" / "coco_tiny_cpu.yaml").data.multiscale is None
    for name in ("b16", "l16", "h16", "h14"):  # on in the recipes, on the model's patch grid
        recipe = load_config(ROOT / "configs" / f"catlip_vit_{name}.yaml")
        patch = 14 if name == "h14" else 16
        table = from_config(recipe, 224, patch).table
        assert min(s.tokens(patch) for s in table) >= 65 and any(s.height == 224 for s in table)
    with pytest.raises(ConfigError, match="unknown key.*sizes"):
        from_dict({"data": {"multiscale": {**RECIPE, "sizes": 3}}})
    with pytest.raises(ConfigError, match="step <= min <= max"):
        from_dict({"data": {"multiscale": {**RECIPE, "min": 400}}})
    with pytest.raises(ValueError, match="not multiples of the model's patch 14"):
        from_config(cfg, 224, 14)


def test_draws_are_seeded_by_step_and_grouped_per_optimizer_step():
    table = MultiScaleConfig(**SMALL).table(32, 16)
    a, b = MultiScale(table, seed=3, group=2), MultiScale(table, seed=3, group=2)
    draws = [a.draw(i) for i in range(200)]
    assert draws == [b.draw(i) for i in reversed(range(200))][::-1]  # a function of the index only
    assert all(draws[2 * k] == draws[2 * k + 1] for k in range(100))  # one size per step
    counts = {s: draws[::2].count(s) for s in table}
    assert min(counts.values()) > 8  # every size is drawn (100 steps over 5 sizes)
    assert draws != [MultiScale(table, seed=4, group=2).draw(i) for i in range(200)]


# ------------------------------------------------------------------ DeepSpeed, variable batches
V, LR, STEPS = 50, 5e-3, 6
TINY_TABLE = (Scale(8, 8, 16), Scale(16, 16, 4), Scale(24, 24, 2))  # patch 8: 2, 5, 10 tokens


def _tiny_model():
    from catlip.models import CatLIPModel, ViTConfig

    torch.manual_seed(0)
    return CatLIPModel(ViTConfig(image_size=16, patch_size=8, width=32, depth=2, heads=2), V)


def _step_batches(schedule: MultiScale, world: int, accum: int) -> list[list[dict]]:
    """Per optimizer step, its micro-batches of the whole world (micro m, rank r: slice m*world+r)."""
    g = torch.Generator().manual_seed(99)
    steps = []
    for step in range(STEPS):
        micro = []
        for m in range(accum):
            s = schedule.draw(step * accum + m)
            n = s.batch * world
            labels = torch.full((n, 5), -1, dtype=torch.int64)
            for i in range(n):
                k = int(torch.randint(1, 6, (1,), generator=g))
                labels[i, :k] = torch.randperm(V, generator=g)[:k]
            micro.append({"image": torch.randn(n, 3, s.height, s.width, generator=g), "labels": labels})
        steps.append(micro)
    return steps


def _plain_losses(steps: list[list[dict]]) -> list[float]:
    """One process, no DeepSpeed: each step's loss is the mean over all its images."""
    from catlip.param_groups import param_groups
    from engine.parallel import lr_multiplier

    model = _tiny_model()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, 2, STEPS, 1e-5 / LR))
    out = []
    for micro in steps:
        total = sum(len(m["image"]) for m in micro)
        loss = sum(model(m["image"], m["labels"]) * len(m["image"]) for m in micro) / total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        out.append(loss.item())
    return out


def _ds_cfg(tmp: Path, accum: int):
    return from_dict(
        {
            "model": {"name": "vit_tiny", "image_size": 16},
            "data": {"batch_size": 4},
            "optim": {"lr": LR, "min_lr": 1e-5, "warmup_steps": 2, "weight_decay": 0.2, "grad_accum": accum},
            "run": {
                "out_dir": str(tmp),
                "steps": STEPS,
                "zero_stage": 2,
                "precision": "fp32",
                "log_every": 1,
            },
        }
    )


def _ds_variable(rank: int, tmp: str, group: int) -> list[float]:
    from engine.train import Trainer

    world, accum = 2, 2
    steps = _step_batches(MultiScale(TINY_TABLE, seed=0, group=group), world, accum)
    micro = []
    for step in steps:
        for batch in step:
            n = len(batch["image"]) // world  # rank r takes the r-th slice of each micro-step
            micro.append({k: v[rank * n : (rank + 1) * n] for k, v in batch.items()})
    trainer = Trainer(_ds_cfg(Path(tmp), accum), model_fn=_tiny_model, train_loader=TensorLoader(micro))
    losses = [e.loss for e in trainer.fit()]
    trainer.close()
    return losses


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_variable_micro_batches_average_like_one_big_batch(tmp_path):
    """2 ranks x grad_accum 2, the batch size and resolution changing every step (drawn once per
    step): ZeRO-2's losses are plain PyTorch's on each step's whole batch. (Drawn per micro-batch
    instead, group=1, the mean of the micro-batch means is not the mean over the images: the
    losses then differ by ~10%, which is why the draw is grouped by optim.grad_accum.)"""
    schedule = MultiScale(TINY_TABLE, seed=0, group=2)
    steps = _step_batches(schedule, 2, 2)
    assert len({m["image"].shape for s in steps for m in s}) > 1  # the sizes really change
    expected = _plain_losses(steps)
    got = run_ranks(_ds_variable, world=2, tmp=str(tmp_path), group=2)
    assert got[0] == got[1]
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- the DALI loader
def _loader_draws(rank: int, shards: str) -> dict:
    from engine.data import make_loader

    table = MultiScaleConfig(**SMALL).table(32, 16, patch=8)
    loader = make_loader(
        shards, 16, rank=rank, world_size=2, image_size=32, num_threads=1, device="cpu",
        multiscale=MultiScale(table, seed=7, group=1),
    )  # fmt: skip
    epochs = [[tuple(b["image"].shape) for b in loader] for _ in range(2)]  # (B, 3, H, W) each
    return {"epochs": epochs}


@pytest.mark.distributed
def test_dali_batches_follow_the_draws_identically_on_two_ranks(packed_photos):
    r0, r1 = run_ranks(_loader_draws, world=2, shards=str(packed_photos))
    assert r0 == r1  # the same (batch, h, w) sequence on both ranks, epoch lengths too
    table = MultiScaleConfig(**SMALL).table(32, 16)
    draws = [MultiScale(table, seed=7).draw(i) for i in range(sum(map(len, r0["epochs"])))]
    shapes = r0["epochs"][0] + r0["epochs"][1]
    assert shapes == [(d.batch, 3, d.height, d.width) for d in draws]  # batch i is draw i
    assert len({s[2] for s in shapes}) == len(table)  # every size was decoded
    # 1275 samples: 637 a rank, 79 full chunks of 8; an epoch's batches fill them but for less
    # than the largest batch (the draw that does not fit opens the next epoch)
    for epoch in r0["epochs"]:
        assert 632 - 64 < sum(s[0] for s in epoch) <= 632


def _run_cfg(tmp: Path, shards: str, steps: int):
    return load_config(
        ROOT / "configs" / "coco_tiny_cpu.yaml",
        [
            f"data.train={shards}",
            "data.val=null",
            "data.batch_size=16",
            f"data.multiscale={SMALL}",  # the switch, as on the command line
            "model.image_size=32",
            f"run.out_dir={tmp}",
            f"run.steps={steps}",
            "run.log_every=1",
            "checkpoint.every=0",
            "optim.warmup_steps=2",
        ],
    )


def _multiscale_run(rank: int, tmp: str, shards: str) -> dict:
    from engine.train import Trainer

    def make(name: str, steps: int = 7) -> tuple[Trainer, list]:
        trainer = Trainer(_run_cfg(Path(tmp) / name, shards, steps))
        seen, inputs = [], trainer.objective.inputs

        def recording(batch, device, dtype):
            seen.append(tuple(batch["image"].shape))
            return inputs(batch, device, dtype)

        trainer.objective.inputs = recording
        return trainer, seen

    full, full_seen = make("full")
    uninterrupted = [e.loss for e in full.fit()]
    images = [e.images_per_s * e.step_time for e in full.history]  # per step, all ranks
    tokens = [e.tokens_per_s * e.step_time for e in full.history]
    full.close()
    split, _ = make("split")
    first = [e.loss for e in split.fit(steps=4)]  # saves at step 4, mid-epoch
    split.close()
    resumed, resumed_seen = make("split")
    assert resumed.resume() and resumed.step == 4
    rest = [e.loss for e in resumed.fit()]
    resumed.close()
    return {
        "uninterrupted": uninterrupted,
        "split": first + rest,
        "seen": full_seen,
        "resumed_seen": resumed_seen,
        "images": images,
        "tokens": tokens,
        "patch": full.vit_cfg.patch_size,
    }


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_run_from_the_config_switch_resumes_exactly(tmp_path, packed_photos):
    r0, r1 = run_ranks(_multiscale_run, world=2, tmp=str(tmp_path), shards=str(packed_photos))
    assert r0["seen"] == r1["seen"] and len(set(r0["seen"])) > 1  # same varying sizes on both ranks
    assert r0["uninterrupted"] == r1["uninterrupted"] and np.isfinite(r0["uninterrupted"]).all()
    assert r0["split"] == r0["uninterrupted"]  # bit-exact after the mid-epoch resume
    assert r0["resumed_seen"] == r0["seen"][4:]
    np.testing.assert_allclose(r0["images"], [2 * s[0] for s in r0["seen"]], rtol=1e-6)
    p = r0["patch"]  # tokens: patches + the class token of every image, both ranks
    np.testing.assert_allclose(
        r0["tokens"], [2 * b * ((h // p) * (w // p) + 1) for b, _, h, w in r0["seen"]], rtol=1e-6
    )


def test_bad_images_in_multiscale_batches_become_placeholders_of_the_drawn_size(tmp_path):
    """The guard's placeholders and a decoder error's replay keep the drawn (batch, h, w): a chunk
    DALI raises on is replayed as 8 placeholders, the rest of the batch is real, the epoch goes on."""
    import io

    from PIL import Image

    from engine.data import make_loader
    from engine.packing.shards import ShardWriter

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (5 * i, 100, 50)).save(buf, "JPEG")
        return buf.getvalue()

    images = {f"g{i:02d}": jpeg(i) for i in range(48)}
    images["g03"] = jpeg(3)[:400]  # truncated: the guard's placeholder
    images["g10"] = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"  # framed, but DALI raises
    images["g30"] = b"not an image " * 8
    writer = ShardWriter(tmp_path, 48)
    for key, data in images.items():
        writer.write(key, [("jpg", data), ("txt", b"a caption"), ("lbl", np.array([3, 5], "<i4").tobytes())])
    writer.close()
    table = MultiScaleConfig(min=16, max=32, step=8, scales=3).table(32, 8, patch=8)  # batches 32, 16, 8
    scales = MultiScale(table, seed=3)
    loader = make_loader(
        [tmp_path / "shard-000000.tar"], 8, image_size=32, num_threads=1, device="cpu", keys=True,
        shuffle_buffer=1, multiscale=scales,
    )  # fmt: skip
    for epoch in range(2):
        batches = list(loader)
        shapes = [tuple(b["image"].shape) for b in batches]
        assert shapes == [
            (d.batch, 3, d.height, d.width) for d in map(scales.draw, range(2 * epoch, 2 * epoch + 2))
        ]
        assert sum(s[0] for s in shapes) == 48  # every sample once
        invalid = [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist(), strict=True) if not ok]
        assert invalid == ["g03", *(f"g{i:02d}" for i in range(8, 16)), "g30"]  # g10's chunk: g08-g15
        for b in batches:
            assert torch.count_nonzero(b["image"][~b["valid"].bool()]) == 0
        assert loader.failed_batches == epoch + 1 and loader.invalid_samples == 2 * (epoch + 1)


@pytest.mark.slow
def test_attention_kernels_compile_a_few_variants_over_the_recipe_lengths():
    """All 13 sequence lengths of corenet's table (65-401) through math, sdpa and triton, agreeing;
    the launches bound as Triton's JIT would on sm_90 give 3 variants per kernel, not one per
    length (perf/bench_multiscale.py --part kernels)."""
    from types import SimpleNamespace

    from perf.bench_multiscale import part_kernels

    rows = part_kernels(SimpleNamespace(heads=1))
    counts = {r["note"].split(":")[0]: int(r["value"]) for r in rows if r["provider"] == "triton"}
    assert counts == {"_attn_fwd_kernel": 3, "_bwd_dkdv_kernel": 3, "_bwd_dq_kernel": 3}
    worst = next(float(r["value"]) for r in rows if r["provider"] == "sdpa/math/triton")
    assert worst < 1e-5  # fp32: max |impl - math| over outputs and gradients
