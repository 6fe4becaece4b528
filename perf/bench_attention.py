"""Attention at ViT shapes: kernels.flash_attention against PyTorch's SDPA backends, side by side.

Providers (bf16 by default; every provider gets the ViT's packed (B, S, 3, H, D) qkv buffer and
returns (B, S, H, D), as the model would call it, copies included):
  triton          kernels.flash_attention.flash_attention_qkv (ours; d(qkv) written in place)
  triton-bwd1     ours with the one-launch backward (bwd="onepass": one program per
                  (batch, head), 5 products instead of 7; kernels/flash_attention_bwd_onepass.py)
  triton-pad      ours with the head dim padded to a power of two (80 -> 128: the tutorial's
                  way), to measure what the 64 + 16 split saves (same as triton for D = 64)
  sdpa-flash      torch SDPA restricted to FLASH_ATTENTION
  sdpa-efficient  ... EFFICIENT_ATTENTION
  sdpa-cudnn      ... CUDNN_ATTENTION
  sdpa-math       ... MATH (eager PyTorch)
A backend that cannot run a shape is reported as skipped with PyTorch's reason.

Modes: fwd (forward only, no graph), bwd (backward of a retained graph), fwd+bwd. Each is the
median of triton.testing.do_bench (CUDA events, L2 flushed between runs) after its warm-up.
TFLOP/s counts 4 * B * H * S^2 * D for the forward and 2.5x that for the backward (the usual
convention; our backward does 3.5x, see kernels/flash_attention_bwd.py). Peak memory is the
allocator's high-water mark during one fwd+bwd, above the inputs.

Rows are appended to attention.csv in --out (a folder, or a .csv path), else in $CATLIP_RESULTS or
$OUT when set, else in perf/results/, with the device, commit and date; a bar chart (fwd+bwd ms
per shape and provider) is written next to the CSV.

    python perf/bench_attention.py [--quick] [--shapes vit_b16 vit_h14] [--providers ...]
    python perf/bench_attention.py --autotune   # CATLIP_AUTOTUNE=1: search configs, print winners
    python perf/bench_attention.py --compile-report               # no GPU needed: sm_90a build
    TRITON_INTERPRET=1 python perf/bench_attention.py --device cpu --dtype fp16   # dry run

Without a CUDA device the timing modes print a message and exit 0 (nothing is measured), unless
--device cpu: every provider once at tiny shapes on the CPU (Triton's interpreter), for
perf/gpu_suite.sh --dry-run. --compile-report runs perf/compile_kernels.py for the attention
kernels (registers, spills, shared memory, tensor-core instructions per variant, sm_90a and sm_80).
The shapes: the three ViTs of the goals (B/16 S 197 D 64; H/14 S 257 D 80; H/16 at 256 px, S 257
D 64), multi-scale lengths 65-401 at B/16's heads, and L/16, H/16 at 224 px.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from perf.common import append_rows, commit  # noqa: E402

# name: (B, H, S, D). S = 401 is 20 x 20 patches + class token (B/16 at 320 px, H/14 at 280 px).
SHAPES = {
    "vit_b16": (256, 12, 197, 64),
    "vit_l16": (128, 16, 197, 64),
    "vit_h16": (128, 20, 197, 64),
    "vit_h14": (128, 16, 257, 80),
    "vit_h16_s257": (128, 20, 257, 64),  # corenet's H/16 at 256 px
    # multi-scale training at B/16's heads (128-320 px), about 50k tokens a batch
    "ms_s65": (768, 12, 65, 64),
    "ms_s145": (344, 12, 145, 64),
    "ms_s257": (192, 12, 257, 64),
    "vit_b16_s401": (128, 12, 401, 64),
    "vit_h14_s401": (64, 16, 401, 80),
}
QUICK_SHAPES = ("vit_b16", "vit_h14", "vit_h16_s257", "ms_s65", "ms_s145", "ms_s257", "vit_b16_s401")
TINY_SHAPES = {"tiny": (2, 2, 33, 24)}  # the CPU dry run: tails on S, D split 16 + 16
PROVIDERS = ("triton", "triton-bwd1", "triton-pad", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
QUICK_PROVIDERS = ("triton", "triton-bwd1", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
MODES = ("fwd", "bwd", "fwd+bwd")
FIELDS = [
    "date", "commit", "device", "torch", "triton", "shape", "B", "H", "S", "D", "dtype",
    "provider", "mode", "ms", "tflops", "peak_mem_mb", "max_err", "note",
]  # fmt: skip


def flops(b: int, h: int, s: int, d: int, mode: str) -> float:
    fwd = 4.0 * b * h * s * s * d
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


# --------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------
def make_provider(name: str) -> Callable:
    """name -> fn(qkv (B, S, 3, H, D)) -> (B, S, H, D)."""
    import torch.nn.functional as F

    from kernels import flash_attention_fwd
    from kernels.flash_attention import flash_attention_qkv

    if name == "triton":
        return flash_attention_qkv
    if name == "triton-bwd1":

        def onepass(qkv):
            return flash_attention_qkv(qkv, bwd="onepass")  # kept in the params for its backward

        return onepass
    if name == "triton-pad":

        def padded(qkv):
            flash_attention_fwd.PAD_HEAD_DIM = True  # until restore_defaults(), backward included
            return flash_attention_qkv(qkv)

        return padded

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-math": SDPBackend.MATH,
    }[name]

    def run(qkv):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, D) views, as in the model
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)

    return run


def restore_defaults() -> None:
    from kernels import flash_attention_fwd

    flash_attention_fwd.PAD_HEAD_DIM = False


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def _host_bench(fn, warmup: int, rep: int, grad_to_none=None, return_mode: str = "median") -> float:
    """do_bench's interface on the host clock, one timed run (the CPU dry run)."""
    for x in grad_to_none or []:
        x.grad = None
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_shape(
    shape: str, providers: list[str], dtype, warmup: int, rep: int, device: str = "cuda"
) -> list[dict]:
    import torch
    import triton.testing

    from kernels.reference import attention_reference

    cuda = device == "cuda"
    bench = triton.testing.do_bench if cuda else _host_bench
    b, h, s, d = {**SHAPES, **TINY_SHAPES}[shape]
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(b, s, 3, h, d, device=device, generator=gen).to(dtype)  # (B, S, 3, H, D)
    dout = torch.randn(b, s, h, d, device=device, generator=gen).to(dtype)  # (B, S, H, D)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ref = attention_reference(q, k, v).float().transpose(1, 2)  # fp32 math, (B, S, H, D)
    rows = []
    for name in providers:
        fn = make_provider(name)
        x = qkv.detach().clone().requires_grad_()
        try:  # one checked forward and one backward before timing
            with torch.no_grad():
                out = fn(x)
            err = (out.float() - ref).abs().max().item()
            fn(x).backward(dout)
            if cuda:
                torch.cuda.synchronize()
        except RuntimeError as e:  # a backend that does not support this shape / dtype / device
            reason = str(e).strip().splitlines()[0][:160]
            print(f"  {name:<15} skipped: {reason}")
            rows.append({"provider": name, "mode": "", "note": f"skipped: {reason}"})
            restore_defaults()
            if cuda:
                torch.cuda.empty_cache()
            continue

        def fwd(fn=fn, x=x):
            with torch.no_grad():
                fn(x)

        def both(fn=fn, x=x):
            fn(x).backward(dout)

        out = fn(x)

        def bwd(out=out, x=x):
            out.backward(dout, retain_graph=True)

        timings = {}
        for mode, f in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", both)):
            timings[mode] = bench(f, warmup=warmup, rep=rep, grad_to_none=[x], return_mode="median")
        del out
        x.grad = None
        peak = float("nan")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            both()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        for mode in MODES:
            ms = timings[mode]
            rows.append(
                {
                    "provider": name,
                    "mode": mode,
                    "ms": round(ms, 4),
                    "tflops": round(flops(b, h, s, d, mode) / ms / 1e9, 1),
                    "peak_mem_mb": round(peak, 1),
                    "max_err": f"{err:.2e}",
                    "note": "",
                }
            )
        print(
            f"  {name:<15} fwd {timings['fwd']:7.3f} ms  bwd {timings['bwd']:7.3f} ms  fwd+bwd "
            f"{timings['fwd+bwd']:7.3f} ms  ({flops(b, h, s, d, 'fwd+bwd') / timings['fwd+bwd'] / 1e9:5.0f}"
            f" TFLOP/s)  peak {peak:7.0f} MB  max|err| {err:.1e}",
            flush=True,
        )
        del fn, x
        restore_defaults()
        if cuda:
            torch.cuda.empty_cache()
    for r in rows:
        r.update({"shape": shape, "B": b, "H": h, "S": s, "D": d, "dtype": str(dtype).removeprefix("torch.")})
    return rows


GOALS = {"vit_h14": 1.0, "vit_b16": 0.9}  # the kernel's goals: fwd+bwd time ratio best SDPA / ours


def summarize(rows: list[dict], mine_name: str = "triton") -> None:
    """Ours against the best SDPA backend per shape and mode (goals: >= 1.0x at vit_h14, 0.9x b16)."""
    print(f"\nspeed-up of {mine_name} over the best SDPA backend (time ratio; > 1 is faster):")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        parts = []
        for mode in MODES:
            mine = [
                r["ms"]
                for r in rows
                if r["shape"] == shape and r["mode"] == mode and r["provider"] == mine_name and r.get("ms")
            ]
            sdpa = [
                (r["ms"], r["provider"])
                for r in rows
                if r["shape"] == shape
                and r["mode"] == mode
                and r["provider"].startswith("sdpa")
                and r.get("ms")
            ]
            if mine and sdpa:
                best, who = min(sdpa)
                goal = f" (goal >= {GOALS[shape]}x)" if mode == "fwd+bwd" and shape in GOALS else ""
                parts.append(f"{mode} {best / mine[0]:.2f}x vs {who}{goal}")
        print(f"  {shape:<14} " + "; ".join(parts))


def write_rows(rows: list[dict], path: Path) -> None:
    append_rows(path, FIELDS, rows, extrasaction="ignore")
    print(f"\nappended {len(rows)} rows to {path}")


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    timed = [r for r in rows if r.get("ms") and r["mode"] == "fwd+bwd"]
    shapes = list(dict.fromkeys(r["shape"] for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    fig, ax = plt.subplots(figsize=(1.8 * len(shapes) + 2, 4))
    width = 0.8 / max(len(providers), 1)
    for i, p in enumerate(providers):
        ys = [next((r["ms"] for r in timed if r["shape"] == s and r["provider"] == p), 0) for s in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], ys, width, label=p)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))], shapes)
    ax.set_ylabel("fwd+bwd ms (lower is better)")
    ax.set_title(f"attention, {timed[0]['device'] if timed else ''} {timed[0]['dtype'] if timed else ''}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Shapes: " + ", ".join(f"{k} (B, H, S, D) = {v}" for k, v in SHAPES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, providers {QUICK_PROVIDERS}"
    )
    parser.add_argument(
        "--shapes", nargs="+", choices=[*SHAPES, *TINY_SHAPES], help="default: all (quick: a subset)"
    )
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: all (quick: a subset)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms (default 25)")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measured time, ms (default 100)")
    parser.add_argument(
        "--autotune", action="store_true", help="set CATLIP_AUTOTUNE=1 and print the chosen configs"
    )
    parser.add_argument(
        "--compile-report", action="store_true", help="no GPU: build for sm_90a, print registers"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder (or .csv file) for the rows; default $CATLIP_RESULTS, $OUT or perf/results",
    )
    parser.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the dry run (tiny shapes)"
    )
    args = parser.parse_args(argv)
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else SHAPES)
    providers = args.providers or list(QUICK_PROVIDERS if args.quick else PROVIDERS)
    if args.autotune:
        os.environ["CATLIP_AUTOTUNE"] = "1"  # kernels/variants.py's switch, read at each call

    if args.compile_report:
        from perf import compile_kernels

        return compile_kernels.main(["--only", "attention"])

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_attention: no CUDA device, nothing measured (the kernels' timings need a GPU; "
              "--compile-report builds them for sm_90a on the CPU)")  # fmt: skip
        return 0
    import triton

    from perf.common import cpu_name

    if args.device == "cpu":  # the dry run: tiny shapes whatever --quick says
        shapes = [sh for sh in (args.shapes or []) if sh in TINY_SHAPES] or list(TINY_SHAPES)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()} (dry run)"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {
        "date": stamp,
        "commit": commit(),
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    print(
        f"{device}, torch {torch.__version__}, triton {triton.__version__}, {args.dtype}, commit {meta['commit']}"
    )
    rows = []
    for shape in shapes:
        b, h, s, d = {**SHAPES, **TINY_SHAPES}[shape]
        print(
            f"{shape}: B {b}, H {h}, S {s}, D {d}  ({flops(b, h, s, d, 'fwd') / 1e9:.0f} GFLOP fwd)",
            flush=True,
        )
        rows += [
            {**meta, **r} for r in bench_shape(shape, providers, dtype, args.warmup, args.rep, args.device)
        ]
    summarize(rows)
    if "triton-bwd1" in providers:
        summarize(rows, "triton-bwd1")
    if args.autotune:
        from kernels import flash_attention_bwd, flash_attention_fwd

        for name, tuned in (
            ("fwd", flash_attention_fwd._attn_fwd_tuned),
            ("dkdv", flash_attention_bwd._bwd_dkdv_tuned),
            ("dq", flash_attention_bwd._bwd_dq_tuned),
        ):
            for key, cfg in tuned.cache.items():
                print(f"autotune {name} {key}: {cfg}")
    skipped_ours = [r for r in rows if r["provider"].startswith("triton") and r["note"].startswith("skipped")]
    if not args.no_csv:
        results = os.environ.get("CATLIP_RESULTS") or os.environ.get("OUT")
        out = args.out or (Path(results) if results else ROOT / "perf" / "results")
        if out.suffix != ".csv":
            out = out / ("attention.csv" if args.device == "cuda" else "attention_dryrun.csv")
        write_rows(rows, out)
        plot(rows, out.with_suffix(".png"))
    for r in skipped_ours:
        print(f"FAILED: {r['provider']} at {r['shape']}: {r['note']}")
    return 1 if skipped_ours else 0  # our own kernels must run on every shape


if __name__ == "__main__":
    sys.exit(main())
