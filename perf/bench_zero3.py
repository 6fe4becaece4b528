"""ViT-H under DeepSpeed ZeRO-3 on CPU gloo ranks, measured: memory per rank against 16 P / N,
step time, checkpoint save/load time and size, and ``catlip export`` of the partitioned checkpoint.

    python perf/bench_zero3.py [--models vit_h16 vit_h14] [--offload none cpu] [--steps 3]
                               [--batch 1] [--world 2] [--bucket 20000000] [--sub-group 20000000]
                               [--no-zero-init] [--out perf/results/zero3_cpu.csv]

For each (model, offload) it runs the real trainer (engine.train.Trainer: the CatLIP model with
its 24,320-synset head, fp32, activation checkpointing, ZeRO-3 with the default persistence
threshold, torch's AdamW) on ``--world`` gloo ranks with one thread each, on synthetic 224 px
images and labels (the loader is not what is measured). The model is built under
``deepspeed.zero.Init`` (parallel.zero_init, engine.parallel.build_model: partitioned as it is
constructed, never whole on a rank; ``--no-zero-init`` builds it whole, the trainer's default), and ZeRO-3's working
buffers are bounded by ``--bucket`` elements (parallel.reduce_bucket_size, prefetch_bucket_size,
max_live_parameters, max_reuse_distance; DeepSpeed's defaults are 5e8-1e9, 2-4 GB each in fp32)
and ``--sub-group`` (parallel.sub_group_size: the optimizer steps that many elements at a time). Then:
  * model-state bytes held by each rank, counted from the tensors ZeRO-3 keeps (the rank's
    parameter partition, the fp32 partition the optimizer steps, its gradient partition and the
    two AdamW moments), against the 16 bytes x parameters / ranks that ZeRO-3 promises in fp32;
  * each rank's peak resident memory (ru_maxrss) and its resident memory after set-up;
  * the median step time (forward, backward with recomputation, optimizer step);
  * the trainer's checkpoint save and resume time and the checkpoint's size on disk;
  * ``catlip export`` of that checkpoint (consolidating the partitions): time and peak memory.
``--offload cpu`` sets DeepSpeed's ``offload_optimizer: {device: cpu}`` (``parallel.offload_optimizer``
in a run config). Rows go to ``--out``. ``--depth`` cuts the model to that many blocks (the
slow test in tests/test_zero3.py runs 2 blocks of ViT-H width). ``BENCH_ZERO3_LOG=1`` prints each
rank's stages with its resident memory (a run killed for memory shows how far it got).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.common import ROOT, append_rows, commit, cpu_name  # noqa: E402

VOCAB = 24_320
# glibc raises its mmap threshold to the size of each big block freed (up to 32 MB), so ViT-H's
# 26 MB weights, gathered one at a time while the model is built and initialised, end up on the
# heap and stay resident after they are freed (~100 MB per block, 3 GB per rank for ViT-H). A
# fixed 1 MB threshold maps every big tensor on its own and unmaps it when it is freed.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}
FIELDS = [
    "date", "commit", "device", "model", "depth", "params", "world", "batch_per_rank", "offload",
    "zero_init", "bucket_elems", "sub_group_elems", "load_mmap",
    "model_state_mb_per_rank", "ideal_16p_over_n_mb", "ratio_to_ideal", "state_mb_by_kind",
    "params_held_per_rank",
    "rss_after_setup_mb", "peak_rss_fit_mb", "peak_rss_mb", "median_step_s", "save_s", "load_s", "ckpt_mb",
    "export_s", "export_peak_rss_mb", "command",
]  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def _progress(rank: int, stage: str) -> None:
    """A line on stderr per stage, so that a run killed for memory shows how far it got."""
    print(
        f"[rank {rank}] {stage}: rss {_rss_mb():.0f} MB, peak {_peak_rss_mb():.0f} MB",
        file=sys.stderr,
        flush=True,
    )


def synthetic_loader(batch: int, image_size: int, steps: int, seed: int):
    """Fixed random 224 px-style batches and labels (the loader is not what is measured)."""
    import torch

    from engine.data import TensorLoader

    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        labels = torch.randint(0, VOCAB, (batch, 8), generator=g)
        labels[:, 5:] = -1
        batches.append(
            {"image": torch.randn(batch, 3, image_size, image_size, generator=g), "labels": labels}
        )
    return TensorLoader(batches)


def model_state_bytes(engine) -> tuple[dict[str, int], int]:
    """(bytes of model states this rank holds by kind, parameters it holds): its ZeRO-3 parameter
    partitions, the optimizer's fp32 partitions, gradient partitions and AdamW moments, each storage
    counted once (the first kind that names it)."""
    import torch

    seen: set[tuple[int, int]] = set()
    kinds = {"params": 0, "fp32_partitions": 0, "grads": 0, "moments": 0}

    def add(kind: str, t) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                kinds[kind] += t.untyped_storage().nbytes()

    held = 0
    for p in engine.module.parameters():
        t = getattr(p, "ds_tensor", p)
        held += t.numel()
        add("params", t)
    opt = engine.optimizer
    for t in getattr(opt, "fp32_partitioned_groups_flat", None) or []:
        add("fp32_partitions", t)
    grads = getattr(opt, "averaged_gradients", None) or {}
    for v in grads.values() if isinstance(grads, dict) else grads:
        for t in v if isinstance(v, (list, tuple)) else [v]:
            add("grads", t)
    add("grads", getattr(opt, "grad_partitions_flat_buffer", None))
    for state in opt.optimizer.state.values():
        for t in state.values():
            add("moments", t)
    return kinds, held


def rank_run(
    model: str,
    *,
    run_dir: str,
    steps: int = 3,
    batch: int = 1,
    offload: str = "none",
    depth: int = 0,
    image_size: int = 0,
    save: bool = True,
    zero_init: bool = True,
    bucket: int = 20_000_000,
    sub_group: int = 20_000_000,
) -> dict:
    """One rank's part (the process group comes from the environment, as torchrun or
    tests/dist_utils.run_ranks set it): build, step, save, resume; this rank's measurements."""
    import torch
    import torch.distributed as dist

    from catlip.models import CatLIPModel, vit_config
    from engine.config import from_dict
    from engine.train import Trainer

    torch.set_num_threads(1)
    cfg = from_dict(
        {
            "model": {"name": model},
            "data": {"batch_size": batch},
            "optim": {"lr": 1e-4, "warmup_steps": 1, "weight_decay": 0.05},
            "parallel": {
                "zero_stage": 3, "precision": "fp32", "grad_checkpointing": True, "offload_optimizer": offload,
                "reduce_bucket_size": bucket, "prefetch_bucket_size": bucket,
                "max_live_parameters": bucket, "max_reuse_distance": bucket, "sub_group_size": sub_group,
                "zero_init": zero_init,
            },
            "checkpoint": {"every": 0},
            "run": {"out_dir": run_dir, "steps": steps, "log_every": 1},
        }
    )  # fmt: skip
    overrides = {"depth": depth} if depth else {}
    if image_size:
        overrides["image_size"] = image_size
    vit = vit_config(model, **overrides)
    rank = int(os.environ.get("RANK", 0))
    loader = synthetic_loader(batch, vit.image_size, steps, seed=rank)

    trainer = Trainer(
        cfg,
        vocab_size=VOCAB,
        model_fn=lambda: CatLIPModel(vit, VOCAB),  # built under zero.Init with parallel.zero_init
        train_loader=loader,
        log=lambda line: _progress(rank, line[:50]) if os.environ.get("BENCH_ZERO3_LOG") else None,
    )
    try:
        module = trainer.engine.module
        row = {
            "params": sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters()),
            "partitions": {n: [p.ds_numel, p.ds_tensor.numel()] for n, p in module.named_parameters()},
            "rss_setup": _rss_mb(),
        }
        _progress(rank, "set up")
        history = trainer.fit()
        row["peak_rss_fit"] = _peak_rss_mb()
        _progress(rank, f"{len(history)} steps")
        kinds, held = model_state_bytes(trainer.engine)
        row.update(
            kinds=kinds,
            model_state_bytes=sum(kinds.values()),
            held=held,
            step_s=statistics.median(h.step_time for h in history[1:] or history),
        )
        if save:
            dist.barrier()
            t0 = time.perf_counter()
            path = trainer.save()
            dist.barrier()
            row.update(save_s=time.perf_counter() - t0, ckpt=str(path))
            _progress(rank, "saved")
            t0 = time.perf_counter()
            trainer.resume(path)
            dist.barrier()
            row.update(load_s=time.perf_counter() - t0)
        row["peak_rss"] = _peak_rss_mb()
    finally:
        trainer.close()
    return row


def worker(args: argparse.Namespace) -> None:
    """Under torchrun: :func:`rank_run`, all ranks' rows printed as JSON by rank 0."""
    import torch.distributed as dist

    row = rank_run(
        args.model, run_dir=args.run_dir, steps=args.steps, batch=args.batch, offload=args.offload,
        depth=args.depth, zero_init=not args.no_zero_init, bucket=args.bucket, sub_group=args.sub_group,
    )  # fmt: skip
    row.pop("partitions")
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(rows), flush=True)


def measure(model: str, offload: str, args: argparse.Namespace, tmp: Path) -> dict:
    run_dir = tmp / f"{model}-{offload}"
    cmd = [
        sys.executable, "-m", "engine.launch", f"--nproc_per_node={args.world}",
        __file__, "--worker", "--model", model, "--offload", offload, "--steps", str(args.steps),
        "--batch", str(args.batch), "--run-dir", str(run_dir), "--depth", str(args.depth or 0),
        "--bucket", str(args.bucket), "--sub-group", str(args.sub_group),
        *(["--no-zero-init"] if args.no_zero_init else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **MALLOC}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if os.environ.get("BENCH_ZERO3_LOG"):
        print(proc.stderr, file=sys.stderr)
    if proc.returncode or not lines:
        raise SystemExit(f"{model} offload={offload} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    ranks = json.loads(lines[-1][len("RESULT ") :])
    ckpt = Path(ranks[0]["ckpt"])
    ckpt_mb = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20
    export = [sys.executable, "-m", "engine", "export", str(ckpt), "--out", str(tmp / "export.safetensors")]
    t0 = time.perf_counter()
    # each export in its own child: RUSAGE_CHILDREN of that child's parent is the export's peak
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, *export], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"export of {ckpt} failed:\n{out.stderr[-4000:]}")
    export_s = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    (tmp / "export.safetensors").unlink(missing_ok=True)
    params = ranks[0]["params"]
    ideal = 16 * params / args.world / 2**20
    state_mb = max(r["model_state_bytes"] for r in ranks) / 2**20
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "device": f"{cpu_name()}, {args.world} gloo ranks x 1 thread",
        "model": model,
        "depth": args.depth or "full",
        "params": params,
        "world": args.world,
        "batch_per_rank": args.batch,
        "offload": offload,
        "zero_init": not args.no_zero_init,
        "bucket_elems": args.bucket,
        "sub_group_elems": args.sub_group,
        "load_mmap": True,  # the trainer's resume maps the checkpoint files (engine/checkpoint.py)
        "model_state_mb_per_rank": round(state_mb, 1),
        "ideal_16p_over_n_mb": round(ideal, 1),
        "ratio_to_ideal": round(state_mb / ideal, 3),
        "state_mb_by_kind": " ".join(f"{k}={v / 2**20:.0f}" for k, v in ranks[0]["kinds"].items()),
        "params_held_per_rank": " / ".join(f"{r['held']:,}" for r in ranks),
        "rss_after_setup_mb": round(max(r["rss_setup"] for r in ranks)),
        "peak_rss_fit_mb": round(max(r["peak_rss_fit"] for r in ranks)),
        "peak_rss_mb": round(max(r["peak_rss"] for r in ranks)),
        "median_step_s": round(max(r["step_s"] for r in ranks), 2),
        "save_s": round(ranks[0]["save_s"], 1),
        "load_s": round(ranks[0]["load_s"], 1),
        "ckpt_mb": round(ckpt_mb),
        "export_s": round(export_s, 1),
        "export_peak_rss_mb": round(float(out.stdout.split()[-1])),
        "command": args.command,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_h16", "vit_h14"])
    p.add_argument("--offload", nargs="+", default=["none", "cpu"], choices=["none", "cpu"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="images per rank per step")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--depth", type=int, default=0, help="cut the model to this many blocks (0: all)")
    p.add_argument(
        "--bucket", type=int, default=20_000_000,
        help="ZeRO-3 reduce/prefetch bucket, max live parameters and reuse distance, in elements",
    )  # fmt: skip
    p.add_argument(
        "--sub-group", type=int, default=20_000_000, help="ZeRO-3 optimizer sub-group, in elements"
    )
    p.add_argument("--no-zero-init", action="store_true", help="build the model whole on each rank first")
    p.add_argument(
        "--load-mmap", action="store_true",
        help="no effect: the trainer's resume always maps the checkpoint files now (torch.load mmap=True);"
        " accepted so the commands recorded in zero3_cpu.csv still run",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "perf/results/zero3_cpu.csv")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.offload = args.offload[0]
        return worker(args)
    args.command = "python perf/bench_zero3.py " + " ".join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        for model in args.models:
            for offload in args.offload:
                row = measure(model, offload, args, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    append_rows(args.out, FIELDS, rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
