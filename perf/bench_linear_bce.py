"""Fused linear + sigmoid BCE (kernels.linear_bce) against PyTorch, side by side in one run (GPU).

Providers, all on the same bf16 inputs x (B, D), W (V, D), b (V,) and padded labels (B, 32) with
~5 positives a row, loss = corenet's batch_mean:
  triton    kernels.linear_bce.linear_bce(impl="triton"): gradients in the forward, chunked over V, never a
            (B, V) fp32 tensor nor a dense target
  eager     F.linear + F.binary_cross_entropy_with_logits on the dense fp32 target, under bf16
            autocast (the dense target is built inside the timed forward, as the official code does)
  compile   torch.compile of the eager function (dynamic shapes: one compile for all shapes;
            --compile-static compiles per shape)
  chunked   plain PyTorch, the same chunked plan as the kernel (fp32 logits per chunk, gradients
            in the forward), as one would write it without Triton
  triton-eval  the kernel's forward under torch.no_grad (the GEMM + softplus epilogue alone):
            its ratio to the bare z GEMM shows how much of the epilogue the main loop hides
  gemm3     the three bare bf16 GEMMs of the same shapes (z = x W^T, dx = dz W, dW = dz^T x):
            the ceiling. Not a loss; its row gives the time the goal is measured against.
The variants the first GPU run settles (kernels/variants.py), each "triton" with one change:
  triton-nocheck   validate_labels=False: no label checks, no host sync in the hot path
  triton-addmm     dx accumulated by cuBLAS itself, addmm(dx, dz, W_c, out_dtype=float32, out=dx)
  triton-cublas    design E: the logits GEMM on cuBLAS, then a Triton epilogue kernel over them
  triton-autotune  autotune=True: the candidates of kernels/linear_bce_fwd.py timed, best kept
At the end, the op's goals at B 8192, D 1280, V 24,320: fused forward+backward within 1.15x
of gemm3, at least 1.5x faster than eager, extra memory at most 1/8 of eager's.

For each: forward, backward and forward+backward in ms (median over --reps runs after --warmup,
CUDA events; .grad is cleared before each run so no accumulation is timed), TFLOP/s as 6 B V D /
time, the ratio to gemm3, and peak extra memory (max_memory_allocated during one forward +
backward minus the memory before it; "transient" also subtracts the gradients the op returns).
Eager and compile are skipped, with the reason in the row, where their predicted memory
(~28 bytes per logit) would not fit. Rows are appended to $OUT/linear_bce.csv when OUT is set,
else perf/results/linear_bce.csv, with the device, commit and date.

    python perf/bench_linear_bce.py            # B {256, 1024, 8192} x D {768, 1280} x V {24320, 131072, 1e6}
    python perf/bench_linear_bce.py --quick    # the goal shapes, ~1.5 minutes
    python perf/bench_linear_bce.py --B 8192 --D 1280 --V 1000000 --providers triton gemm3
    TRITON_INTERPRET=1 python perf/bench_linear_bce.py --device cpu --B 8 --D 32 --V 300   # dry run

Needs a CUDA GPU for timings; --device cpu runs every provider once at tiny shapes on the CPU
(Triton's interpreter: set TRITON_INTERPRET=1), for perf/gpu_suite.sh --dry-run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kernels.linear_bce import LinearBCEFunction, LinearBCEParams, linear_bce  # noqa: E402
from kernels.reference import dense_targets  # noqa: E402
from perf.common import commit, cpu_name  # noqa: E402

PROVIDERS = (
    "triton", "triton-nocheck", "triton-addmm", "triton-cublas", "triton-autotune", "triton-eval",
    "eager", "compile", "chunked", "gemm3",
)  # fmt: skip
QUICK_PROVIDERS = tuple(p for p in PROVIDERS if p != "chunked")
QUICK_SHAPES = [(8192, 1280, 24320), (8192, 1280, 1000000), (1024, 1280, 24320)]
FIELDS = [
    "date", "commit", "device", "torch", "triton", "provider", "B", "D", "V",
    "fwd_ms", "bwd_ms", "total_ms", "gemm3_ms", "x_gemm3", "tflops", "peak_extra_mb",
    "transient_mb", "loss", "note",
]  # fmt: skip
POSITIVES, MAX_LABELS = 5, 32
DEVICE = "cuda"  # --device cpu: the dry run
DTYPE = torch.bfloat16  # the dry run: fp16 (Triton's interpreter has no bf16 constants)
# eager's memory per logit: bf16 + fp32 logits, fp32 target, log_sigmoid and loss temporaries,
# fp32 + bf16 gradients
EAGER_BYTES_PER_LOGIT = 28


def make_inputs(b: int, d: int, v: int, seed: int = 0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(b, d, device=DEVICE, generator=gen).to(DTYPE)  # (B, D)
    w = (torch.randn(v, d, device=DEVICE, generator=gen) / d**0.5).to(DTYPE)  # (V, D)
    bias = torch.full((v,), -math.log(v), device=DEVICE).to(DTYPE)  # (V,) at the label prior
    labels = torch.randint(0, v, (b, POSITIVES), device=DEVICE, generator=gen).sort(dim=1).values
    dup = torch.cat([torch.zeros_like(labels[:, :1], dtype=torch.bool), labels[:, 1:] == labels[:, :-1]], 1)
    labels = torch.where(dup, -1, labels)  # unique ids a row
    labels = F.pad(labels, (0, MAX_LABELS - POSITIVES), value=-1)  # (B, L), -1 padding
    return x, w, bias, labels


# ---------------------------------------------------------------------------------------------
# Providers: each returns the loss; backward goes through autograd
# ---------------------------------------------------------------------------------------------


def eager_loss(x, w, bias, labels):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        logits = F.linear(x, w, bias)  # (B, V) bf16
        target = dense_targets(labels, w.shape[0])  # (B, V) fp32
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / x.shape[0]


class ChunkedBCE(torch.autograd.Function):
    """Plain-PyTorch version of the kernel's plan: per chunk of V, fp32 logits and gradients."""

    @staticmethod
    def forward(ctx, x, w, bias, labels, chunk: int):
        b, v = x.shape[0], w.shape[0]
        loss = torch.zeros((), device=x.device)
        dx = torch.zeros(b, w.shape[1], device=x.device)  # (B, D) fp32
        dw, db = torch.empty_like(w), torch.empty_like(bias)
        for v0 in range(0, v, chunk):
            n = min(chunk, v - v0)
            z = torch.addmm(bias[v0 : v0 + n], x, w[v0 : v0 + n].t()).float()  # (B, n)
            lab = torch.where((labels >= v0) & (labels < v0 + n), labels - v0, -1)
            target = dense_targets(lab, n)  # (B, n)
            loss += F.binary_cross_entropy_with_logits(z, target, reduction="sum")
            dz = ((torch.sigmoid(z) - target) / b).to(x.dtype)  # (B, n)
            dx += (dz @ w[v0 : v0 + n]).float()
            torch.mm(dz.t(), x, out=dw[v0 : v0 + n])
            db[v0 : v0 + n] = dz.float().sum(0)
        ctx.grads = (dx.to(x.dtype), dw, db)
        return loss / b

    @staticmethod
    def backward(ctx, g):
        dx, dw, db = ctx.grads
        ctx.grads = None
        return dx * g, dw * g, db * g, None, None


def chunked_loss(x, w, bias, labels):
    chunk = max(1024, (256 * 2**20) // (x.shape[0] * 4) // 256 * 256)  # fp32 (B, chunk) ~256 MB
    return ChunkedBCE.apply(x, w, bias, labels, chunk)


def triton_loss(x, w, bias, labels):
    return linear_bce(x, w, bias, labels, reduction="batch_mean", impl="triton")


def _triton_with(**changes) -> Callable:
    """kernels.linear_bce's Function with one parameter changed (the inputs are already bf16)."""

    def loss(x, w, bias, labels):
        params = LinearBCEParams("batch_mean", grad_enabled=torch.is_grad_enabled(), **changes)
        return LinearBCEFunction.apply(x, w, bias, labels, None, params)

    return loss


def triton_autotune_loss(x, w, bias, labels):
    return linear_bce(x, w, bias, labels, reduction="batch_mean", impl="triton", autotune=True)


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


class _HostEvent:
    """torch.cuda.Event's interface on the host clock (the CPU dry run)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, other: _HostEvent) -> float:
        return (other.t - self.t) * 1e3


def _events(n: int) -> list:
    if DEVICE == "cuda":
        return [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    return [_HostEvent() for _ in range(n)]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


def _reset_peak() -> None:
    if DEVICE == "cuda":
        _reset_peak()


def _peak() -> float:
    """Peak allocated bytes since _reset_peak (nan on the CPU: no allocator statistics)."""
    return float(torch.cuda.max_memory_allocated()) if DEVICE == "cuda" else float("nan")


def _free() -> int:
    return torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else 2**40


def _empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def time_loss(fn: Callable, inputs, reps: int, warmup: int) -> tuple[float, float, float, float]:
    """Median forward, backward and total ms; and the loss of the last run."""
    x, w, bias, labels = inputs
    params = (x, w, bias)
    fwd, bwd, tot = [], [], []
    for i in range(warmup + reps):
        for p in params:
            p.grad = None
        e0, e1, e2 = _events(3)
        e0.record()
        loss = fn(x, w, bias, labels)
        e1.record()
        loss.backward()
        e2.record()
        _sync()
        if i >= warmup:
            fwd.append(e0.elapsed_time(e1))
            bwd.append(e1.elapsed_time(e2))
            tot.append(e0.elapsed_time(e2))
    for p in params:
        p.grad = None
    return statistics.median(fwd), statistics.median(bwd), statistics.median(tot), loss.item()


def peak_memory(fn: Callable, inputs) -> tuple[float, float]:
    """Peak extra MB of one forward + backward, and that minus the gradients it leaves."""
    x, w, bias, labels = inputs
    for p in (x, w, bias):
        p.grad = None
    _sync()
    base = _allocated()
    _reset_peak()
    fn(x, w, bias, labels).backward()
    _sync()
    peak = _peak() - base
    grads = sum(p.grad.numel() * p.grad.element_size() for p in (x, w, bias) if p.grad is not None)
    for p in (x, w, bias):
        p.grad = None
    return peak / 2**20, (peak - grads) / 2**20


def time_gemm3(b: int, d: int, v: int, reps: int, warmup: int) -> tuple[list[float], str]:
    """ms of the three bare bf16 GEMMs [z, dx, dW]; by chunks of V where (B, V) would not fit."""
    free = _free()
    chunk = v if 2 * b * v * 2 < 0.4 * free else max(4096, int(0.2 * free // (b * 2 * 2)) // 256 * 256)
    x = torch.randn(b, d, device=DEVICE, dtype=DTYPE)
    w = torch.randn(chunk, d, device=DEVICE, dtype=DTYPE)
    z = torch.empty(b, chunk, device=DEVICE, dtype=DTYPE)
    dz = torch.randn(b, chunk, device=DEVICE, dtype=DTYPE)
    dw = torch.empty(chunk, d, device=DEVICE, dtype=DTYPE)
    dx = torch.empty(b, d, device=DEVICE, dtype=DTYPE)
    total = [0.0, 0.0, 0.0]
    for n in [chunk] * (v // chunk) + ([v % chunk] if v % chunk else []):
        times = []
        for i in range(warmup + reps):
            ev = _events(4)
            ev[0].record()
            torch.mm(x, w[:n].t(), out=z[:, :n])
            ev[1].record()
            torch.mm(dz[:, :n], w[:n], out=dx)
            ev[2].record()
            torch.mm(dz[:, :n].t(), x, out=dw[:n])
            ev[3].record()
            _sync()
            if i >= warmup:
                times.append([ev[k].elapsed_time(ev[k + 1]) for k in range(3)])
        total = [t + statistics.median(col) for t, col in zip(total, zip(*times, strict=True), strict=True)]
    note = "z/dx/dW GEMMs {:.3g}/{:.3g}/{:.3g} ms".format(*total)
    return total, note + ("" if chunk == v else f"; timed in chunks of {chunk} columns")


def time_eval(fn: Callable, inputs, reps: int, warmup: int) -> tuple[float, float, float]:
    """Median ms of a forward under no_grad, its peak extra MB, and the loss."""
    x, w, bias, labels = inputs
    times = []
    with torch.no_grad():
        for i in range(warmup + reps):
            e0, e1 = _events(2)
            e0.record()
            loss = fn(x, w, bias, labels)
            e1.record()
            _sync()
            if i >= warmup:
                times.append(e0.elapsed_time(e1))
        base = _allocated()
        _reset_peak()
        fn(x, w, bias, labels)
        _sync()
        peak = (_peak() - base) / 2**20
    return statistics.median(times), peak, float(loss)


def _cell(row: dict, key: str, width: int) -> str:
    value = row.get(key)
    return f"{value:>{width}.3g}" if isinstance(value, float) else f"{'-':>{width}}"


def reps_for(ms_estimate: float, budget_s: float, lo: int = 5, hi: int = 100) -> int:
    return int(min(hi, max(lo, budget_s * 1e3 / max(ms_estimate, 1e-3))))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def goal_summary(rows: list[dict]) -> None:
    """The op's goals at B 8192, D 1280, V 24,320 from this run's rows (all measured here)."""
    at = {r["provider"]: r for r in rows if (r["B"], r["D"], r["V"]) == (8192, 1280, 24320)}
    mine, gemm3, eager = at.get("triton"), at.get("gemm3"), at.get("eager")
    if not (mine and mine.get("total_ms")):
        print("goals: no triton row at B 8192, D 1280, V 24,320 in this run")
        return
    print("goals at B 8192, D 1280, V 24,320:")
    if gemm3 and gemm3.get("total_ms"):
        print(f"  fwd+bwd / three bare GEMMs: {mine['total_ms'] / gemm3['total_ms']:.2f}x (goal <= 1.15x)")
    if eager and eager.get("total_ms"):
        print(f"  eager / ours: {eager['total_ms'] / mine['total_ms']:.2f}x faster (goal >= 1.5x)")
        if mine.get("peak_extra_mb") and eager.get("peak_extra_mb"):
            ratio = mine["peak_extra_mb"] / eager["peak_extra_mb"]
            print(f"  extra memory ours / eager: {ratio:.3f} (goal <= 0.125)")
    for name in ("triton-nocheck", "triton-addmm", "triton-cublas", "triton-autotune"):
        if at.get(name, {}).get("total_ms"):
            print(f"  {name}: {at[name]['total_ms'] / mine['total_ms']:.3f}x the time of triton")


def main(argv: list[str] | None = None) -> int:
    global DEVICE, DTYPE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--B", type=int, nargs="+", default=[256, 1024, 8192], help="batch sizes")
    parser.add_argument("--D", type=int, nargs="+", default=[768, 1280], help="feature widths")
    parser.add_argument("--V", type=int, nargs="+", default=[24320, 131072, 1000000], help="vocabulary sizes")
    parser.add_argument("--quick", action="store_true", help=f"shapes (B, D, V) {QUICK_SHAPES}, no chunked")
    parser.add_argument(
        "--providers", nargs="+", choices=PROVIDERS, help="default: all (quick: all but chunked)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per provider and shape")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per provider and shape")
    parser.add_argument("--compile-static", action="store_true", help="torch.compile per shape (slow)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the dry run")
    parser.add_argument("--csv", type=Path, default=None, help="output CSV (default: see above)")
    args = parser.parse_args(argv)
    DEVICE = args.device
    DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    providers = args.providers or list(QUICK_PROVIDERS if args.quick else PROVIDERS)

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_linear_bce: no CUDA device here; this benchmark needs a GPU. Nothing measured.")
        return 0
    import triton

    shapes = [(b, d, v) for b in args.B for d in args.D for v in args.V]
    if args.quick and DEVICE == "cuda":  # the dry run keeps its tiny --B/--D/--V
        shapes = QUICK_SHAPES
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "perf" / "results"
    path = args.csv or out_dir / ("linear_bce.csv" if DEVICE == "cuda" else "linear_bce_dryrun.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else f"{cpu_name()} (dry run)",
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    compiled = torch.compile(eager_loss, dynamic=not args.compile_static)
    fns = {
        "triton": triton_loss,
        "triton-nocheck": _triton_with(validate_labels=False),
        "triton-addmm": _triton_with(dx_accumulate="addmm"),
        "triton-cublas": _triton_with(design="cublas"),
        "triton-autotune": triton_autotune_loss,
        "eager": eager_loss,
        "compile": compiled,
        "chunked": chunked_loss,
    }
    print(f"{meta['device']}  torch {meta['torch']}  triton {meta['triton']}  commit {meta['commit']}")
    print(f"{'provider':<16}{'B':>6}{'D':>6}{'V':>9}{'fwd ms':>9}{'bwd ms':>9}{'total':>9}{'x gemm3':>9}"
          f"{'TFLOP/s':>9}{'peak MB':>10}{'trans MB':>10}  note")  # fmt: skip

    all_rows = []
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        start = time.time()
        for b, d, v in shapes:
            flops = 6 * b * v * d
            _empty_cache()
            gemms, gemm3_note = [float("nan")] * 3, ""
            if "gemm3" in providers:
                gemms, gemm3_note = time_gemm3(b, d, v, reps=reps_for(flops / 8e11, args.seconds), warmup=2)
                _empty_cache()
            gemm3_ms = sum(gemms)
            rows = []
            if "gemm3" in providers:
                rows.append({"provider": "gemm3", "total_ms": gemm3_ms, "note": gemm3_note})
            inputs = [t.requires_grad_() if t.is_floating_point() else t for t in make_inputs(b, d, v)]
            for name in [p for p in providers if p != "gemm3"]:
                rows.append(run_provider(name, fns, inputs, b, d, v, flops, gemms, args))
                for p in inputs[:3]:
                    p.grad = None
                _empty_cache()
            for row in rows:
                tot = row.get("total_ms")
                if tot is not None and not math.isnan(tot):
                    row["tflops"] = row.pop("flops", flops) / (tot * 1e-3) / 1e12
                    if row["provider"] != "triton-eval" and gemm3_ms == gemm3_ms:
                        row["x_gemm3"] = tot / gemm3_ms
                row.update(meta, B=b, D=d, V=v, gemm3_ms=gemm3_ms)
                writer.writerow({k: (f"{x:.4g}" if isinstance(x, float) else x) for k, x in row.items()})
                cells = "".join(
                    _cell(row, k, 10 if k.endswith("mb") else 9) for k in FIELDS[9:17] if k != "gemm3_ms"
                )
                print(f"{row['provider']:<16}{b:>6}{d:>6}{v:>9}{cells}  {row.get('note', '')}", flush=True)
            f.flush()
            all_rows += rows
            del inputs
        print(f"{len(shapes)} shapes in {time.time() - start:.0f} s; rows appended to {path}")
    goal_summary(all_rows)
    failed = [r for r in all_rows if str(r.get("note", "")).startswith("failed")]
    return 1 if DEVICE == "cpu" and failed else 0  # the dry run: a provider that fails is the finding


def run_provider(name: str, fns: dict, inputs, b: int, d: int, v: int, flops: float, gemms, args) -> dict:
    row = {"provider": name, "note": ""}
    need = b * v * EAGER_BYTES_PER_LOGIT
    free = _free()
    if name in ("eager", "compile") and need > 0.9 * free:
        row["note"] = f"skipped: predicted {need / 2**30:.0f} GiB > {free / 2**30:.0f} GiB free"
        return row
    try:
        if name == "triton-eval":
            t0 = time.perf_counter()
            time_eval(triton_loss, inputs, reps=1, warmup=args.warmup)
            est = (time.perf_counter() - t0) * 1e3 / (args.warmup + 1)
            fwd, peak, loss = time_eval(triton_loss, inputs, reps_for(est, args.seconds), 0)
            row.update(fwd_ms=fwd, total_ms=fwd, loss=loss, peak_extra_mb=peak, flops=flops / 3)
            row["note"] = f"no_grad forward: GEMM + softplus epilogue = {fwd / gemms[0]:.2f}x bare z GEMM"
            return row
        t0 = time.perf_counter()
        time_loss(fns[name], inputs, reps=1, warmup=args.warmup)  # also compiles
        est = (time.perf_counter() - t0) * 1e3 / (args.warmup + 1)
        fwd, bwd, tot, loss = time_loss(fns[name], inputs, reps_for(est, args.seconds), 0)
        peak, transient = peak_memory(fns[name], inputs)
        row.update(fwd_ms=fwd, bwd_ms=bwd, total_ms=tot, loss=loss)
        row.update(peak_extra_mb=peak, transient_mb=transient)
        if name == "triton":
            row["note"] = "gradients computed in the forward; backward scales them"
    except torch.cuda.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as err:  # noqa: BLE001 -- one failing provider (compile) must not end the suite
        row["note"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return row


if __name__ == "__main__":
    sys.exit(main())
