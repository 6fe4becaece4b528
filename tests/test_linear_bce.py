"""kernels.linear_bce against a float64 oracle, the same-dtype PyTorch reference, and itself.

Oracle: F.binary_cross_entropy_with_logits in float64 on the dense (smoothed) target, summed and
divided by B (batch_mean), B * V (mean) or 1 (sum), on the very inputs the kernel sees (rounded to
its dtype first, so only arithmetic error is measured). For the loss and each gradient, the
kernel's largest absolute error must be at most 2x that of kernels.reference.linear_bce_reference
run in the same dtype, plus a floor of FLOOR[dtype] x the largest |oracle| entry.

Precision: fp32 tests expect IEEE fp32 dots (TF32 off, PyTorch's default, which the kernel
follows); fp16 runs on the CPU; bf16 only on a GPU (the interpreter's bf16 arithmetic is wrong).
On the CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py), with large blocks;
CPU_CASES is a covering subset of the shape grid (below: every B, D, V, both dtypes, each
reduction, with and without bias, smoothing and sample weights) and the whole grid is marked
`slow` (about 30 s on 2 cores); bf16 runs the grid on a GPU only (`gpu` marker). Every buffer is
poisoned with NaN before the kernels write it (autouse fixture), so an unwritten element shows
up as a NaN loss or gradient.

`slow` also marks the grids the CPU covers (CPU_CASES, the strided views): perf/gpu_suite.sh runs
this file with -m "not slow" on the GPU, where every new shape or layout is a kernel compile, and
keeps the bf16 covering subset (BF16_CASES) and the GPU-only tests. CI runs everything.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels.linear_bce as lb
import kernels.linear_bce_fwd as lbf
from kernels.linear_bce import LinearBCEFunction, LinearBCEParams, linear_bce
from kernels.reference import dense_targets, linear_bce_reference

ROOT = Path(__file__).resolve().parents[1]

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# About one unit in the last place of the largest entry: where PyTorch is exact by luck.
FLOOR = {torch.float64: 1e-13, torch.float32: 2e-7, torch.float16: 2e-4, torch.bfloat16: 2e-3}
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _poison_and_ieee(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lbf, "_POISON", True)
    if CUDA:  # fp32 correctness is checked against IEEE fp32 dots
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def make_labels(b: int, v: int, max_pos: int, gen: torch.Generator, dtype=torch.int64) -> torch.Tensor:
    """(B, L) ids with -1 padding in random places: row 0 has none, row 1 has L, the rest 0..L."""
    el = max_pos
    labels = torch.full((b, el), -1, dtype=dtype)
    for i in range(b):
        k = 0 if i == 0 else el if i == 1 else int(torch.randint(0, el + 1, (), generator=gen))
        row = torch.full((el,), -1, dtype=dtype)
        row[:k] = torch.randperm(v, generator=gen)[:k].to(dtype)
        labels[i] = row[torch.randperm(el, generator=gen)] if i % 3 else row
    return labels


def make_case(b: int, d: int, v: int, *, bias: bool, seed: int = 0, max_pos: int = 8, weights: bool = False):
    """fp32 master inputs: logits spread over about [-12, 8] so softplus and sigmoid see both tails."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen)  # (B, D)
    w = torch.randn(v, d, generator=gen) * (2.0 / d**0.5)  # (V, D)
    bb = torch.randn(v, generator=gen) * 2 - 2 if bias else None  # (V,)
    labels = make_labels(b, v, min(max_pos, v), gen)  # (B, L)
    s = torch.rand(b, generator=gen) * 2 if weights else None  # (B,)
    if weights and b > 2:
        s[2] = 0.0
    return x, w, bb, labels, s


def oracle(x, w, b, labels, *, reduction, eps, s):
    """Loss and gradients in float64 from the dense formulation."""
    x, w = (t.detach().double().requires_grad_() for t in (x, w))
    b = None if b is None else b.detach().double().requires_grad_()
    v = w.shape[0]
    target = dense_targets(labels, v).double() * (1 - eps) + eps / 2  # (B, V)
    weight = None if s is None else s.double()[:, None]
    loss = F.binary_cross_entropy_with_logits(F.linear(x, w, b), target, weight=weight, reduction="sum")
    loss = loss / {"sum": 1, "batch_mean": x.shape[0], "mean": x.shape[0] * v}[reduction]
    inputs = [t for t in (x, w, b) if t is not None]
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


def run(fn, x, w, b, labels, *, dtype, reduction, eps, s, device=DEVICE, **kw):
    """Loss and gradients of fn on copies of the inputs in dtype, on device."""
    xs = [t.detach().to(device, dtype).requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    sw = None if s is None else s.to(device)
    loss = fn(
        xs[0], xs[1], xs[2] if b is not None else None, labels.to(device),
        reduction=reduction, label_smoothing=eps, sample_weight=sw, **kw,
    )  # fmt: skip
    return [loss.detach(), *torch.autograd.grad(loss, xs)]


def check_against_oracle(x, w, b, labels, *, dtype, reduction="batch_mean", eps=0.0, s=None, fn=None):
    rounded = [None if t is None else t.to(dtype) for t in (x, w, b)]
    want = oracle(*rounded, labels, reduction=reduction, eps=eps, s=s)
    ref = run(linear_bce_reference, *rounded, labels, dtype=dtype, reduction=reduction, eps=eps, s=s)
    fn = fn or (lambda *a, **k: linear_bce(*a, impl="triton", **k))
    got = run(fn, *rounded, labels, dtype=dtype, reduction=reduction, eps=eps, s=s)
    names = ["loss", "dx", "dW", "db"]
    for name, g, r, o in zip(names, got, ref, want, strict=False):  # no db without a bias
        assert g.dtype == (r.dtype if name == "loss" else dtype), name
        assert torch.isfinite(g).all(), f"{name}: non-finite values (unwritten poisoned elements?)"
        err = (g.double().cpu() - o).abs().max().item()
        err_ref = (r.double().cpu() - o).abs().max().item()
        floor = FLOOR[dtype] * o.abs().max().item()
        assert err <= 2 * err_ref + floor, (
            f"{name}: error {err:.3g} > 2 x torch's {err_ref:.3g} + {floor:.3g}"
        )


# A covering subset of B {1, 37, 256} x D {64, 80, 128} x V {97, 1000, 24320, primes} for the
# interpreter: (B, D, V, dtype, bias, eps, reduction, sample weights).
CPU_CASES = [
    (1, 64, 97, torch.float32, True, 0.0, "batch_mean", False),
    (1, 80, 24320, torch.float16, False, 0.1, "sum", False),
    (37, 80, 97, torch.float16, True, 0.0, "mean", True),
    (37, 128, 1000, torch.float32, False, 0.1, "batch_mean", True),
    (37, 64, 7919, torch.float32, True, 0.1, "sum", False),
    (256, 64, 1000, torch.float16, True, 0.1, "batch_mean", False),
    (256, 80, 1009, torch.float32, True, 0.0, "mean", True),
    (256, 128, 24320, torch.float32, True, 0.1, "batch_mean", False),
]


@pytest.mark.slow  # a grid the CPU covers (see the module docstring)
@pytest.mark.parametrize(("b", "d", "v", "dtype", "bias", "eps", "reduction", "weights"), CPU_CASES)
def test_matches_fp64_oracle(b, d, v, dtype, bias, eps, reduction, weights):
    x, w, bb, labels, s = make_case(b, d, v, bias=bias, seed=b + d + v, weights=weights)
    check_against_oracle(x, w, bb, labels, dtype=dtype, reduction=reduction, eps=eps, s=s)


def test_many_positives_fp16():
    """Up to 64 positives a row (rows "with many" labels), sample weights, smoothing."""
    x, w, bb, labels, s = make_case(256, 128, 24320, bias=True, seed=3, max_pos=64, weights=True)
    check_against_oracle(x, w, bb, labels, dtype=torch.float16, reduction="batch_mean", eps=0.1, s=s)


GRID_V = [97, 1000, 7919, 24320] + ([100003] if CUDA else [])  # 7919, 100003: primes
GRID = list(itertools.product([1, 37, 256], [64, 80, 128], GRID_V))


def grid_case(b, d, v, dtype):
    """The options cycle with the shape so that each appears with every B, D and V."""
    bias, eps = (b + d + v) % 2 == 0, 0.1 * ((b // 2 + v) % 2)
    reduction = ["batch_mean", "mean", "sum"][(d + v) % 3]
    x, w, bb, labels, s = make_case(b, d, v, bias=bias, seed=b * d + v, max_pos=32, weights=b % 2 == 1)
    check_against_oracle(x, w, bb, labels, dtype=dtype, reduction=reduction, eps=eps, s=s)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(("b", "d", "v"), GRID)
def test_shape_grid(b, d, v, dtype):
    grid_case(b, d, v, dtype)


@pytest.mark.parametrize(
    ("chunk", "dtype"), [(97, torch.float32), (256, torch.float16), (700, torch.float32)]
)
def test_several_chunks(chunk, dtype):
    """Chunks of V that end inside a tile, a prime vocabulary, labels in every chunk."""
    x, w, bb, labels, s = make_case(37, 80, 1009, bias=True, seed=chunk, max_pos=16, weights=True)

    def fn(x, w, b, labels, *, reduction, label_smoothing, sample_weight):
        params = LinearBCEParams(reduction, label_smoothing, chunk_cols=chunk)
        return LinearBCEFunction.apply(x, w, b, labels, sample_weight, params)

    check_against_oracle(x, w, bb, labels, dtype=dtype, eps=0.1, s=s, fn=fn)


@pytest.mark.parametrize("logits", ["zero", "huge", "mixed"])
def test_log_product_path(monkeypatch: pytest.MonkeyPatch, logits):
    """The GPU's tile shape and one log per row product (the interpreter's default takes a log per
    element): all-zero logits (every factor exactly 2), |z| up to ~80 (factors exactly 1), both."""
    if not CUDA:  # the interpreter reduces a product one element at a time: keep the tiles few
        cfg = lbf._FwdConfig(16, 128, 16, num_warps=1, num_stages=1, LOG_PRODUCT=True)
        monkeypatch.setattr(lbf, "_pinned_config", lambda *a: cfg)
    x, w, bb, labels, s = make_case(5, 16, 300, bias=True, seed=11, weights=True)
    if logits == "zero":
        w, bb = torch.zeros_like(w), torch.zeros_like(bb)
    elif logits == "huge":
        w = w * 40
    else:
        w[::2] *= 40
    check_against_oracle(x, w, bb, labels, dtype=torch.float32, eps=0.1, s=s)


def test_chunk_budget(monkeypatch: pytest.MonkeyPatch):
    """linear_bce(..., chunk_mb=) shrinks the chunks (at least 1024 columns each): same result."""
    x, w, bb, labels, _ = make_case(37, 64, 2500, bias=True, seed=5)
    kw = {"dtype": torch.float32, "reduction": "sum", "eps": 0.0, "s": None}
    one = run(lambda *a, **k: linear_bce(*a, **k), x, w, bb, labels, **kw)
    assert lbf._chunk_cols(37, 2500, 4, LinearBCEParams(chunk_mb=0.001)) == 1024
    three = run(lambda *a, **k: linear_bce(*a, chunk_mb=0.001, **k), x, w, bb, labels, **kw)
    for a, c in zip(one, three, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_gradcheck_fp64():
    """float64 throughout (fp64 dots and accumulators): analytic vs finite-difference gradients.

    gradcheck also runs the backward twice on one graph, which takes the recompute path.
    """
    x, w, bb, labels, s = make_case(3, 8, 7, bias=True, seed=1, max_pos=3, weights=True)
    labels, s = labels.to(DEVICE), s.to(DEVICE)
    inputs = [t.to(DEVICE, torch.float64).requires_grad_() for t in (x, w, bb)]
    for params, fast in (
        (LinearBCEParams("mean", 0.1), False),
        (LinearBCEParams("sum", 0.0, chunk_cols=3), True),
    ):

        def f(x, w, b, params=params):
            return LinearBCEFunction.apply(x, w, b, labels, s, params)

        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=fast)


def test_incoming_gradient_scales_and_retained_graph():
    x, w, bb, labels, _ = make_case(37, 64, 97, bias=True, seed=2)
    xs = [t.to(DEVICE).requires_grad_() for t in (x, w, bb)]
    labels = labels.to(DEVICE)
    base = torch.autograd.grad(linear_bce(*xs, labels), xs)
    loss = linear_bce(*xs, labels)
    scaled = torch.autograd.grad(3.5 * loss, xs, retain_graph=True)
    again = torch.autograd.grad(loss, xs)  # recomputed: the first backward consumed the gradients
    for g, g3, g1 in zip(base, scaled, again, strict=True):
        torch.testing.assert_close(g3, 3.5 * g, rtol=1e-6, atol=1e-7)
        assert torch.equal(g1, g)


def test_no_grad_and_partial_grads():
    x, w, bb, labels, _ = make_case(37, 64, 97, bias=True, seed=4)
    x, w, bb, labels = (t.to(DEVICE) for t in (x, w, bb, labels))
    full = [t.clone().requires_grad_() for t in (x, w, bb)]
    loss = linear_bce(*full, labels, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, full)
    with torch.no_grad():
        torch.testing.assert_close(linear_bce(*full, labels, label_smoothing=0.1), loss.detach())
    for i in range(3):  # only one input wants a gradient (e.g. a frozen head or frozen features)
        parts = [t.clone().requires_grad_(j == i) for j, t in enumerate((x, w, bb))]
        (g,) = torch.autograd.grad(linear_bce(*parts, labels, label_smoothing=0.1), [parts[i]])
        torch.testing.assert_close(g, grads[i])


def test_zero_weight_sample_contributes_nothing():
    x, w, bb, labels, _ = make_case(37, 80, 1000, bias=True, seed=6)
    x, w, bb, labels = (t.to(DEVICE) for t in (x, w, bb, labels))
    s = torch.ones(37, device=DEVICE)
    s[5] = 0.0
    xs = x.clone().requires_grad_()
    full = linear_bce(xs, w, bb, labels, reduction="sum", sample_weight=s)
    (dx,) = torch.autograd.grad(full, [xs])
    keep = torch.arange(37, device=DEVICE) != 5
    only = linear_bce(x[keep], w, bb, labels[keep], reduction="sum")
    torch.testing.assert_close(full, only, rtol=1e-6, atol=1e-4)
    assert (dx[5] == 0).all()


def test_deterministic_and_int32_labels():
    x, w, bb, labels, s = make_case(37, 80, 1000, bias=True, seed=7, weights=True)
    kw = {"dtype": torch.float32, "reduction": "batch_mean", "eps": 0.1, "s": s}
    first = run(linear_bce, x, w, bb, labels, **kw)
    again = run(linear_bce, x, w, bb, labels, **kw)
    as_int32 = run(linear_bce, x, w, bb, labels.int(), **kw)
    for a, b2, c in zip(first, again, as_int32, strict=True):
        assert torch.equal(a, b2) and torch.equal(a, c)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([[0, 97, -1]], r"\[0, 97\)"),
        ([[0, -2, -1]], r"\[0, 97\)"),
        ([[3, 5, 3]], "duplicate label ids in row 0"),
    ],
)
def test_bad_labels_raise(impl, labels, match):
    x, w, bb, _, _ = make_case(1, 64, 97, bias=True)
    with pytest.raises(ValueError, match=match):
        linear_bce(x.to(DEVICE), w.to(DEVICE), bb.to(DEVICE), torch.tensor(labels, device=DEVICE), impl=impl)


def test_bad_arguments_raise():
    x, w, bb, labels, _ = make_case(4, 64, 97, bias=True)
    x, w, bb, labels = (t.to(DEVICE) for t in (x, w, bb, labels))
    with pytest.raises(ValueError, match="impl"):
        linear_bce(x, w, bb, labels, impl="cuda")
    with pytest.raises(ValueError, match="reduction"):
        linear_bce(x, w, bb, labels, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_bce(x, w, bb, labels, label_smoothing=1.0)
    with pytest.raises(TypeError, match="one float dtype"):
        linear_bce(x.half(), w, bb, labels)
    with pytest.raises(TypeError, match="int32 or int64"):
        linear_bce(x, w, bb, labels.float())
    with pytest.raises(ValueError, match=r"labels must be \(B, L\)"):
        linear_bce(x, w, bb, labels[:3])
    with pytest.raises(ValueError, match="sample_weight"):
        linear_bce(x, w, bb, labels, sample_weight=torch.ones(3, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=[gpu, needs_cuda])])
def test_tiny_training_run_same_curve(dtype):
    """A few SGD steps of Linear -> tanh -> CatLIP head: the same loss curve with either impl."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 32, generator=gen).to(DEVICE)  # (N, F)
    labels = make_labels(64, 97, 6, gen).to(DEVICE)  # (N, L)
    curves = {}
    for impl in ("triton", "torch"):
        torch.manual_seed(0)
        body = torch.nn.Linear(32, 64).to(DEVICE, dtype)
        head = torch.nn.Linear(64, 97).to(DEVICE, dtype)
        torch.nn.init.constant_(head.bias, -4.0)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=2.0)
        curve = []
        for step in range(6):
            rows = slice(16 * (step % 4), 16 * (step % 4) + 16)
            loss = linear_bce(
                torch.tanh(body(feats[rows].to(dtype))), head.weight, head.bias, labels[rows], impl=impl
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves[impl] = curve
    assert curves["triton"][-1] < 0.8 * curves["triton"][0]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(curves["triton"], curves["torch"], rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# GPU only: bf16, autocast, autotune
# --------------------------------------------------------------------------------------------


# bf16 on the GPU by default: a covering subset of GRID (each B, D and V, each option through
# grid_case's cycle), 12 shapes instead of 45 kernel-compile classes; the whole grid is `slow`.
BF16_CASES = [
    (1, 64, 97), (1, 80, 24320), (1, 128, 100003), (37, 64, 1000), (37, 80, 7919), (37, 128, 24320),
    (37, 80, 100003), (256, 64, 24320), (256, 80, 1000), (256, 128, 7919), (256, 64, 100003), (256, 128, 97),
]  # fmt: skip


@gpu
@needs_cuda
@pytest.mark.parametrize(("b", "d", "v"), BF16_CASES)
def test_shape_grid_bf16(b, d, v):
    grid_case(b, d, v, torch.bfloat16)


@gpu
@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize(("b", "d", "v"), [c for c in GRID if c not in BF16_CASES])
def test_shape_grid_bf16_rest(b, d, v):
    grid_case(b, d, v, torch.bfloat16)


@gpu
@needs_cuda
def test_autocast_bf16_gpu():
    """Under bf16 autocast with fp32 parameters: same as the reference under autocast."""
    x, w, bb, labels, _ = make_case(256, 128, 24320, bias=True, seed=8)
    got, ref = [], []
    for impl, out in (("triton", got), ("torch", ref)):
        xs = [t.to("cuda").requires_grad_() for t in (x, w, bb)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_bce(*xs, labels.to("cuda"), impl=impl)
        out += [loss.detach(), *torch.autograd.grad(loss, xs)]
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-2 * r.abs().max().item())


@gpu
@needs_cuda
def test_autotune_switch_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(lb.AUTOTUNE_ENV, "1")
    x, w, bb, labels, s = make_case(256, 128, 24320, bias=True, seed=9, weights=True)
    check_against_oracle(x, w, bb, labels, dtype=torch.bfloat16, eps=0.1, s=s)


# --------------------------------------------------------------------------------------------
# Strides and offsets: every input as a transposed, sliced or offset view
# --------------------------------------------------------------------------------------------


def as_view(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as t, laid out differently in memory; the gaps hold values that would
    change the result if read (other label ids, large floats), so a stride ignored shows."""
    if kind == "transposed":  # 2-D only: strides (1, rows)
        return t.t().contiguous().t()
    if kind == "offset":  # storage offset 3, contiguous after it
        buf = torch.full((t.numel() + 3,), 7, dtype=t.dtype, device=t.device)
        buf[3:] = t.reshape(-1)
        return buf[3:].view(t.shape)
    if kind == "sliced":  # every other element of the last dim (stride 2), and rows spaced out
        shape = (*t.shape[:-1], 2 * t.shape[-1])
        buf = torch.full(shape, 5, dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        return buf[..., ::2]
    if kind == "rows":  # every third row of a wider buffer, like hidden[:, 0] of (B, S, W)
        buf = torch.full((3 * t.shape[0], *t.shape[1:]), 5, dtype=t.dtype, device=t.device)
        buf[::3] = t
        return buf[::3]
    if kind == "expanded":  # one row broadcast (stride 0): all rows equal
        return t[:1].expand_as(t)
    raise ValueError(kind)


VIEW_CASES = [
    ("x", "transposed"), ("x", "sliced"), ("x", "offset"), ("x", "rows"), ("x", "expanded"),
    ("weight", "transposed"), ("weight", "sliced"), ("weight", "offset"), ("weight", "rows"),
    ("bias", "sliced"), ("bias", "offset"),
    ("labels", "transposed"), ("labels", "sliced"), ("labels", "offset"), ("labels", "rows"),
    ("sample_weight", "sliced"), ("sample_weight", "offset"),
]  # fmt: skip


@pytest.mark.slow  # a grid the CPU covers; on a GPU each layout is a kernel compile
@pytest.mark.parametrize(("name", "kind"), VIEW_CASES, ids=[f"{n}-{k}" for n, k in VIEW_CASES])
@pytest.mark.parametrize("entry", ["linear_bce", "function"])
def test_strided_and_offset_views(name, kind, entry):
    """Every entry point honours every input's strides and storage offset: loss and gradients
    equal those from contiguous copies, within the oracle's bound (fp32, IEEE dots)."""
    x, w, bb, labels, s = make_case(9, 48, 200, bias=True, seed=12, max_pos=6, weights=True)
    if name == "x" and kind == "expanded":
        x = x[:1].expand_as(x).contiguous()
    inputs = {"x": x, "weight": w, "bias": bb, "labels": labels, "sample_weight": s}
    want = oracle(x, w, bb, labels, reduction="batch_mean", eps=0.1, s=s)
    ref = run(
        linear_bce_reference, x, w, bb, labels, dtype=torch.float32, reduction="batch_mean", eps=0.1, s=s
    )
    views = {k: v.to(DEVICE) for k, v in inputs.items()}
    views[name] = as_view(views[name], kind)
    assert not views[name].is_contiguous() or views[name].storage_offset() > 0
    leaves = [views[k].detach().requires_grad_() for k in ("x", "weight", "bias")]
    if entry == "linear_bce":
        loss = linear_bce(*leaves, views["labels"], label_smoothing=0.1, sample_weight=views["sample_weight"])
    else:
        params = LinearBCEParams("batch_mean", 0.1, chunk_cols=128)  # three chunks, the last partial
        loss = LinearBCEFunction.apply(*leaves, views["labels"], views["sample_weight"], params)
    got = [loss.detach(), *torch.autograd.grad(loss, leaves)]
    for label, g, r, o in zip(["loss", "dx", "dW", "db"], got, ref, want, strict=True):
        err = (g.double().cpu() - o).abs().max().item()
        bound = 2 * (r.double().cpu() - o).abs().max().item() + FLOOR[torch.float32] * o.abs().max().item()
        assert err <= bound, f"{name} {kind}: {label} error {err:.3g} > {bound:.3g}"


# Run in a child process: before int64 offsets, such a view made the interpreter read outside the
# storage (a crash, not an exception). Each view lies in a lazily allocated 4 GiB buffer: only the
# pages the view touches are ever written, so the child stays at a few hundred MB.
_LARGE_STRIDE_CHILD = r"""
import sys
import torch
from kernels.linear_bce import linear_bce

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU: the compiled kernels, 4-5 GB each
big = 2**31 // 15 + 1  # 15 * big > 2**31 - 1: the last of 16 columns lies past int32 offsets


def strided(shape, stride, values):
    n = sum((size - 1) * st for size, st in zip(shape, stride)) + 1
    view = torch.empty(n, dtype=values.dtype, device=DEV).as_strided(shape, stride)  # touched only here
    view.copy_(values)
    return view


def grads(x, w, b, labels):
    xs = [t.detach().requires_grad_() for t in (x, w, b)]
    loss = linear_bce(*xs, labels, reduction="sum")
    return [loss.detach(), *torch.autograd.grad(loss, xs)]


g = torch.Generator().manual_seed(0)
x = torch.randn(3, 16, generator=g).half().to(DEV)
w = (torch.randn(40, 16, generator=g) / 4).half().to(DEV)
b = torch.randn(40, generator=g).half().to(DEV)
labels = torch.tensor([[1, 7], [39, -1], [0, 5]], device=DEV)
cases = {
    "x rows 2**30 + 64 apart (row 2 at 2**31 + 128)": ("x", (3, 16), (2**30 + 64, 1)),
    "x columns 2**31 / 15 apart (x as the transpose of a tall buffer)": ("x", (3, 16), (1, big)),
    "weight columns 2**31 / 15 apart": ("w", (40, 16), (1, big)),
    "weight rows 2**26 apart (row 39 at 2.6e9)": ("w", (40, 16), (2**26, 1)),
}
want = grads(x, w, b, labels)
failed = 0
for name, (which, shape, stride) in cases.items():
    xv = strided(shape, stride, x) if which == "x" else x
    wv = strided(shape, stride, w) if which == "w" else w
    got = grads(xv, wv, b, labels)
    ok = all(torch.equal(a, c) for a, c in zip(got, want))
    print(("ok      " if ok else "WRONG   ") + name, flush=True)
    failed += not ok
    del xv, wv, got
    if DEV == "cuda":
        torch.cuda.empty_cache()
sys.exit(1 if failed else 0)
"""


def test_int64_offsets_for_large_strides(tmp_path):
    """Views whose element offsets pass 2**31 (e.g. hidden[:, 0] of a (B, S, W) activation with
    B S W >= 2**31): the kernels must address them in int64 and give the same bits as a copy."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", _LARGE_STRIDE_CHILD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = res.stdout + res.stderr[-2000:]
    assert res.returncode == 0, (
        f"child exited with {res.returncode} (negative: killed by a signal):\n{report}"
    )


# --------------------------------------------------------------------------------------------
# The GPU loss epilogue (LOG_PRODUCT) at the vocabulary sizes of the paper and beyond
# --------------------------------------------------------------------------------------------
LN2 = 0.6931471805599453
GPU_CFG = lbf._FwdConfig(64, 128, 64, num_warps=4, num_stages=4)  # _PINNED_16's tile: BLOCK_N 128


def emulated_row_sums(z: torch.Tensor, eps: float, block_n: int) -> torch.Tensor:
    """_fwd_kernel's per-tile row sums with LOG_PRODUCT, op for op in PyTorch fp32: (T, B).

    The product is reduced in the interpreter's order (left to right over the tile's columns),
    the longest chain of roundings; a GPU reduces in shorter chains (per thread, then a tree).
    """
    b, v = z.shape
    t = -(-v // block_n)
    cols = torch.arange(t * block_n, device=z.device)
    zt = z[:, cols % v].view(b, t, block_n)  # tail columns wrap around, as the kernel loads them
    ok = (cols < v).view(t, block_n)
    e = torch.exp(-zt.abs())
    term = zt.clamp(min=0.0)
    if eps:
        term = term - (0.5 * eps) * zt
    row = torch.where(ok, term, 0.0).sum(-1)  # (B, T)
    e = torch.where(ok, e, 0.0)
    c = e[..., 0]
    for j in range(1, block_n):
        c = c + e[..., j] + c * e[..., j]
    full = torch.isinf(c)
    c = torch.where(full, 0.0, c)
    uc = 1.0 + c
    log1p = torch.where(full, torch.tensor(block_n * LN2), torch.log(uc) + (c - (uc - 1.0)) / uc)
    return (row + log1p).t()  # (T, B)


class EmulatedFwdKernel:
    """Stands in for lbf._fwd_kernel under torch.no_grad(): the same row_part output, computed by
    emulated_row_sums from z = x W^T + b in fp32 (PyTorch's GEMM: only the epilogue is emulated).
    The launcher around it (chunks, partial sums, positives, reduction) runs as it is."""

    def __getitem__(self, grid):
        def launch(x, w, b, s, row_part, dz, db_part, B, N, D, *strides_and_eps, **meta):
            assert dz is None and db_part is None, "emulates the loss-only (no_grad) forward"
            eps = strides_and_eps[-1]
            z = F.linear(x.float(), w.float(), None if b is None else b.float())  # (B, N)
            rows = emulated_row_sums(z, eps, meta["BLOCK_N"])
            row_part[: rows.shape[0], :B] = rows.to(row_part.dtype)

        return launch


def loss_with_emulated_epilogue(monkeypatch, x, w, b, labels, eps):
    monkeypatch.setattr(lbf, "_fwd_kernel", EmulatedFwdKernel())
    monkeypatch.setattr(lbf, "_pinned_config", lambda *a: GPU_CFG)
    with torch.no_grad():
        return linear_bce(x, w, b, labels, label_smoothing=eps)


def logit_case(v: int, regime: str, seed: int):
    """B 4, D 16. "prior": the head at its initialisation (bias -log V, small weights), logits
    near -log V, where the loss is ~1 a row summed from ~V terms of ~1/V; "spread": logits over
    about [-12, 8], the loss ~0.7 a column."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 16, generator=gen)
    if regime == "prior":
        w = torch.randn(v, 16, generator=gen) * 0.02
        b = torch.full((v,), -math.log(v))
    else:
        w = torch.randn(v, 16, generator=gen) * 0.5
        b = torch.randn(v, generator=gen) * 2 - 2
    labels = make_labels(4, v, 5, gen)
    return x, w, b, labels


emulation_only = pytest.mark.skipif(CUDA, reason="the CPU's stand-in; on a GPU the kernel itself runs")


@emulation_only
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("regime", ["prior", "spread"])
@pytest.mark.parametrize("v", [24320, 1_000_000])
def test_gpu_loss_epilogue_precision(monkeypatch, v, regime, eps):
    """The loss with the GPU epilogue's arithmetic is within 2x torch fp32's own error of the
    float64 loss (+ the usual 1-ulp floor), at V = 24,320 and 1,000,000."""
    x, w, b, labels = logit_case(v, regime, seed=v + len(regime))
    got = loss_with_emulated_epilogue(monkeypatch, x, w, b, labels, eps).double()
    ref = linear_bce_reference(x, w, b, labels, label_smoothing=eps).double()
    want = linear_bce_reference(x.double(), w.double(), b.double(), labels, label_smoothing=eps)
    err, ref_err = (got - want).abs().item(), (ref - want).abs().item()
    bound = 2 * ref_err + FLOOR[torch.float32] * want.abs().item()
    assert err <= bound, f"loss {want.item():.6g}: error {err:.3g} > 2 x torch's {ref_err:.3g} + floor"


@emulation_only
@pytest.mark.filterwarnings("ignore:overflow encountered in add:RuntimeWarning")  # "zero": c = inf
@pytest.mark.parametrize("logits", ["prior", "zero", "mixed"])
def test_emulated_epilogue_is_the_kernel(monkeypatch, logits):
    """The emulation above is the kernel's arithmetic: the interpreter runs the real _fwd_kernel
    with LOG_PRODUCT and BLOCK_N 128 (few tiles: it reduces the product element by element), and
    the two losses agree to fp32 rounding. "prior" tells the epilogues apart (the one with a
    rounded 1/sqrt(2) scale differs by 5e-6 relative there); "zero" takes the overflow branch
    (all 128 factors exactly 2), "mixed" tiles of both kinds."""
    x, w, b, labels = logit_case(300, "prior" if logits == "prior" else "spread", seed=5)
    if logits == "zero":
        w, b = torch.zeros_like(w), torch.zeros_like(b)
    elif logits == "mixed":
        w[::3] = 0.0  # every third column at its bias alone
    small = lbf._FwdConfig(16, 128, 16, num_warps=1, num_stages=1, LOG_PRODUCT=True)
    monkeypatch.setattr(lbf, "_pinned_config", lambda *a: small)
    with torch.no_grad():
        kernel = linear_bce(x, w, b, labels).double()
    emulated = loss_with_emulated_epilogue(monkeypatch, x, w, b, labels, 0.0).double()
    torch.testing.assert_close(kernel, emulated, rtol=2e-7, atol=0)


# --------------------------------------------------------------------------------------------
# The variants the GPU run compares (kernels/variants.py): same oracle, same bounds
# --------------------------------------------------------------------------------------------
@gpu
@needs_cuda
@pytest.mark.parametrize("regime", ["prior", "spread"])
@pytest.mark.parametrize("v", [24320, 1_000_000])
def test_loss_epilogue_precision_on_gpu(v, regime):
    """The real GPU epilogue (LOG_PRODUCT, fp32 inputs, IEEE dots) against float64 at V 24,320 and
    1e6: within 2x torch fp32's own error on the same device (+ the 1-ulp floor)."""
    x, w, b, labels = (t.cuda() for t in logit_case(v, regime, seed=v + len(regime)))
    with torch.no_grad():
        got = linear_bce(x, w, b, labels, impl="triton").double()
        ref = linear_bce_reference(x, w, b, labels).double()
        want = linear_bce_reference(x.double(), w.double(), b.double(), labels)
    err, ref_err = (got - want).abs().item(), (ref - want).abs().item()
    assert err <= 2 * ref_err + FLOOR[torch.float32] * want.abs().item(), (err, ref_err)


@pytest.mark.parametrize(
    ("b", "d", "v", "dtype", "bias", "eps", "reduction", "weights"),
    [CPU_CASES[0], CPU_CASES[2], CPU_CASES[4], CPU_CASES[5]],
)
def test_cublas_design_matches_fp64_oracle(monkeypatch, b, d, v, dtype, bias, eps, reduction, weights):
    """Design E (linear_bce(..., design="cublas")): torch's GEMM for the logits, then the Triton
    epilogue kernel; its loss comes from logits in the input dtype, like the same-dtype reference."""
    x, w, bb, labels, s = make_case(b, d, v, bias=bias, seed=b + d + v + 1, weights=weights)

    def fn(*a, **k):
        return linear_bce(*a, design="cublas", **k)

    check_against_oracle(x, w, bb, labels, dtype=dtype, reduction=reduction, eps=eps, s=s, fn=fn)


def test_cublas_design_chunks_and_no_grad(monkeypatch):
    x, w, bb, labels, s = make_case(37, 80, 1009, bias=True, seed=21, max_pos=16, weights=True)

    def fn(x, w, b, labels, *, reduction, label_smoothing, sample_weight):
        params = LinearBCEParams(reduction, label_smoothing, chunk_cols=300, design="cublas")
        return LinearBCEFunction.apply(x, w, b, labels, sample_weight, params)

    check_against_oracle(x, w, bb, labels, dtype=torch.float32, eps=0.1, s=s, fn=fn)
    with torch.no_grad():
        fused = linear_bce(
            x, w, bb, labels, label_smoothing=0.1, sample_weight=s, impl="triton", design="cublas"
        )
        torch.testing.assert_close(
            fused, linear_bce(x, w, bb, labels, label_smoothing=0.1, sample_weight=s, design="fused")
        )


def test_design_switches_are_checked(monkeypatch):
    x, w, bb, labels, _ = make_case(4, 16, 40, bias=True)
    for switch in ("design", "dx_accumulate"):
        with pytest.raises(ValueError, match=switch):
            linear_bce(x, w, bb, labels, **{switch: "fastest"})


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=[gpu, needs_cuda])])
def test_dx_accumulated_by_addmm(monkeypatch, dtype):
    """linear_bce(..., dx_accumulate="addmm") (cuBLAS accumulates dx in place; on the CPU the same
    fallback as "mm"): the same oracle bound, over several chunks."""
    x, w, bb, labels, s = make_case(37, 80, 1009, bias=True, seed=22, max_pos=16, weights=True)

    def fn(x, w, b, labels, *, reduction, label_smoothing, sample_weight):
        params = LinearBCEParams(reduction, label_smoothing, chunk_cols=256, dx_accumulate="addmm")
        return LinearBCEFunction.apply(x, w, b, labels, sample_weight, params)

    check_against_oracle(x, w, bb, labels, dtype=dtype, eps=0.1, s=s, fn=fn)
