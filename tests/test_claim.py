"""perf/claim.py's judgement, on made-up runs: the probe learns, the synset initialisation is
honoured, and the compute ratio is read off CatLIP's curve where it crosses CLIP's final mAP."""

from __future__ import annotations

import numpy as np
import pytest

from perf import claim


def _row(
    objective: str, step: int, steps: int, probe_map: float, seed: int = 0, budget: str = "images"
) -> dict:
    return {"seed": seed, "objective": objective, "budget": budget, "step": step, "steps": steps,
            "pretrain_s": float(step), "probe_map": probe_map, "chance": 0.05}  # fmt: skip


def test_ratio_is_where_catlips_curve_crosses_clips_final_map() -> None:
    rows = [_row("untrained", 0, 0, 0.10)]
    rows += [_row("catlip", s, 40, m) for s, m in ((10, 0.12), (20, 0.20), (30, 0.22), (40, 0.25))]
    rows += [_row("clip", s, 80, m) for s, m in ((40, 0.15), (80, 0.16))]  # pretrain_s = step
    s = claim.summarise(rows, ("catlip", "clip"))
    # CLIP ends at 0.16 after 80 s; CatLIP passes 0.16 halfway between 10 s (0.12) and 20 s (0.20)
    assert s["match"]["catlip_s"] == pytest.approx(15.0)
    assert s["match"]["ratio"] == pytest.approx(15.0 / 80.0)
    assert s["probe"]["catlip@images"]["mean"] == pytest.approx(0.25)
    assert s["untrained_probe"]["mean"] == pytest.approx(0.10)


def test_no_ratio_when_catlip_never_reaches_clip_and_spread_over_seeds() -> None:
    rows = [_row("untrained", 0, 0, 0.10, seed) for seed in (0, 1)]
    rows += [_row("catlip", 10, 10, m, seed) for seed, m in ((0, 0.11), (1, 0.13))]
    rows += [_row("clip", 10, 10, 0.30, seed) for seed in (0, 1)]
    s = claim.summarise(rows, ("catlip", "clip"))
    assert s["match"] is None
    assert s["probe"]["catlip@images"]["mean"] == pytest.approx(0.12)
    assert s["probe"]["catlip@images"]["std"] == pytest.approx(np.std([0.11, 0.13], ddof=1))
    assert "does not reach" in claim.report({"seeds": [0, 1], **s})
    # an untrained tower at or above CLIP's final probe: nothing to read a ratio from
    rows += [_row("untrained", 0, 0, 0.8, seed=2)]  # mean 0.33 >= 0.30
    s = claim.summarise(rows, ("catlip", "clip"))
    assert s["match"] is None and s["untrained_reaches_clip"]
    assert "no pre-training gain" in claim.report({"seeds": [0, 1, 2], **s})


def test_probe_learns_and_starts_from_the_given_classifier() -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(200, 6)).astype(np.float32) * 3 + 1
    w_true = g.normal(size=(4, 6)).astype(np.float32)
    y = (x @ w_true.T > 1).astype(np.float32)
    from engine.metrics import average_precision

    learned = average_precision(claim.probe(x[:150], y[:150], x[150:]), y[150:])[0]
    assert learned > 0.9
    # with no training steps the probe scores with the initial classifier, on the raw features
    saved = claim.PROBE_STEPS
    try:
        claim.PROBE_STEPS = 0
        b = np.array([0.5, -1.0, 0.0, 2.0], dtype=np.float32)
        scores = claim.probe(x[:150], y[:150], x[150:], (w_true, b))
    finally:
        claim.PROBE_STEPS = saved
    np.testing.assert_allclose(scores, x[150:] @ w_true.T + b, rtol=1e-4, atol=1e-4)
