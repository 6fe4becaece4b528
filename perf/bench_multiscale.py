"""Multi-scale batches (engine/multiscale.py) against the fixed base resolution, in three parts.

``train``: images/s and tokens/s of the training step (ViT + CatLIP head forward, backward, AdamW;
one process, plain PyTorch, synthetic images) over a sequence of multi-scale draws, against the
same model at its base resolution and base batch: equal pixels per batch by construction
(batch x h x w ~ constant). Every scale is timed (median of ``--steps`` after a warm-up) and the
multi-scale figure is the draw-weighted one (total images / total time of ``--draws`` draws). Next
to it, perf/flops.py's prediction for the same table: at a constant FLOP rate, the images/s ratio
is F(base) / E_draw[batch x F(h, w)] x E_draw[batch] (F: training FLOPs per image), for the
measured model and for ViT-B/16 on a GPU (the recipe's table, batch 1024).

``dali``: the loader options for per-iteration sizes, measured on the packed COCO photos (CPU
decoding): (a) one pipeline whose crop size comes from an external source, each batch being
batch/chunk iterations of ``chunk`` samples (the loader's choice, engine/multiscale.py), (b) one pipeline per
scale, each with its own reader, and the fixed pipeline as the baseline: build time, resident
memory added, images/s over an epoch.

``kernels``: every sequence length of the ViT-B/16 table (65-401) through each attention impl
(sdpa, math, triton: the outputs agree) and the Triton kernels' compiled variants over those
lengths: the launch arguments recorded under TRITON_INTERPRET are bound with Triton's own
specialisation (create_function_from_signature, a CUDA sm_90 backend) and the distinct cache keys
counted per kernel, i.e. what the JIT would compile on a GPU over a run.

    python perf/bench_multiscale.py --part train --model vit_small --depth 4 --batch 8
    python perf/bench_multiscale.py --part dali --shards runs/main/shards/train
    python perf/bench_multiscale.py --part kernels
Rows go to perf/results/multiscale_cpu.csv (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from perf.common import append_rows, commit, cpu_name  # noqa: E402

FIELDS = [
    "date", "commit", "device", "part", "provider", "model", "table", "base_batch", "images_per_s",
    "tokens_per_s", "pixels_per_batch", "ratio", "predicted_ratio", "build_s", "rss_mb", "value",
    "note",
]  # fmt: skip
RECIPE = {"min": 128, "max": 320, "step": 16, "scales": 25}
V = 24320  # the paper's vocabulary: the head is part of the step


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _row(**kw) -> dict:
    base = {"date": datetime.date.today().isoformat(), "commit": commit(), "device": cpu_name()}
    return {**base, **kw}


# ----------------------------------------------------------------------------------- train
def _flops_per_image(width: int, depth: int, patch: int, side: int, vocab: int) -> float:
    from perf.flops import Tower, catlip_flops_per_image

    return catlip_flops_per_image(Tower(width, depth, (side // patch) ** 2 + 1, patch), vocab)


def predicted_ratio(table, draws, width: int, depth: int, patch: int, base: int, vocab: int) -> float:
    """Multi-scale / fixed images/s at a constant FLOP rate (see the module docstring)."""
    seen = [table[i] for i in draws]
    images = sum(s.batch for s in seen)
    flops = sum(s.batch * _flops_per_image(width, depth, patch, s.height, vocab) for s in seen)
    return (images / flops) * _flops_per_image(width, depth, patch, base, vocab)


def part_train(args) -> list[dict]:
    import torch

    from catlip.models import CatLIPModel, vit_config
    from catlip.param_groups import param_groups
    from engine.multiscale import MultiScale, MultiScaleConfig

    torch.set_num_threads(args.threads)
    cfg = vit_config(args.model, **({"depth": args.depth} if args.depth else {}))
    base, patch = cfg.image_size, cfg.patch_size
    ms = args.table or (RECIPE if base == 224 else {"min": base // 2, "max": 3 * base // 2, "step": patch})
    table = MultiScaleConfig(**ms).table(base, args.batch, patch)
    sched = MultiScale(table, seed=0)
    draws = [table.index(sched.draw(i)) for i in range(args.draws)]
    torch.manual_seed(0)
    model = CatLIPModel(cfg, args.vocab)
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4)
    labels_k = 8

    def step_time(b: int, side: int) -> float:
        images = torch.randn(b, 3, side, side)  # (B, 3, H, W)
        labels = torch.rand(b, args.vocab).argsort(dim=1)[:, :labels_k]  # (B, k) distinct ids per row
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss = model(images, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    per_scale = {}
    for s in table:
        per_scale[s.height] = step_time(s.batch, s.height)
        print(
            f"  {s.height:4d} px  batch {s.batch:4d}  {s.batch / per_scale[s.height]:8.1f} images/s",
            flush=True,
        )
    fixed_t = per_scale[base]
    fixed_ips = args.batch / fixed_t
    fixed_tps = fixed_ips * (base // patch) ** 2
    seen = [table[i] for i in draws]
    total_t = sum(per_scale[s.height] for s in seen)
    ms_ips = sum(s.batch for s in seen) / total_t
    ms_tps = sum(s.batch * (s.height // patch) ** 2 for s in seen) / total_t
    pred = predicted_ratio(table, draws, cfg.width, cfg.depth, patch, base, args.vocab)
    b16_table = MultiScaleConfig(**RECIPE).table(224, 1024, 16)
    b16_sched = MultiScale(b16_table, seed=0)
    b16_draws = [b16_table.index(b16_sched.draw(i)) for i in range(args.draws)]
    b16_pred = predicted_ratio(b16_table, b16_draws, 768, 12, 16, 224, V)
    name = f"{args.model}" + (f"-d{args.depth}" if args.depth else "")
    tab = f"{ms['min']}-{ms['max']}/{ms['step']} ({len(table)} sizes)"
    pixels = args.batch * base * base
    rows = [
        _row(part="train", provider="fixed", model=name, table=f"{base}", base_batch=args.batch,
             images_per_s=f"{fixed_ips:.2f}", tokens_per_s=f"{fixed_tps:.0f}", pixels_per_batch=pixels,
             note=f"median of {args.steps} steps after {args.warmup}, {args.threads} threads, vocab {args.vocab}"),
        _row(part="train", provider="multiscale", model=name, table=tab, base_batch=args.batch,
             images_per_s=f"{ms_ips:.2f}", tokens_per_s=f"{ms_tps:.0f}", pixels_per_batch=pixels,
             ratio=f"{ms_ips / fixed_ips:.3f}", predicted_ratio=f"{pred:.3f}",
             note=f"{args.draws} draws weighted by the per-scale medians; tokens exclude the class token"),
        _row(part="train", provider="flop-model", model="vit_b16 (GPU)", table="128-320/16 (13 sizes)",
             base_batch=1024, predicted_ratio=f"{b16_pred:.3f}", pixels_per_batch=1024 * 224 * 224,
             note="perf/flops.py at a constant FLOP rate; the recipe's table, vocab 24320"),
    ]  # fmt: skip
    print(
        f"{name}: fixed {fixed_ips:.1f} images/s, multi-scale {ms_ips:.1f} images/s, ratio "
        f"{ms_ips / fixed_ips:.3f} (FLOP model {pred:.3f}); ViT-B/16 GPU prediction {b16_pred:.3f}"
    )
    return rows


# ------------------------------------------------------------------------------------ dali
def _time_epoch(loader, limit: int) -> tuple[float, int]:
    t0, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        n += len(batch["image"])
        if i + 1 >= limit:
            break
    return time.perf_counter() - t0, n


def part_dali(args) -> list[dict]:
    from engine.data import make_loader
    from engine.multiscale import MultiScale, MultiScaleConfig, Scale

    base, batch = 64, 32
    table = MultiScaleConfig(min=32, max=96, step=8, scales=9).table(base, batch, 8)
    common = dict(image_size=base, num_threads=args.threads, device="cpu", shuffle_buffer=256)
    rows = []

    def measure(provider: str, make) -> None:
        gc.collect()
        rss0, t0 = _rss_mb(), time.perf_counter()
        loaders = make()
        build = time.perf_counter() - t0
        seconds, images = 0.0, 0
        for loader in loaders:  # (b): each per-scale pipeline in turn, a share of the batches each
            s, n = _time_epoch(loader, max(1, args.batches // len(loaders)))
            seconds, images = seconds + s, images + n
        rss = _rss_mb() - rss0
        note = {
            "fixed": f"one pipeline, batch {batch} at {base} px",
            "chunk-only": f"one pipeline of chunk 8 at {base} px (batches of 32 and 8): the chunking's own cost",
            "chunked": f"one pipeline of chunk {MultiScale(table, 0).chunk}, size from an external source",
            "per-scale": f"{len(loaders)} pipelines, one per scale, each its own reader and shuffle buffer",
        }[provider]
        rows.append(
            _row(part="dali", provider=provider, model="-", table=f"32-96/8 ({len(table)} sizes)",
                 base_batch=batch, images_per_s=f"{images / seconds:.1f}", pixels_per_batch=batch * base * base,
                 build_s=f"{build:.2f}", rss_mb=f"{rss:.0f}", note=note + f", {args.threads} threads")
        )  # fmt: skip
        print(f"  {provider:10s} build {build:6.2f} s  rss +{rss:6.0f} MB  {images / seconds:7.1f} images/s")
        del loaders
        gc.collect()

    warm = make_loader(args.shards, batch, **common)  # DALI's libraries load with the first pipeline
    _time_epoch(warm, 2)
    del warm
    measure("fixed", lambda: [make_loader(args.shards, batch, **common)])
    same = (Scale(base, base, batch), Scale(base, base, 8))  # chunk 8, every batch at the base size
    measure("chunk-only", lambda: [make_loader(args.shards, batch, multiscale=MultiScale(same, 0), **common)])
    measure("chunked", lambda: [make_loader(args.shards, batch, multiscale=MultiScale(table, 0), **common)])
    measure(
        "per-scale",
        lambda: [make_loader(args.shards, s.batch, **{**common, "image_size": s.height}) for s in table],
    )
    return rows


# --------------------------------------------------------------------------------- kernels
class _Recorder:
    """Records each interpreted launch (kernel, args, kwargs) of kernels/ under TRITON_INTERPRET."""

    def __init__(self) -> None:
        from triton.runtime import interpreter

        self.calls: list[tuple] = []
        self._cls, self._orig = interpreter.InterpretedFunction, interpreter.InterpretedFunction.run
        recorder = self

        def run(fn, *args, grid, warmup, **kwargs):
            recorder.calls.append((fn, args, dict(kwargs)))
            return recorder._orig(fn, *args, grid=grid, warmup=warmup, **kwargs)

        self._cls.run = run

    def keys(self) -> dict[str, set]:
        """Per kernel, the cache keys JITFunction.run would compute on an sm_90 GPU."""
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

        backend = make_backend(GPUTarget("cuda", 90, 32))
        binders, out = {}, {}
        for fn, args, kwargs in self.calls:
            if fn.fn not in binders:
                jit = JITFunction(fn.fn, **fn.kwargs)
                binders[fn.fn] = create_function_from_signature(jit.signature, jit.params, backend)
            _, spec, options = binders[fn.fn](*args, **kwargs)
            out.setdefault(fn.fn.__name__, set()).add(compute_cache_key({}, spec, options))
        return out


def part_kernels(args) -> list[dict]:
    import torch

    from engine.multiscale import MultiScaleConfig

    assert os.environ.get("TRITON_INTERPRET") == "1", "set before import (main does)"
    from kernels.flash_attention import attention_qkv

    recorder = _Recorder()
    lengths = [s.tokens(16) for s in MultiScaleConfig(**RECIPE).table(224, 1024, 16)]
    h, d = args.heads, 64  # ViT-B/16's head dim; H is not specialised on
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for n in lengths:
        qkv = torch.randn(1, n, 3, h, d, generator=g, requires_grad=True)  # (B, S, 3, H, D)
        outs = {}
        for impl in ("math", "sdpa", "triton"):
            qkv.grad = None
            out = attention_qkv(qkv, impl=impl)  # (B, S, H, D)
            out.backward(torch.ones_like(out))
            outs[impl] = (out.detach(), qkv.grad.clone())
        for impl in ("sdpa", "triton"):
            worst = max(
                worst, *(float((a - b).abs().max()) for a, b in zip(outs[impl], outs["math"], strict=True))
            )
        print(f"  S={n}: max |impl - math| over out and dqkv so far {worst:.2e}", flush=True)
    keys = recorder.keys()
    rows = []
    for name, found in sorted(keys.items()):
        rows.append(
            _row(part="kernels", provider="triton", model="vit_b16 heads", table=f"S {lengths[0]}-{lengths[-1]}",
                 value=len(found), note=f"{name}: compiled variants over {len(lengths)} lengths, fp32, D {d}")
        )  # fmt: skip
        print(f"  {name}: {len(found)} compiled variant(s) over {len(lengths)} lengths")
    rows.append(
        _row(part="kernels", provider="sdpa/math/triton", model="vit_b16 heads", table=f"S {lengths[0]}-{lengths[-1]}",
             value=f"{worst:.2e}", note="max abs difference from math (output and dqkv), fp32")
    )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part", choices=("train", "dali", "kernels"), action="append", help="repeatable; default all"
    )
    p.add_argument("--model", default="vit_small", help="catlip.models preset (train part)")
    p.add_argument("--depth", type=int, default=4, help="override the preset's depth (0: keep it)")
    p.add_argument("--batch", type=int, default=8, help="base batch at the model's resolution")
    p.add_argument("--vocab", type=int, default=2048, help="head classes in the measured step")
    p.add_argument("--table", type=lambda s: dict(zip(("min", "max", "step"), map(int, s.split(",")), strict=True)),
                   help="min,max,step (default: the recipe's for 224 px models, base/2-3 base/2 else)")  # fmt: skip
    p.add_argument("--draws", type=int, default=1000, help="draws the multi-scale figure is weighted over")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=2, help="attention heads in the kernels part")
    p.add_argument("--shards", default=str(ROOT / "runs/main/shards/train"), help="packed shards (dali part)")
    p.add_argument("--batches", type=int, default=30, help="batches timed per loader option (dali part)")
    p.add_argument("--out", type=Path, default=ROOT / "perf/results/multiscale_cpu.csv")
    args = p.parse_args(argv)
    parts = args.part or ["kernels", "dali", "train"]
    if "kernels" in parts:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    rows = []
    for part in parts:
        print(f"[{part}]", flush=True)
        rows += {"train": part_train, "dali": part_dali, "kernels": part_kernels}[part](args)
    append_rows(args.out, FIELDS, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
