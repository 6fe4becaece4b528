"""kernels.linear_bce against a float64 oracle, the same-dtype PyTorch reference, and itself.

Oracle: F.binary_cross_entropy_with_logits in float64 on the dense (smoothed) target, summed and
divided by B (batch_mean), B * V (mean) or 1 (sum), on the very inputs the kernel sees (rounded to
its dtype first, so only arithmetic error is measured). For the loss and each gradient, the
kernel's largest absolute error must be at most 2x that of kernels.reference.linear_bce_reference
run in the same dtype, plus a floor of FLOOR[dtype] x the largest |oracle| entry.

Precision: fp32 tests expect IEEE fp32 dots (TF32 off, PyTorch's default, which the kernel
follows); fp16 runs on the CPU; bf16 only on a GPU (the interpreter's bf16 arithmetic is wrong).
On the CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py), with large blocks;
CPU_CASES is a covering subset of the issue's shape grid (every B, D, V, both dtypes, each
reduction, with and without bias, smoothing and sample weights) and the whole grid is marked
`slow` (about 30 s on 2 cores); bf16 runs the grid on a GPU only (`gpu` marker). Every buffer is
poisoned with NaN before the kernels write it (autouse fixture), so an unwritten element shows
up as a NaN loss or gradient.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
import torch.nn.functional as F

import kernels.linear_bce_fwd as lbf
from kernels.linear_bce import LinearBCEFunction, LinearBCEParams, linear_bce
from kernels.reference import dense_targets, linear_bce_reference

# the module itself (the package attribute kernels.linear_bce is the function)
lb = importlib.import_module("kernels.linear_bce")

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


@pytest.mark.parametrize(("b", "d", "v", "dtype", "bias", "eps", "reduction", "weights"), CPU_CASES)
def test_matches_fp64_oracle(b, d, v, dtype, bias, eps, reduction, weights):
    x, w, bb, labels, s = make_case(b, d, v, bias=bias, seed=b + d + v, weights=weights)
    check_against_oracle(x, w, bb, labels, dtype=dtype, reduction=reduction, eps=eps, s=s)


def test_many_positives_fp16():
    """Up to 64 positives a row (the issue's rows "with many"), sample weights, smoothing."""
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


def test_chunk_budget_env(monkeypatch: pytest.MonkeyPatch):
    """CATLIP_LINEAR_BCE_CHUNK_MB shrinks the chunks (at least 1024 columns each): same result."""
    x, w, bb, labels, _ = make_case(37, 64, 2500, bias=True, seed=5)
    kw = {"dtype": torch.float32, "reduction": "sum", "eps": 0.0, "s": None}
    one = run(lambda *a, **k: linear_bce(*a, **k), x, w, bb, labels, **kw)
    monkeypatch.setenv(lb.CHUNK_MB_ENV, "0.001")
    assert lbf._chunk_cols(37, 2500, 4, LinearBCEParams()) == 1024
    three = run(lambda *a, **k: linear_bce(*a, **k), x, w, bb, labels, **kw)
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


@gpu
@needs_cuda
@pytest.mark.parametrize(("b", "d", "v"), GRID)
def test_shape_grid_bf16(b, d, v):
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
