"""The step harness and the scaling model run on the CPU at tiny size and print their tables."""

from __future__ import annotations

import csv
import json

import pytest

from perf import bench_step, scaling_model
from perf.flops import TEXT_TOWER, catlip_flops_per_image, clip_allgather_bytes, image_tower


def test_flop_counts_match_known_sizes():
    vit_b16 = image_tower("vit_b16")
    # ViT-B/16 at 224 px: the usually quoted "17.6 GFLOPs" are multiply-adds, i.e. ~35 GFLOPs
    assert 34.5e9 < vit_b16.forward_flops() < 35.5e9
    assert 84.5e6 < vit_b16.params() < 85.5e6  # the 12 blocks; ViT-B/16 is 86M with embeddings
    assert 5.5e9 < TEXT_TOWER.forward_flops() < 6.5e9  # 77 tokens x 12 layers x width 512
    assert catlip_flops_per_image(vit_b16, 24_320) == pytest.approx(
        3 * (vit_b16.forward_flops() + 2 * 768 * 24_320)
    )
    # 2 ranks each receive the other's 512-wide fp32 image and text embeddings of 32 samples
    assert clip_allgather_bytes(64, 2, 512) == 2 * 0.5 * 64 * 512 * 4


@pytest.mark.distributed
@pytest.mark.slow
def test_step_harness_on_two_cpu_ranks(tmp_path, capsys):
    argv = ["--device", "cpu", "--world", "2", "--model", "vit_tiny", "--image-size", "32", "--batch", "8"]
    argv += [
        "--vocab",
        "500",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
        "--trace",
        str(tmp_path),
    ]
    assert bench_step.main(argv) == 0
    out = capsys.readouterr().out
    assert "CatLIP / clip images/s (equal batch)" in out and "gather MB" in out
    rows = {r["objective"]: r for r in csv.DictReader(open(tmp_path / "step_cpu.csv"))}
    assert set(rows) == {"catlip", "clip", "siglip"}
    assert float(rows["catlip"]["allgather_bytes"]) == 0
    assert float(rows["clip"]["allgather_bytes"]) > 0 and float(rows["clip"]["ms_text_fwd"]) > 0
    assert (tmp_path / "step_cpu.svg").read_text().startswith("<svg")
    assert (tmp_path / "step_catlip_cpu.json").stat().st_size > 0


def test_scaling_model_reports_the_paper_settings(tmp_path, capsys):
    assert scaling_model.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "paper 0.37x" in out and "assumptions" in out
    data = json.loads((tmp_path / "scaling_model.json").read_text())
    for p in data["paper_settings"]:
        assert 0 < p["gpu_hours_ratio"] < 1  # CatLIP cheaper under every assumption set here
        assert p["catlip_gpus"] == 64 and p["clip_gpus"] == 256
    rows = list(csv.DictReader(open(tmp_path / "scaling_model.csv")))
    assert {int(r["world"]) for r in rows} == {2**i for i in range(11)}
