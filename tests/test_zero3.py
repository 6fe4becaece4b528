"""ViT-H under ZeRO-3 at reduced depth on 2 gloo ranks: every parameter is split in equal halves
and each rank holds about 16 bytes per parameter / ranks of model states (perf/bench_zero3.py
measures the full ViT-H/16 and H/14; its table is perf/results/zero3_cpu.csv)."""

from __future__ import annotations

import math

import pytest

from tests.dist_utils import run_ranks

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _rank(rank: int, tmp: str) -> dict:
    from perf.bench_zero3 import rank_run

    row = rank_run("vit_h16", run_dir=tmp, steps=1, depth=2, image_size=32, save=False)
    return {k: row[k] for k in ("params", "partitions", "kinds", "held")}


def test_vit_h_width_partitions_in_halves_on_two_ranks(tmp_path) -> None:
    ranks = run_ranks(_rank, world=2, tmp=str(tmp_path))
    from catlip.models import vit_config

    cfg = vit_config("vit_h16", depth=2, image_size=32)
    w, hidden, v = cfg.width, int(cfg.width * cfg.mlp_ratio), 24_320
    expected = (
        3 * w * 16 * 16 + w + w + (cfg.num_tokens) * w  # patch embed, class token, position embeddings
        + cfg.depth * (4 * w + 3 * w * w + 3 * w + w * w + w + w * hidden + hidden + hidden * w + w)
        + 2 * w + v * w + v  # final norm, head
    )  # fmt: skip
    assert ranks[0]["params"] == ranks[1]["params"] == expected
    for name, (numel, held0) in ranks[0]["partitions"].items():
        held1 = ranks[1]["partitions"][name][1]
        assert held0 == held1 == math.ceil(numel / 2), (name, numel, held0, held1)
    for r in ranks:
        held = r["held"]
        assert held == sum(math.ceil(n / 2) for n, _ in r["partitions"].values())
        kinds = r["kinds"]
        # fp32 ZeRO-3: the rank's parameter partition, the optimizer's fp32 copy of it, its
        # gradient partition and AdamW's two moments, 4 bytes each per held parameter (+ padding)
        for kind, per_param in (("params", 4), ("fp32_partitions", 4), ("grads", 4), ("moments", 8)):
            assert per_param * held <= kinds[kind] <= per_param * held * 1.01 + 4096, (kind, kinds)


def _built_under_zero_init(rank: int) -> dict:
    import deepspeed
    import torch

    from catlip.models import CatLIPModel, vit_config
    from engine.config import from_dict
    from engine.distributed import init_distributed
    from engine.parallel import build_model

    init_distributed()
    cfg = from_dict({"run": {"zero_stage": 3, "precision": "fp32", "persistence_threshold": 0}})
    vit = vit_config("vit_tiny", depth=2, image_size=32)
    torch.manual_seed(0)
    model = build_model(lambda: CatLIPModel(vit, 97), cfg, 2)
    held = {n: (p.ds_tensor.numel(), p.ds_numel, p.numel()) for n, p in model.named_parameters()}
    torch.manual_seed(0)
    plain = dict(CatLIPModel(vit, 97).named_parameters())  # built whole, as without ZeRO-3
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        differ = [n for n, p in model.named_parameters() if not torch.equal(p, plain[n])]
    fc2 = plain["encoder.blocks.0.mlp.2.weight"]
    from catlip.param_groups import param_groups

    def decayed(m) -> list[int]:  # each group's parameter count: decayed, not decayed
        return [len(g["params"]) for g in param_groups(m, 0.05)]

    groups = (decayed(model), decayed(CatLIPModel(vit, 97)))
    return {"held": held, "differ": differ, "fc2_std": fc2.std().item(), "groups": groups}  # small


def test_zero_init_build_is_partitioned_and_keeps_the_initialisation() -> None:
    """engine.parallel.build_model under ZeRO-3: every parameter is partitioned from the start
    (no rank holds it whole), and the weights gathered back equal the plain build's with the same
    seed, including VisionTransformer.reset_parameters' truncated normals over its (already
    partitioned) blocks and the head's zero weight and label-prior bias."""
    for r in run_ranks(_built_under_zero_init, world=2):
        for name, (held, numel, data) in r["held"].items():
            assert held == math.ceil(numel / 2) and data == 0, (name, held, numel, data)
        assert r["differ"] == []
        assert r["fc2_std"] == pytest.approx(0.02, rel=0.1)  # reset_parameters' init, not Linear's own
        # weight decay by each parameter's own rank (ds_shape), not its 1-D partition's
        assert r["groups"][0] == r["groups"][1], r["groups"]
