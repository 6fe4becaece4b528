"""The whole training step: CatLIP against the CLIP (and SigLIP) baseline, side by side in one run.

Both objectives share the image tower preset, the resolution, the batch and the data path (the
same in-memory images and captions: CatLIP reads precomputed label indices, CLIP tokenises the
captions, as each would in training). Plain PyTorch + torch.distributed (no DeepSpeed, which the
lent GPU machine lacks), AdamW, one process per rank. Each step is split by synchronised timers
into: data (batch assembly + tokenisation + host-to-device), image tower forward and backward,
text tower forward and backward (CLIP), loss forward+backward with its all-gather, the all-gather
alone (timed on the same tensors), gradient all-reduce, optimizer. The split cuts the autograd
graph at the towers' outputs (features are detached, the loss is backpropagated to them, then each
tower is backpropagated from their gradients), which computes the same gradients as one backward.

Reported per objective: images/s (per rank and total), median step time and its split, peak
memory, training FLOPs per image (perf/flops.py) and MFU against ``--peak-tflops`` (GPU only), the
all-gather's bytes per step and its time. ``--max-batch`` also finds, on a GPU, the largest batch
that fits for each objective (doubling, then bisection) and measures there. ``--trace DIR``
writes a torch.profiler trace of one step of each objective. Results: a table on stdout,
``<out>/step_<device>.csv`` and a bar chart ``<out>/step_<device>.svg``.

    python perf/bench_step.py --device cpu --world 2 --model vit_tiny --batch 16   # CPU ranks, gloo
    python perf/bench_step.py --device cuda --model vit_b16 --batch 256 --max-batch # one GPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.common import append_rows, commit, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "image_fwd", "image_bwd", "text_fwd", "text_bwd", "loss", "allreduce", "optimizer")
WORDS = "a man a woman a dog a cat riding a bus on the street with pizza at a table near the train".split()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(n: int, batch: int, image_size: int, vocab: int, seed: int):
    """Deterministic images, captions and label lists, the same for both objectives."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.randn(batch, 3, image_size, image_size, generator=g)
        captions = [
            " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (12,), generator=g).tolist())
            for _ in range(batch)
        ]
        labels = torch.full((batch, 8), -1, dtype=torch.int64)
        for i in range(batch):
            k = int(torch.randint(1, 8, (1,), generator=g))
            labels[i, :k] = torch.randperm(vocab, generator=g)[:k]
        out.append({"image": images, "caption": captions, "labels": labels})
    return out


class Runner:
    """One objective's model, loss and optimizer on one rank, with a timed step."""

    def __init__(self, objective: str, args, device, world: int) -> None:
        import torch

        from catlip.models import CatLIPModel, vit_config

        torch.manual_seed(0)
        self.objective, self.device, self.world = objective, device, world
        vit = vit_config(args.model, **({"image_size": args.image_size} if args.image_size else {}))
        self.vit = vit
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if objective == "catlip":
            self.model = CatLIPModel(vit, args.vocab, loss_impl=args.loss_impl).to(device)
            self.loss = None
        else:
            from catlip.clip import CLIPModel, clip_config
            from catlip.contrastive import ContrastiveLoss, SigLipLoss

            cfg = clip_config(f"clip_{args.model}", siglip=objective == "siglip", vision=vit)
            self.model = CLIPModel(cfg).to(device)
            self.loss = (
                SigLipLoss()
                if objective == "siglip"
                else ContrastiveLoss(local_loss=True, gather_with_grad=True)
            )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.2)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, batch) -> dict[str, float]:
        import torch
        import torch.distributed as dist

        t: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        dev = self.device

        def mark():
            _sync(dev)
            return time.perf_counter()

        autocast = torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        t0 = mark()
        images = batch["image"].to(dev, non_blocking=True)
        if self.objective == "catlip":
            target = batch["labels"].to(dev, non_blocking=True)
        else:  # the tokenizer (and its ftfy) only for the contrastive objectives
            from catlip.tokenizer import tokenize

            target = tokenize(batch["caption"]).to(dev, non_blocking=True)
        t1 = mark()
        t["data"] = t1 - t0
        self.opt.zero_grad(set_to_none=True)
        m = self.model
        with autocast:
            if self.objective == "catlip":
                feats = m.encoder(images)  # (B, W)
                t2 = mark()
                t["image_fwd"] = t2 - t1
                cut = feats.detach().requires_grad_()
                loss = m.head(cut, target)
                loss.backward()
                t3 = mark()
                t["loss"] = t3 - t2
                feats.backward(cut.grad)
                t["image_bwd"] = mark() - t3
            else:
                img = m.encode_image(images)
                t2 = mark()
                t["image_fwd"] = t2 - t1
                txt = m.encode_text(target)
                t3 = mark()
                t["text_fwd"] = t3 - t2
                img_cut, txt_cut = img.detach().requires_grad_(), txt.detach().requires_grad_()
                extra = (m.logit_bias,) if m.logit_bias is not None else ()
                loss = self.loss(img_cut.float(), txt_cut.float(), m.logit_scale.exp(), *extra)
                loss.backward()
                t4 = mark()
                t["loss"] = t4 - t3
                img.backward(img_cut.grad)
                t5 = mark()
                t["image_bwd"] = t5 - t4
                txt.backward(txt_cut.grad)
                t["text_bwd"] = mark() - t5
        t6 = mark()
        if self.world > 1:  # data-parallel gradient averaging (DDP's bucketed all-reduce, unoverlapped)
            flat = torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])
            dist.all_reduce(flat)
        t7 = mark()
        t["allreduce"] = t7 - t6
        self.opt.step()
        t["optimizer"] = mark() - t7
        t["total"] = sum(t[k] for k in STAGES)
        t["loss_value"] = float(loss.detach())
        return t

    def gather_cost(self, batch: int, repeats: int = 5) -> tuple[float, float]:
        """(bytes received per step, seconds) of the loss's all-gather, timed on same-shaped tensors."""
        import torch
        import torch.distributed as dist

        if self.objective == "catlip" or self.world == 1:
            return 0.0, 0.0
        width = self.model.cfg.embed_dim * (2 if self.objective == "clip" else 1)  # CLIP: [image|text]
        local = torch.randn(batch, width, device=self.device)
        out = [torch.empty_like(local) for _ in range(self.world)]
        times = []
        for _ in range(repeats + 1):
            _sync(self.device)
            t0 = time.perf_counter()
            dist.all_gather(out, local)
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        recv = (self.world - 1) * local.numel() * local.element_size()
        return float(recv), statistics.median(times[1:])


def fits(objective: str, args, device, batch: int) -> bool:
    import torch

    try:
        runner = Runner(objective, args, device, 1)
        runner.step(make_batches(1, batch, runner.vit.image_size, args.vocab, 0)[0])
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def max_batch(objective: str, args, device) -> int:
    lo, hi = 0, args.batch
    while fits(objective, args, device, hi) and hi < args.max_batch_limit:
        lo, hi = hi, hi * 2
    if lo == 0:
        return 0
    while hi - lo > max(8, lo // 16):  # bisect to ~6%
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(objective, args, device, mid) else (lo, mid)
    return lo


def measure(objective: str, args, device, rank: int, world: int, batch: int) -> dict:
    import torch

    from perf.flops import TEXT_TOWER, Tower, catlip_flops_per_image, clip_flops_per_image

    runner = Runner(objective, args, device, world)
    batches = make_batches(args.warmup + args.steps, batch, runner.vit.image_size, args.vocab, seed=rank)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for b in batches[: args.warmup]:
        runner.step(b)
    if args.trace:  # every rank runs the traced step (it holds collectives); rank 0 records it
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts, record_shapes=False) if rank == 0 else contextlib.nullcontext() as prof:
            runner.step(batches[0])
        if rank == 0:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(args.trace) / f"step_{objective}_{device.type}.json"))
    steps = [runner.step(b) for b in batches[args.warmup :]]
    med = {k: statistics.median(s[k] for s in steps) for k in (*STAGES, "total")}
    gather_bytes, gather_s = runner.gather_cost(batch)
    vit = runner.vit
    image = Tower(vit.width, vit.depth, vit.num_tokens, vit.patch_size, vit.mlp_ratio)
    if objective == "catlip":
        flops = catlip_flops_per_image(image, args.vocab)
    else:
        cfg = runner.model.cfg
        text = Tower(cfg.text.width, cfg.text.depth, cfg.text.context_length) if cfg.text else TEXT_TOWER
        flops = clip_flops_per_image(image, text, cfg.embed_dim, batch * world)
    achieved = flops * batch / med["total"]
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {
        "objective": objective,
        "batch_per_rank": batch,
        "world": world,
        "params": runner.params,
        "images_per_s_per_rank": batch / med["total"],
        "images_per_s": batch * world / med["total"],
        **{f"ms_{k}": 1e3 * med[k] for k in (*STAGES, "total")},
        "allgather_bytes": gather_bytes,
        "ms_allgather": 1e3 * gather_s,
        "peak_mem_mb": peak_mem,
        "gflops_per_image": flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12) if device.type == "cuda" else float("nan"),
        "final_loss": steps[-1]["loss_value"],
    }


def run_rank(rank: int, world: int, args, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        rows = []
        for objective in args.objectives:
            batch = args.batch
            rows.append({**measure(objective, args, device, rank, world, batch), "setting": "equal batch"})
            if args.max_batch and device.type == "cuda" and world == 1:
                best = max_batch(objective, args, device)
                rows.append({**measure(objective, args, device, rank, world, best), "setting": "max batch"})
        if queue is not None:
            queue.put((rank, rows))
        else:
            return rows
    finally:
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def svg_chart(rows: list[dict], path: Path, title: str) -> None:
    """Stacked horizontal bars of the step split, one per objective and setting (no plotting deps)."""
    colors = dict(
        zip(
            STAGES,
            ["#999", "#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#d62728", "#9467bd", "#8c564b"],
            strict=True,
        )
    )
    scale = 560 / max(r["ms_total"] for r in rows)
    h = 40 + 34 * len(rows) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="820" height="{h}" font-family="sans-serif" font-size="12">'
    ]
    parts.append(f'<text x="10" y="20" font-size="14">{title}</text>')
    for i, r in enumerate(rows):
        y, x = 40 + 34 * i, 200
        parts.append(
            f'<text x="10" y="{y + 16}">{r["objective"]} ({r["setting"]}, B={r["batch_per_rank"]})</text>'
        )
        for k in STAGES:
            w = r[f"ms_{k}"] * scale
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="22" fill="{colors[k]}"><title>{k}</title></rect>'
            )
            x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + 16}">{r["ms_total"]:.1f} ms, {r["images_per_s"]:.0f} img/s</text>'
        )
    y = h - 14
    for j, k in enumerate(STAGES):
        parts.append(f'<rect x="{10 + 100 * j}" y="{y - 10}" width="10" height="10" fill="{colors[k]}"/>')
        parts.append(f'<text x="{24 + 100 * j}" y="{y}">{k}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--world", type=int, default=1, help="ranks (processes); CPU: gloo, GPU: nccl")
    parser.add_argument("--model", default="vit_tiny", help="image tower preset (CLIP: clip_<preset>)")
    parser.add_argument("--image-size", type=int, help="override the preset's resolution")
    parser.add_argument("--batch", type=int, default=16, help="images per rank")
    parser.add_argument("--vocab", type=int, default=24_320)
    parser.add_argument("--objectives", nargs="+", default=["catlip", "clip", "siglip"])
    parser.add_argument("--loss-impl", default="torch", choices=["torch", "triton"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--max-batch", action="store_true", help="GPU: also measure at the largest batch that fits"
    )
    parser.add_argument("--max-batch-limit", type=int, default=4096)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100/H200 bf16)"
    )
    parser.add_argument(
        "--trace", type=Path, help="write a torch.profiler trace of one step per objective here"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("CATLIP_RESULTS", ROOT / "perf" / "results"))
    )
    parser.add_argument("--no-csv", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_step: --device cuda but no CUDA device; nothing measured")
        return 0
    if args.world == 1:
        rows = run_rank(0, 1, args, 0, None)
    else:
        import torch.multiprocessing as mp

        from engine.distributed import free_port

        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        port = free_port()
        procs = [
            ctx.Process(target=run_rank, args=(r, args.world, args, port, queue)) for r in range(args.world)
        ]
        for p in procs:
            p.start()
        results = dict(queue.get() for _ in procs)
        for p in procs:
            p.join()
        rows = results[0]  # rank 0's view; every rank runs the same shapes
    name = device_name(args.device)
    print(f"\n{args.model}, {args.world} rank(s) on {name} ({args.device}), vocab {args.vocab:,}")
    head = f"{'objective':<8} {'setting':<12} {'B/rank':>6} {'img/s':>8} {'step ms':>8} " + " ".join(
        f"{k:>9}" for k in STAGES
    )
    print(head + f" {'gather MB':>9} {'gather ms':>9} {'GF/img':>7} {'TFLOP/s':>8} {'MFU':>6} {'peak MB':>8}")
    for r in rows:
        split = " ".join(f"{r[f'ms_{k}']:>9.2f}" for k in STAGES)
        print(
            f"{r['objective']:<8} {r['setting']:<12} {r['batch_per_rank']:>6} {r['images_per_s']:>8.1f} "
            f"{r['ms_total']:>8.1f} {split} {r['allgather_bytes'] / 2**20:>9.3f} {r['ms_allgather']:>9.2f} "
            f"{r['gflops_per_image']:>7.2f} {r['achieved_tflops']:>8.3f} {r['mfu']:>6.3f} {r['peak_mem_mb']:>8.0f}"
        )
    base = {r["setting"]: r for r in rows if r["objective"] == "catlip"}
    for r in rows:
        if r["objective"] != "catlip" and r["setting"] in base:
            ratio = base[r["setting"]]["images_per_s"] / r["images_per_s"]
            print(f"CatLIP / {r['objective']} images/s ({r['setting']}): {ratio:.2f}x")
    if not args.no_csv:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        path = args.out / f"step_{args.device}.csv"
        meta = {"date": stamp, "commit": commit(), "device": name, "model": args.model, "vocab": args.vocab}
        fields = list(meta) + list(rows[0])
        rounded = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        append_rows(path, fields, [{**meta, **r} for r in rounded])
        svg_chart(
            rows,
            args.out / f"step_{args.device}.svg",
            f"{args.model} step split, {args.world} rank(s), {name}",
        )
        print(f"appended to {path}; chart {path.with_suffix('.svg')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
