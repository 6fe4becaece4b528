"""Attention at ViT shapes: kernels.flash_attention against PyTorch's SDPA backends, side by side.

Providers (bf16 by default; every provider gets the ViT's packed (B, S, 3, H, D) qkv buffer and
returns (B, S, H, D), as the model would call it, copies included):
  triton          kernels.flash_attention.flash_attention_qkv (ours; d(qkv) written in place)
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
    CATLIP_AUTOTUNE=1 python perf/bench_attention.py --autotune   # search configs, print winners
    python perf/bench_attention.py --compile-report               # no GPU needed: sm_90a build

Without a CUDA device the timing modes print a message and exit 0 (nothing is measured);
--compile-report builds the kernels for sm_90a with Triton's bundled ptxas and prints registers,
spills, shared memory and the tensor-core instructions of each (kernel, shape) variant.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
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
    "vit_b16_s401": (128, 12, 401, 64),
    "vit_h14_s401": (64, 16, 401, 80),
}
QUICK_SHAPES = ("vit_b16", "vit_h14")
PROVIDERS = ("triton", "triton-pad", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
QUICK_PROVIDERS = ("triton", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
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
def bench_shape(shape: str, providers: list[str], dtype, warmup: int, rep: int) -> list[dict]:
    import torch
    import triton.testing

    from kernels.flash_attention import attention_reference

    b, h, s, d = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(b, s, 3, h, d, device="cuda", generator=gen).to(dtype)  # (B, S, 3, H, D)
    dout = torch.randn(b, s, h, d, device="cuda", generator=gen).to(dtype)  # (B, S, H, D)
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
            torch.cuda.synchronize()
        except RuntimeError as e:  # a backend that does not support this shape / dtype / device
            reason = str(e).strip().splitlines()[0][:160]
            print(f"  {name:<15} skipped: {reason}")
            rows.append({"provider": name, "mode": "", "note": f"skipped: {reason}"})
            restore_defaults()
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
            timings[mode] = triton.testing.do_bench(
                f, warmup=warmup, rep=rep, grad_to_none=[x], return_mode="median"
            )
        del out
        x.grad = None
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
        torch.cuda.empty_cache()
    for r in rows:
        r.update({"shape": shape, "B": b, "H": h, "S": s, "D": d, "dtype": str(dtype).removeprefix("torch.")})
    return rows


def summarize(rows: list[dict]) -> None:
    """Ours against the best SDPA backend per shape and mode (goals: >= 1.0x at vit_h14, 0.9x b16)."""
    print("\nspeed-up of triton over the best SDPA backend (time ratio; > 1 is faster):")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        parts = []
        for mode in MODES:
            mine = [
                r["ms"]
                for r in rows
                if r["shape"] == shape and r["mode"] == mode and r["provider"] == "triton"
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
                parts.append(f"{mode} {best / mine[0]:.2f}x vs {who}")
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
# Compile report (CPU only: Triton's compiler and bundled ptxas, target sm_90a)
# --------------------------------------------------------------------------------------------------
def compile_report(shapes: list[str], dtype: str) -> None:
    """Build every (kernel, launch) variant that the shapes use for sm_90a; print registers,
    spills, shared memory and tensor-core instructions. Uses Triton's internal compile API
    (ASTSource, GPUTarget; checked with Triton 3.8)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget

    from kernels import flash_attention_bwd as bwd
    from kernels import flash_attention_fwd as fwd

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    kernels = {"fwd": fwd._attn_fwd_kernel, "dq": bwd._bwd_dq_kernel, "dkdv": bwd._bwd_dkdv_kernel}
    tables = {"fwd": fwd.FWD_CONFIGS, "dq": bwd.DQ_CONFIGS, "dkdv": bwd.DKDV_CONFIGS}
    print(
        f"{'kernel':<6} {'shape':<14} {'blocks':<8} {'warps':>5} {'stages':>6} {'regs':>5} {'spill':>6} {'smem KB':>8}  static PTX"
    )
    for shape in shapes:
        _, _, s, d = SHAPES[shape]
        for kname, kernel in kernels.items():
            cfg = fwd.pinned(tables[kname], d, ieee_on_gpu=dtype == "fp32")
            meta = {"HEAD_DIM": d, "PRECISION": "ieee" if dtype == "fp32" else "tf32", "S_Q": s, "S_K": s}
            meta.update({"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n})
            t = time.perf_counter()
            ck = _compile_sm90(kernel, meta, dtype, cfg.num_warps, cfg.num_stages, triton, GPUTarget)
            ptx = ck.asm["ptx"]
            log = _ptxas_info(ptxas, ptx)
            regs = re.search(r"Used (\d+) registers", log)
            spill = re.search(r"(\d+) bytes spill stores", log)
            mma = f"wgmma {len(re.findall(r'wgmma.mma_async', ptx))}, mma.sync {len(re.findall(r'mma.sync', ptx))}"
            print(
                f"{kname:<6} {shape:<14} {cfg.block_m}x{cfg.block_n:<5} {cfg.num_warps:>5} {cfg.num_stages:>6} "
                f"{regs.group(1) if regs else '?':>5} {spill.group(1) if spill else '?':>6} "
                f"{ck.metadata.shared / 1024:>8.1f}  {mma}  ({time.perf_counter() - t:.1f} s)",
                flush=True,
            )


def _compile_sm90(kernel, meta: dict, dtype: str, num_warps: int, num_stages: int, triton, GPUTarget):
    chain = []
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):  # heuristics wrappers, outermost first
        chain.append(fn.values)
        fn = fn.fn
    values = dict(meta)
    for heuristics in reversed(chain):
        for name, rule in heuristics.items():
            values[name] = rule(values)
    ints = {"H", "S_Q", "S_K"}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = values[name]
        elif name.startswith("stride"):
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton specialises multiples of 16
        elif name in ints:
            signature[name] = "i32"
        elif name in ("qk_scale", "scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "*fp32" if name in ("LSE", "DELTA") else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def _ptxas_info(ptxas: Path, ptx: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        res = subprocess.run(
            [str(ptxas), "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True
        )
    return res.stderr + res.stdout


# --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Shapes: " + ", ".join(f"{k} (B, H, S, D) = {v}" for k, v in SHAPES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, providers {QUICK_PROVIDERS}"
    )
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: all (quick: a subset)")
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
    args = parser.parse_args()
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else SHAPES)
    providers = args.providers or list(QUICK_PROVIDERS if args.quick else PROVIDERS)
    if args.autotune:
        os.environ["CATLIP_AUTOTUNE"] = "1"  # read when kernels/ is imported, below

    if args.compile_report:
        compile_report(shapes, args.dtype)
        return

    import torch

    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device, nothing measured (the kernels' timings need a GPU; "
              "--compile-report builds them for sm_90a on the CPU)")  # fmt: skip
        return
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.cuda.get_device_name()
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
        b, h, s, d = SHAPES[shape]
        print(
            f"{shape}: B {b}, H {h}, S {s}, D {d}  ({flops(b, h, s, d, 'fwd') / 1e9:.0f} GFLOP fwd)",
            flush=True,
        )
        rows += [{**meta, **r} for r in bench_shape(shape, providers, dtype, args.warmup, args.rep)]
    summarize(rows)
    if args.autotune:
        from kernels import flash_attention_bwd, flash_attention_fwd

        for name, tuned in (
            ("fwd", flash_attention_fwd._attn_fwd_tuned),
            ("dkdv", flash_attention_bwd._bwd_dkdv_tuned),
            ("dq", flash_attention_bwd._bwd_dq_tuned),
        ):
            for key, cfg in tuned.cache.items():
                print(f"autotune {name} {key}: {cfg}")
    if args.no_csv:
        return
    results = os.environ.get("CATLIP_RESULTS") or os.environ.get("OUT")
    out = args.out or (Path(results) if results else ROOT / "perf" / "results")
    if out.suffix != ".csv":
        out = out / "attention.csv"
    write_rows(rows, out)
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
