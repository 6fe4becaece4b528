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
