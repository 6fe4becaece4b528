"""Scaling model: predicted CatLIP / CLIP per-GPU throughput and GPU-hours, world size 1 to 1024.

Step time per GPU for a local batch b = B / W (global batch B over W GPUs):

    t_compute = b * F / (peak * mfu)            F: training FLOPs per sample (perf/flops.py)
    t_gather  = (W - 1) * alpha + G(W) / bw     CLIP only: G = 2 (W-1)/W * B * E * 4 bytes
                                                (image and text embeddings, fp32, open_clip
                                                all-gathers them in the loss dtype)
    t_reduce  = max(0, 2 (W-1)/W * P * 2 / bw - overlap * t_backward)
                                                gradient all-reduce of P bf16 parameters, hidden
                                                behind the backward pass up to ``overlap``
    t_step    = t_compute + t_gather + t_reduce
    images/s per GPU = b / t_step;   GPU-hours = steps * B / (images/s per GPU) / 3600

The all-gather sits on the critical path (the loss needs every rank's embeddings before it can
start); the gradient all-reduce overlaps the backward pass. Parameters: peak and MFU of the
device, interconnect bandwidth and latency; each can be replaced by a measured value from
``perf/bench_step.py`` (``--mfu-catlip``, ``--mfu-clip``, ``--bandwidth``). Defaults are stated
assumptions, printed with the table and written next to it.

The paper's setting (CatLIP, arXiv 2404.15653): 200k steps at a global batch of 65,536; CatLIP
ran 64 GPUs x 1,024 images, CLIP 256 GPUs x 256 pairs, and CatLIP took ~0.37x the GPU-hours.

    python perf/scaling_model.py [--model vit_b16] [--bandwidth-gbs 25] [--out perf/results/]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from perf.flops import (  # noqa: E402
    TEXT_TOWER,
    Tower,
    catlip_flops_per_image,
    clip_allgather_bytes,
    clip_flops_per_image,
    image_tower,
)


@dataclass
class Assumptions:
    peak_tflops: float = 989.0  # H100/H200 bf16 dense
    mfu_catlip: float = 0.45  # image tower + head: large GEMMs
    mfu_clip: float = 0.40  # plus a 77-token text tower and the B_local x B_global logits
    bandwidth_gbs: float = 25.0  # per-GPU inter-node bandwidth (200 Gb/s InfiniBand)
    latency_us: float = 10.0  # per ring step
    overlap: float = 0.8  # share of the backward that hides the gradient all-reduce
    vocab: int = 24_320
    embed: int = 512  # CLIP embedding width (ViT-B/16); 1024 for ViT-H
    global_batch: int = 65_536
    steps: int = 200_000


def predict(image: Tower, world: int, a: Assumptions, objective: str) -> dict[str, float]:
    b = a.global_batch / world
    peak = a.peak_tflops * 1e12
    if objective == "catlip":
        flops, mfu, gather, params = catlip_flops_per_image(image, a.vocab), a.mfu_catlip, 0.0, image.params()
        params += image.width * a.vocab
    else:
        flops = clip_flops_per_image(image, TEXT_TOWER, a.embed, a.global_batch)
        mfu, params = a.mfu_clip, image.params() + TEXT_TOWER.params()
        g_bytes = clip_allgather_bytes(a.global_batch, world, a.embed)
        gather = (world - 1) * a.latency_us * 1e-6 + g_bytes / (a.bandwidth_gbs * 1e9) if world > 1 else 0.0
    t_compute = b * flops / (peak * mfu)
    t_backward = t_compute * 2 / 3
    reduce_bytes = 2 * (world - 1) / world * params * 2 if world > 1 else 0.0
    t_reduce = max(0.0, reduce_bytes / (a.bandwidth_gbs * 1e9) - a.overlap * t_backward)
    t_step = t_compute + gather + t_reduce
    per_gpu = b / t_step
    return {
        "world": world,
        "local_batch": b,
        "flops_per_sample": flops,
        "t_compute_ms": 1e3 * t_compute,
        "t_gather_ms": 1e3 * gather,
        "t_reduce_ms": 1e3 * t_reduce,
        "t_step_ms": 1e3 * t_step,
        "images_per_s_per_gpu": per_gpu,
        "gpu_hours": a.steps * a.global_batch / per_gpu / 3600,
    }


def table(model: str, a: Assumptions, worlds: list[int]) -> list[dict]:
    image = image_tower(model)
    rows = []
    for w in worlds:
        cat, clip = predict(image, w, a, "catlip"), predict(image, w, a, "clip")
        rows.append(
            {
                "model": model,
                "world": w,
                "catlip_img_s_gpu": round(cat["images_per_s_per_gpu"], 1),
                "clip_img_s_gpu": round(clip["images_per_s_per_gpu"], 1),
                "throughput_ratio": round(cat["images_per_s_per_gpu"] / clip["images_per_s_per_gpu"], 3),
                "clip_gather_ms": round(clip["t_gather_ms"], 2),
                "clip_step_ms": round(clip["t_step_ms"], 1),
                "catlip_step_ms": round(cat["t_step_ms"], 1),
            }
        )
    return rows


def paper_settings(model: str, a: Assumptions) -> dict:
    """CatLIP on 64 GPUs vs CLIP on 256 GPUs at global batch 65,536, 200k steps (the paper's runs)."""
    image = image_tower(model)
    cat, clip = predict(image, 64, a, "catlip"), predict(image, 256, a, "clip")
    return {
        "model": model,
        "catlip_gpus": 64,
        "clip_gpus": 256,
        "catlip_img_s_gpu": round(cat["images_per_s_per_gpu"], 1),
        "clip_img_s_gpu": round(clip["images_per_s_per_gpu"], 1),
        "per_gpu_throughput_ratio": round(cat["images_per_s_per_gpu"] / clip["images_per_s_per_gpu"], 3),
        "catlip_gpu_hours": round(cat["gpu_hours"]),
        "clip_gpu_hours": round(clip["gpu_hours"]),
        "gpu_hours_ratio": round(cat["gpu_hours"] / clip["gpu_hours"], 3),
        "paper_gpu_hours_ratio": 0.37,
        "paper_per_gpu_throughput_ratio": 2.7,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Assumptions()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--models", nargs="+", default=["vit_b16", "vit_h16"])
    parser.add_argument(
        "--from-step-csv",
        type=Path,
        help="take mfu_catlip and mfu_clip from the last equal-batch rows of a GPU perf/bench_step.py CSV",
    )
    parser.add_argument("--out", type=Path, help="folder for scaling_model.csv and .json")
    args = parser.parse_args(argv)
    a = Assumptions(**{k: getattr(args, k) for k in asdict(defaults)})
    if args.from_step_csv:
        measured = {}
        for row in csv.DictReader(open(args.from_step_csv)):
            if row["setting"] == "equal batch" and row["mfu"] not in ("", "nan"):
                measured[row["objective"]] = float(row["mfu"])
        if not {"catlip", "clip"} <= set(measured):
            raise SystemExit(f"{args.from_step_csv}: no GPU MFU rows for both catlip and clip")
        a.mfu_catlip, a.mfu_clip = measured["catlip"], measured["clip"]
        print(f"MFU measured in {args.from_step_csv}: CatLIP {a.mfu_catlip:.3f}, CLIP {a.mfu_clip:.3f}")
    worlds = [2**i for i in range(11)]
    all_rows, papers = [], []
    print("assumptions:", json.dumps(asdict(a)))
    for model in args.models:
        embed = 1024 if model.startswith("vit_h") else a.embed
        am = Assumptions(**{**asdict(a), "embed": embed})
        rows = table(model, am, worlds)
        all_rows += rows
        print(f"\n{model} (embed {embed}), global batch {am.global_batch:,}")
        print(
            f"{'GPUs':>6} {'CatLIP img/s/GPU':>17} {'CLIP img/s/GPU':>15} {'ratio':>6} {'CLIP gather ms':>15}"
        )
        for r in rows:
            print(
                f"{r['world']:>6} {r['catlip_img_s_gpu']:>17,.1f} {r['clip_img_s_gpu']:>15,.1f} "
                f"{r['throughput_ratio']:>6.2f} {r['clip_gather_ms']:>15.2f}"
            )
        p = paper_settings(model, am)
        papers.append(p)
        print(
            f"paper's runs (CatLIP 64 GPUs, CLIP 256 GPUs, {am.steps:,} steps): per-GPU throughput "
            f"ratio {p['per_gpu_throughput_ratio']:.2f} (paper 2.7); GPU-hours {p['catlip_gpu_hours']:,} vs "
            f"{p['clip_gpu_hours']:,} = {p['gpu_hours_ratio']:.2f}x (paper 0.37x)"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "scaling_model.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(all_rows[0]))
            writer.writeheader()
            writer.writerows(all_rows)
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        (args.out / "scaling_model.json").write_text(
            json.dumps({"date": stamp, "assumptions": asdict(a), "paper_settings": papers}, indent=2) + "\n"
        )
        print(f"\nwrote {args.out / 'scaling_model.csv'} and scaling_model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
