"""Transfer on the CPU: our model's forward against timm's forward of the same exported weights.

Two tasks, each ours and timm's side by side in one process, on the same input tensors, batch and
torch threads:
  * evaluate: the forward ``catlip evaluate`` / ``predict`` runs per batch (images -> logits over
    the V synsets; the class readout, a max over a few rows per class, is not timed: it is the
    same small gather for both), ours ``CatLIPModel(images)``, timm's ``model(images)``;
  * probe_features: a linear probe's feature extraction (the frozen tower, no head), ours
    ``model.encoder(images)``, timm's ``forward_head(forward_features(x), pre_logits=True)``.
The weights are ours (random, perturbed), written by ``catlip.convert.export_timm`` and read by
``timm.create_model(...).load_state_dict(strict=True)``, as a user would; the largest logit
difference is recorded as a check. fp32, ``torch.inference_mode``, attention through SDPA on
both sides (ours: ``attn_impl="sdpa"``; timm's fused attention).

Both sides run the same ATen ops in the same order (the logits agree bit for bit: max |diff| 0),
so the ratio should be 1; what it measures is that our module structure (the packed-qkv view, the
attention dispatcher) costs nothing against timm's. First results (2 shared cores, load 6-9 from
other jobs): ratios of the medians 0.998-1.096, paired medians 0.957-1.035, with single
repetitions from 0.2 to 1.9 on vit_tiny: the spread is the machine's, not the models'.

The CPU is shared, so the providers are interleaved within each repetition (in an order that
alternates) and the median over repetitions is reported. Runs in scripts/env_interop.sh's
environment (timm beside the checkout on PYTHONPATH; catlip.models imports only torch):

    source scripts/env_interop.sh && python perf/bench_transfer.py            # vit_tiny b64, vit_b16 b8
    python perf/bench_transfer.py --shapes vit_tiny:64 --threads 2 --reps 9

Rows append to perf/results/transfer_cpu.csv (device, date, commit, versions, shape, dtype, threads,
task, images/s ours and timm, ratio ours/timm of the medians, and the median, min and max of the
ratios paired within a repetition).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.common import append_rows, commit, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [
    "device", "date", "commit", "torch", "timm", "model", "image_size", "batch", "dtype", "vocab",
    "threads", "task", "ours_images_per_s", "timm_images_per_s", "ratio", "ratio_paired",
    "ratio_paired_min", "ratio_paired_max", "reps", "iters", "max_abs_logit_diff",
]  # fmt: skip


def build(name: str, vocab: int, tmp: Path, seed: int = 0):
    """Our CatLIP model (perturbed random weights) and timm's model loaded from its timm export."""
    import timm
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from catlip.convert import export_timm
    from catlip.models import CatLIPModel

    torch.manual_seed(seed)
    ours = CatLIPModel(name, vocab, attn_impl="sdpa").eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    meta = {
        "catlip_config": json.dumps({"model": {"name": name}}),
        "vocab": "{}",
        "step": "0",
        "weights": "bench",
    }
    path = export_timm(ours.state_dict(), meta, tmp / f"{name}.safetensors")
    with safe_open(str(path), "pt") as f:
        m = f.metadata()
    theirs = timm.create_model(
        m["timm_model"],
        pretrained=False,
        num_classes=int(m["timm_num_classes"]),
        **json.loads(m["timm_kwargs"]),
    ).eval()
    theirs.load_state_dict(load_file(str(path)), strict=True)
    return ours, theirs


def timed(fn, images, iters: int) -> float:
    """images/s of ``iters`` calls of ``fn(images)``."""
    start = time.perf_counter()
    for _ in range(iters):
        fn(images)
    return iters * images.shape[0] / (time.perf_counter() - start)


def bench_shape(name: str, batch: int, threads: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    import timm
    import torch

    torch.set_num_threads(threads)
    ours, theirs = build(name, args.vocab, tmp)
    size = ours.cfg.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))  # (B, 3, H, W)
    providers = {
        ("evaluate", "ours"): ours,
        ("evaluate", "timm"): theirs,
        ("probe_features", "ours"): ours.encoder,
        ("probe_features", "timm"): lambda x: theirs.forward_head(
            theirs.forward_features(x), pre_logits=True
        ),
    }
    with torch.inference_mode():
        diff = float((ours(images) - theirs(images)).abs().max())
        feats = float((ours.encoder(images) - providers[("probe_features", "timm")](images)).abs().max())
        for fn in providers.values():  # warm-up
            fn(images)
        t0 = time.perf_counter()
        ours(images)
        iters = max(1, round(args.seconds / max(time.perf_counter() - t0, 1e-6)))
        rates: dict[tuple[str, str], list[float]] = {k: [] for k in providers}
        keys = list(providers)
        for rep in range(args.reps):
            for key in keys if rep % 2 == 0 else keys[::-1]:  # interleaved; the order alternates
                rates[key].append(timed(providers[key], images, iters))
    rows = []
    for task in ("evaluate", "probe_features"):
        o, t = statistics.median(rates[(task, "ours")]), statistics.median(rates[(task, "timm")])
        # ours and timm measured back to back within each repetition: their ratio cancels the
        # slow drifts of a shared CPU's load better than the ratio of the two medians
        paired = [a / b for a, b in zip(rates[(task, "ours")], rates[(task, "timm")], strict=True)]
        rows.append(
            {
                "device": cpu_name(),
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
                "commit": commit(),
                "torch": torch.__version__,
                "timm": timm.__version__,
                "model": name,
                "image_size": size,
                "batch": batch,
                "dtype": "fp32",
                "vocab": args.vocab,
                "threads": threads,
                "task": task,
                "ours_images_per_s": f"{o:.2f}",
                "timm_images_per_s": f"{t:.2f}",
                "ratio": f"{o / t:.3f}",
                "ratio_paired": f"{statistics.median(paired):.3f}",
                "ratio_paired_min": f"{min(paired):.3f}",
                "ratio_paired_max": f"{max(paired):.3f}",
                "reps": args.reps,
                "iters": iters,
                "max_abs_logit_diff": f"{diff if task == 'evaluate' else feats:.2e}",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["vit_tiny:64", "vit_b16:8"], help="MODEL:BATCH ...")
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="torch threads settings")
    parser.add_argument("--vocab", type=int, default=24320, help="head rows V (corenet's CatLIP: 24,320)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions; the median is reported")
    parser.add_argument("--seconds", type=float, default=0.5, help="about this long per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "transfer_cpu.csv")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            name, batch = shape.split(":")
            for threads in args.threads:
                new = bench_shape(name, int(batch), threads, args, Path(tmp))
                for r in new:
                    print(
                        f"{r['model']:>9} b{r['batch']:<3} threads {r['threads']} {r['task']:<15} "
                        f"ours {r['ours_images_per_s']:>8} img/s  timm {r['timm_images_per_s']:>8} img/s  "
                        f"ratio {r['ratio']} (paired {r['ratio_paired']}, {r['ratio_paired_min']}-"
                        f"{r['ratio_paired_max']})  max |diff| {r['max_abs_logit_diff']}",
                        flush=True,
                    )
                rows += new
    if not args.no_write:
        append_rows(args.out, FIELDS, rows)
        print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
