"""kernels.flash_attention against float64 SDPA, on the CPU interpreter (TRITON_INTERPRET=1) or a GPU.

Oracle: the output, the log-sum-exp and dq, dk, dv of float64 SDPA on the CPU. Each kernel result
must be within 2x PyTorch's own error in the same dtype (SDPA on the same device) plus a small
floor. Outputs are poisoned with NaN before the kernels run, so an element they skip shows.

Precision expected: fp32 runs IEEE fp32 products (tl.dot input_precision="ieee", the default while
torch.get_float32_matmul_precision() is "highest"); fp16/bf16 products with fp32 accumulation.
bf16 runs on a GPU only (the interpreter's bf16 arithmetic is not exact).

Where the cases run: on the CPU (~30 s) the cross product S x D x {fp32, fp16} and every other
test in fp32 and fp16. On a GPU the time goes to compiling kernel variants (~1 s each, one per
dtype, head dim, tail width and stride alignment), so the cross product runs in fp16, bf16 gets
its own cases, the API tests run in fp16, and IEEE fp32 (FMA units, slow to compile) runs in
two cases of its own. Estimated GPU run (not yet timed): 50-80 kernel variants at ~1 s each.

`slow` marks the grids the CPU covers (the S x D cross product, other shapes, the strided views,
most of the one-launch backward's cases): perf/gpu_suite.sh runs this file with -m "not slow" on
the GPU, where every (dtype, head dim, tail, stride alignment) class is a compile, and keeps the
bf16 cases (both backwards), the ViT shapes, IEEE fp32 and the API tests. CI runs everything.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from kernels.flash_attention import (
    ATTN_IMPLS,
    attention,
    attention_qkv,
    attention_reference,
    flash_attention,
    flash_attention_qkv,
)
from kernels.flash_attention_bwd import attention_bwd
from kernels.flash_attention_fwd import attention_fwd, head_dim_split, tail_block

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# Absolute floor per dtype, in units of the oracle's largest magnitude.
FLOOR = {torch.float32: 2e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}
# fp32 where it is cheap (the interpreter), fp16 on a GPU (see the module docstring)
F32 = torch.float16 if CUDA else torch.float32
DTYPES = (torch.float16, torch.bfloat16) if CUDA else (torch.float32, torch.float16)


def _seed(*key: object) -> None:
    """Fresh inputs per case, reproducible: the seed is a hash of the case's parameters."""
    torch.manual_seed(zlib.crc32(repr(key).encode()))


def _qkv(b: int, h: int, s_q: int, s_k: int, d: int, dtype: torch.dtype, layout: str):
    """q (B, H, S_q, D), k, v (B, H, S_k, D) and dO (B, H, S_q, D) in the requested memory layout.

    "bhsd": contiguous; "qkv": views into the ViT's (B, S, 3, H, D) buffer (needs S_q == S_k);
    "bshd": (B, S, H, D) memory seen as (B, H, S, D) (what the kernel itself returns).
    """
    if layout == "qkv":
        assert s_q == s_k
        qkv = torch.randn(b, s_q, 3, h, d, device=DEVICE).to(dtype)  # (B, S, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    elif layout == "bshd":
        q = torch.randn(b, s_q, h, d, device=DEVICE).to(dtype).transpose(1, 2)
        k = torch.randn(b, s_k, h, d, device=DEVICE).to(dtype).transpose(1, 2)
        v = torch.randn(b, s_k, h, d, device=DEVICE).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(b, h, s_q, d, device=DEVICE).to(dtype)
        k = torch.randn(b, h, s_k, d, device=DEVICE).to(dtype)
        v = torch.randn(b, h, s_k, d, device=DEVICE).to(dtype)
    do = torch.randn(b, h, s_q, d, device=DEVICE).to(dtype)
    return q, k, v, do


def _sdpa_grads(q, k, v, do, scale):
    """(o, dq, dk, dv) of SDPA in q's dtype and device (float64 inputs give the oracle)."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, scale=scale)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def _oracle(q, k, v, do, scale):
    to64 = [x.detach().cpu().double() for x in (q, k, v, do)]
    out = _sdpa_grads(*to64, scale)
    lse = torch.logsumexp((to64[0] @ to64[1].transpose(-2, -1)) * scale, dim=-1)  # (B, H, S_q)
    return out, lse


def _check(
    name: str, ours: torch.Tensor, torch_same: torch.Tensor | None, oracle: torch.Tensor, dtype
) -> None:
    """max|ours - oracle| <= 2 * max|torch - oracle| + floor (NaN anywhere fails)."""
    ours = ours.detach().cpu().double()
    err = (ours - oracle).abs().max().item()
    ref_err = 0.0 if torch_same is None else (torch_same.detach().cpu().double() - oracle).abs().max().item()
    floor = FLOOR[dtype] * max(1.0, oracle.abs().max().item())
    bound = 2 * ref_err + floor
    assert not torch.isnan(ours).any(), (
        f"{name}: NaN (an unwritten element?) at {torch.isnan(ours).nonzero()[:4].tolist()}"
    )
    assert err <= bound, f"{name}: error {err:.3e} > 2 x PyTorch's {ref_err:.3e} + floor {floor:.1e}"


def _run_kernels(q, k, v, do, scale, onepass: bool = False):
    """The launchers with NaN-poisoned outputs; o and the gradients in (B, S, H, D) memory.
    onepass: the one-launch backward (kernels/flash_attention_bwd_onepass.py) instead of two."""
    b, h, s_q, d = q.shape
    s_k = k.shape[2]

    def poisoned(s):  # (B, H, S, D) view of (B, S, H, D) memory
        return torch.full((b, s, h, d), float("nan"), dtype=q.dtype, device=q.device).transpose(1, 2)

    o, lse = attention_fwd(q, k, v, scale, out=poisoned(s_q))
    dq, dk, dv = poisoned(s_q), poisoned(s_k), poisoned(s_k)
    attention_bwd(do, q, k, v, o, lse, scale, dq, dk, dv, onepass=onepass)
    return o, lse, dq, dk, dv


def _compare(q, k, v, do, scale, dtype, onepass: bool = False) -> None:
    o, lse, dq, dk, dv = _run_kernels(q, k, v, do, scale, onepass)
    (o64, dq64, dk64, dv64), lse64 = _oracle(q, k, v, do, scale)
    o_t, dq_t, dk_t, dv_t = _sdpa_grads(q, k, v, do, scale)
    _check("o", o, o_t, o64, dtype)
    _check("lse", lse, None, lse64, torch.float32)  # fp32 statistics whatever the input dtype
    _check("dq", dq, dq_t, dq64, dtype)
    _check("dk", dk, dk_t, dk64, dtype)
    _check("dv", dv, dv_t, dv64, dtype)


# --------------------------------------------------------------------------------------------------
# Block shapes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("d", "split"),
    [
        (32, (32, 0)),
        (40, (32, 16)),
        (64, (64, 0)),
        (80, (64, 16)),
        (96, (64, 32)),
        (128, (128, 0)),
        (8, (16, 0)),
        (256, (128, 128)),
    ],
)
def test_head_dim_split(d: int, split: tuple[int, int]) -> None:
    assert head_dim_split(d) == split


def test_tail_block() -> None:
    # S = 197, 257, 401, 65 with 64-blocks: one 16-, 16-, 32-, 16-wide step after the full blocks
    assert [tail_block(s, 64) for s in (197, 257, 401, 65, 128, 1)] == [16, 16, 32, 16, 0, 16]


# --------------------------------------------------------------------------------------------------
# Output, lse and gradients against float64
# --------------------------------------------------------------------------------------------------
# The whole cross product S in {1, 65, 197, 257} x D in {40, 64, 80, 128} x {fp32, fp16} (fp16
# only on a GPU), layouts rotated so each S, each D and each dtype meets all three: 32 cases,
# ~20 s on 2 CPU cores.
_LAYOUTS = ("qkv", "bhsd", "bshd")
CASES = [
    pytest.param(
        s,
        d,
        dtype,
        _LAYOUTS[(i + 2 * j + k) % 3],
        id=f"S{s}-D{d}-{str(dtype)[6:]}-{_LAYOUTS[(i + 2 * j + k) % 3]}",
    )
    for i, s in enumerate((1, 65, 197, 257))
    for j, d in enumerate((40, 64, 80, 128))
    for k, dtype in enumerate((torch.float32, torch.float16))
    if not (CUDA and dtype == torch.float32)
]


@pytest.mark.slow  # a grid the CPU covers (module docstring)
@pytest.mark.parametrize(("s", "d", "dtype", "layout"), CASES)
def test_matches_float64(s: int, d: int, dtype: torch.dtype, layout: str) -> None:
    _seed(s, d, dtype, layout)
    b, h = (1, 2) if s > 1 else (3, 2)
    q, k, v, do = _qkv(b, h, s, s, d, dtype, layout)
    _compare(q, k, v, do, 1.0 / math.sqrt(d), dtype)


@pytest.mark.slow  # a grid the CPU covers
@pytest.mark.parametrize(
    ("b", "h", "s_q", "s_k", "d", "dtype"),
    [
        (1, 1, 401, 401, 64, F32),  # a 32-wide tail step (401 = 6 * 64 + 17)
        (2, 1, 70, 33, 96, F32),  # cross-attention shapes; D = 64 + 32
        (1, 2, 17, 130, 32, torch.float16),  # S_q < one block, S_k = 2 * 64 + 2
        (1, 1, 48, 48, 8, F32),  # D < 16: one masked 16-wide part
        (37, 1, 3, 3, 40, torch.float16),  # batch 37, tiny sequence
    ],
)
def test_other_shapes(b: int, h: int, s_q: int, s_k: int, d: int, dtype: torch.dtype) -> None:
    _seed(b, h, s_q, s_k, d, dtype)
    q, k, v, do = _qkv(b, h, s_q, s_k, d, dtype, "bhsd")
    _compare(q, k, v, do, 1.0 / math.sqrt(d), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_argument(dtype: torch.dtype) -> None:
    """A large scale makes the softmax peaked (the online max matters); a small one flattens it."""
    for scale in (0.9, 0.01):
        _seed(scale, dtype)
        q, k, v, do = _qkv(1, 2, 65, 65, 64, dtype, "qkv")
        _compare(q, k, v, do, scale, dtype)


# exp2(0 - lse) = inf for keys past S_K is expected (zeroed, or in rows never stored); numpy warns
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_very_negative_scores(dtype: torch.dtype) -> None:
    """Every score near -100, so lse ~ -95: exp(0 - lse) overflows fp32 for a masked (zero) key.
    The masked tail steps must give such keys zero weight, not inf * 0 = NaN."""
    _seed("negative", dtype)
    b, h, s, d = 1, 2, 65, 64
    u = torch.nn.functional.normalize(torch.randn(d), dim=0).to(DEVICE)
    q = (-10 * u + 0.1 * torch.randn(b, h, s, d, device=DEVICE)).to(dtype)
    k = (10 * u + 0.1 * torch.randn(b, h, s, d, device=DEVICE)).to(dtype)
    v = torch.randn(b, h, s, d, device=DEVICE).to(dtype)
    do = torch.randn(b, h, s, d, device=DEVICE).to(dtype)
    _compare(q, k, v, do, 1.0, dtype)


def test_padded_head_dim_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's "triton-pad" experiment (D 80 as one masked 128-wide block) is correct too."""
    from kernels import flash_attention_fwd

    monkeypatch.setattr(flash_attention_fwd, "PAD_HEAD_DIM", True)
    assert head_dim_split(80) == (128, 0)
    _seed("pad")
    q, k, v, do = _qkv(1, 2, 65, 65, 80, F32, "qkv")
    _compare(q, k, v, do, 80**-0.5, F32)


def test_autotune_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """CATLIP_AUTOTUNE=1's launch path, with the search space cut to one config (several need a
    GPU to time them)."""
    from kernels import flash_attention_bwd, flash_attention_fwd

    monkeypatch.setenv("CATLIP_AUTOTUNE", "1")
    for tuned in (
        flash_attention_fwd._attn_fwd_tuned,
        flash_attention_bwd._bwd_dq_tuned,
        flash_attention_bwd._bwd_dkdv_tuned,
    ):
        monkeypatch.setattr(tuned, "configs", tuned.configs[-1:])  # not the pinned one (the first)
    _seed("autotune")
    q, k, v, do = _qkv(1, 2, 65, 65, 80, F32, "qkv")
    _compare(q, k, v, do, 80**-0.5, F32)


# --------------------------------------------------------------------------------------------------
# The autograd Functions and the dispatcher
# --------------------------------------------------------------------------------------------------
def test_autograd_function_and_alias() -> None:
    _seed("alias")
    q, k, v, do = _qkv(2, 2, 65, 65, 80, F32, "qkv")
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = flash_attention(q, k, v)
    assert o.shape == q.shape and o.transpose(1, 2).is_contiguous()  # (B, S, H, D) memory
    o.backward(do)
    (o64, dq64, dk64, dv64), _ = _oracle(q, k, v, do, 1 / math.sqrt(80))
    o_t, dq_t, dk_t, dv_t = _sdpa_grads(q, k, v, do, 1 / math.sqrt(80))
    for name, ours, same, ref in (
        ("o", o, o_t, o64),
        ("dq", q.grad, dq_t, dq64),
        ("dk", k.grad, dk_t, dk64),
        ("dv", v.grad, dv_t, dv64),
    ):
        _check(name, ours, same, ref, F32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_qkv_function(dtype: torch.dtype) -> None:
    """qkv (B, S, 3, H, D) in, (B, S, H, D) out; d(qkv) is one buffer, every element written."""
    _seed("packed", dtype)
    b, s, h, d = 2, 65, 2, 80
    qkv = torch.randn(b, s, 3, h, d, device=DEVICE).to(dtype).requires_grad_()
    dout = torch.randn(b, s, h, d, device=DEVICE).to(dtype)
    out = flash_attention_qkv(qkv)
    assert out.shape == (b, s, h, d) and out.is_contiguous()
    out.backward(dout)
    q, k, v = qkv.detach().permute(2, 0, 3, 1, 4).unbind(0)
    do = dout.transpose(1, 2)
    (o64, dq64, dk64, dv64), _ = _oracle(q, k, v, do, 1 / math.sqrt(d))
    o_t, dq_t, dk_t, dv_t = _sdpa_grads(q, k, v, do, 1 / math.sqrt(d))
    dq, dk, dv = qkv.grad.permute(2, 0, 3, 1, 4).unbind(0)
    _check("o", out.transpose(1, 2), o_t, o64, dtype)
    _check("dq", dq, dq_t, dq64, dtype)
    _check("dk", dk, dk_t, dk64, dtype)
    _check("dv", dv, dv_t, dv64, dtype)


def test_packed_backward_writes_every_element() -> None:
    """FlashAttentionQKV's backward path: the three gradient views of one NaN-filled buffer."""
    _seed("packed-poison")
    b, s, h, d = 1, 33, 3, 40
    qkv = torch.randn(b, s, 3, h, d, device=DEVICE).to(F32)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = torch.full((b, s, h, d), float("nan"), device=DEVICE, dtype=F32)
    o, lse = attention_fwd(q, k, v, d**-0.5, out=out.transpose(1, 2))
    dqkv = torch.full_like(qkv, float("nan"))
    dq, dk, dv = dqkv.permute(2, 0, 3, 1, 4).unbind(0)
    attention_bwd(torch.randn_like(o), q, k, v, o, lse, d**-0.5, dq, dk, dv)
    assert not out.isnan().any() and not dqkv.isnan().any()


def test_backward_is_deterministic() -> None:
    _seed("determinism")
    q, k, v, do = _qkv(1, 2, 65, 65, 64, torch.float16, "qkv")
    first = _run_kernels(q, k, v, do, 0.125)
    second = _run_kernels(q, k, v, do, 0.125)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_impls_agree_on_packed_qkv() -> None:
    """The model's switch: triton, sdpa and math give the same output and d(qkv)."""
    _seed("impls")
    qkv0 = torch.randn(2, 65, 3, 2, 64, device=DEVICE).to(F32)
    dout = torch.randn(2, 65, 2, 64, device=DEVICE).to(F32)
    tol = 1e-5 if F32 == torch.float32 else 2e-3
    results = {}
    for impl in ATTN_IMPLS:
        qkv = qkv0.clone().requires_grad_()
        out = attention_qkv(qkv, impl=impl)
        out.backward(dout)
        results[impl] = (out.detach(), qkv.grad)
    for impl in ("sdpa", "math"):
        for ours, theirs in zip(results["triton"], results[impl], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


def test_dispatcher_and_reference() -> None:
    _seed("dispatch")
    q, k, v, _ = _qkv(1, 2, 20, 20, 64, F32, "bhsd")
    ref = attention_reference(q.double(), k.double(), v.double(), 0.3)
    tol = 1e-5 if F32 == torch.float32 else 2e-3
    for impl in ATTN_IMPLS:
        torch.testing.assert_close(attention(q, k, v, scale=0.3, impl=impl).double(), ref, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="impl must be one of"):
        attention(q, k, v, impl="flash")


def test_input_errors() -> None:
    q = torch.randn(1, 2, 8, 64, device=DEVICE)
    with pytest.raises(TypeError, match="one dtype"):
        flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match=r"\(B, H, S_k, D\)"):
        flash_attention(q, q[:, :1], q[:, :1])
    with pytest.raises(ValueError, match=r"\(B, S, 3, H, D\)"):
        flash_attention_qkv(q)
    wide = torch.randn(1, 1, 8, 160, device=DEVICE)  # 128 + 32: not offered (the dK/dV kernel spills)
    with pytest.raises(ValueError, match=r"head dim must be in \[1, 128\]"):
        flash_attention(wide, wide, wide)


def test_non_contiguous_last_dim_is_copied() -> None:
    _seed("strided-d")
    q, k, v, do = _qkv(1, 2, 30, 30, 64, F32, "bhsd")
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)  # same values, stride(-1) != 1
    _compare(qt, k, v, do, 0.125, F32)


# --------------------------------------------------------------------------------------------------
# GPU: bf16, and fp16 at the benchmark's shapes
# --------------------------------------------------------------------------------------------------
@gpu
@needs_cuda
@pytest.mark.parametrize(
    ("s", "d", "layout"),
    [
        (1, 64, "qkv"),
        (65, 40, "bhsd"),
        (197, 64, "qkv"),
        (257, 80, "qkv"),
        (401, 80, "bshd"),
        (197, 128, "qkv"),
    ],
)
@pytest.mark.parametrize("onepass", [False, True], ids=["split-bwd", "onepass-bwd"])
def test_bf16_matches_float64(s: int, d: int, layout: str, onepass: bool) -> None:
    if onepass and d not in (64,):
        pytest.skip("the one-launch backward takes D 16, 32, 64")
    _seed(s, d, "bf16", layout)
    q, k, v, do = _qkv(2, 3, s, s, d, torch.bfloat16, layout)
    _compare(q, k, v, do, 1.0 / math.sqrt(d), torch.bfloat16, onepass=onepass)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("b", "h", "s", "d"), [(8, 12, 197, 64), (4, 16, 257, 80)])
def test_vit_shapes_on_gpu(b: int, h: int, s: int, d: int, dtype: torch.dtype) -> None:
    _seed(b, h, s, d, dtype)
    q, k, v, do = _qkv(b, h, s, s, d, dtype, "qkv")
    _compare(q, k, v, do, 1.0 / math.sqrt(d), dtype)


@gpu
@needs_cuda
@pytest.mark.parametrize(("s", "d", "layout"), [(197, 64, "qkv"), (65, 80, "bhsd")])
def test_ieee_fp32_on_gpu(s: int, d: int, layout: str) -> None:
    """fp32 at "highest" precision: IEEE products on the FMA units (small pinned tiles)."""
    assert torch.get_float32_matmul_precision() == "highest"
    _seed(s, d, "fp32-gpu", layout)
    q, k, v, do = _qkv(2, 3, s, s, d, torch.float32, layout)
    _compare(q, k, v, do, 1.0 / math.sqrt(d), torch.float32)


# --------------------------------------------------------------------------------------------------
# Strides and offsets of every input, through every entry point
# --------------------------------------------------------------------------------------------------
def _view(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t's values in another memory layout; gaps hold values that change the result if read."""
    if kind == "heads-outer":  # (B, H, S, D) stored as (S, B, H, D): batch and head strides apart
        return t.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    if kind == "rows-sliced":  # every other row of a buffer twice as long (stride 2 * D along S)
        buf = torch.full((*t.shape[:2], 2 * t.shape[2], t.shape[3]), 9.0, dtype=t.dtype, device=t.device)
        buf[:, :, ::2] = t
        return buf[:, :, ::2]
    if kind == "cols-sliced":  # stride 2 along D: the launchers copy it (the kernels need stride 1)
        buf = torch.full((*t.shape[:3], 2 * t.shape[3]), 9.0, dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        return buf[..., ::2]
    if kind == "offset":  # storage offset 5
        buf = torch.full((t.numel() + 5,), 9.0, dtype=t.dtype, device=t.device)
        buf[5:] = t.reshape(-1)
        return buf[5:].view(t.shape)
    if kind == "batch-expanded":  # one batch element broadcast (stride 0)
        return t[:1].expand_as(t)
    raise ValueError(kind)


_ATTN_VIEWS = [(name, kind) for name in ("q", "k", "v", "do") for kind in
               ("heads-outer", "rows-sliced", "cols-sliced", "offset", "batch-expanded")]  # fmt: skip


@pytest.mark.slow  # a grid the CPU covers; on a GPU each layout is a compile
@pytest.mark.parametrize(("name", "kind"), _ATTN_VIEWS, ids=[f"{n}-{k}" for n, k in _ATTN_VIEWS])
def test_flash_attention_honours_strides(name: str, kind: str) -> None:
    """flash_attention (forward and backward through autograd) on a strided or offset view of
    one input (dO: the incoming gradient) equals the float64 oracle on the same values."""
    _seed("views", name, kind)
    t = dict(zip(("q", "k", "v", "do"), _qkv(2, 2, 33, 33, 40, F32, "bhsd"), strict=True))
    if kind == "batch-expanded":
        t[name] = t[name][:1].expand_as(t[name]).contiguous()
    ref = {k: x.clone() for k, x in t.items()}
    t[name] = _view(t[name], kind)
    q, k, v = (t[n].detach().requires_grad_() for n in ("q", "k", "v"))
    o = flash_attention(q, k, v)
    o.backward(t["do"])
    (o64, dq64, dk64, dv64), _ = _oracle(*(ref[n] for n in ("q", "k", "v", "do")), 40**-0.5)
    o_t, dq_t, dk_t, dv_t = _sdpa_grads(*(ref[n] for n in ("q", "k", "v", "do")), 40**-0.5)
    for label, ours, same, want in (("o", o, o_t, o64), ("dq", q.grad, dq_t, dq64),
                                    ("dk", k.grad, dk_t, dk64), ("dv", v.grad, dv_t, dv64)):  # fmt: skip
        _check(f"{name} {kind}: {label}", ours, same, want, F32)


@pytest.mark.parametrize("kind", ["seq-sliced", "offset", "qkv-outer", "dout-sliced"])
def test_packed_qkv_honours_strides(kind: str) -> None:
    """flash_attention_qkv on a (B, S, 3, H, D) view that is not contiguous, or with a strided
    incoming gradient: the output and d(qkv) equal the oracle's."""
    _seed("packed-views", kind)
    b, s, h, d = 2, 33, 2, 40
    qkv0 = torch.randn(b, s, 3, h, d, device=DEVICE).to(F32)
    dout = torch.randn(b, s, h, d, device=DEVICE).to(F32)
    qkv = qkv0
    if kind == "seq-sliced":
        buf = torch.full((b, 2 * s, 3, h, d), 9.0, device=DEVICE, dtype=F32)
        buf[:, ::2] = qkv0
        qkv = buf[:, ::2]
    elif kind == "offset":
        buf = torch.full((qkv0.numel() + 7,), 9.0, device=DEVICE, dtype=F32)
        buf[7:] = qkv0.reshape(-1)
        qkv = buf[7:].view(qkv0.shape)
    elif kind == "qkv-outer":  # stored as (3, B, S, H, D), seen as (B, S, 3, H, D)
        qkv = qkv0.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    else:
        buf = torch.full((b, s, h, 2 * d), 9.0, device=DEVICE, dtype=F32)
        buf[..., ::2] = dout
        dout = buf[..., ::2]
    qkv = qkv.detach().requires_grad_()
    out = flash_attention_qkv(qkv)
    out.backward(dout)
    q, k, v = qkv0.permute(2, 0, 3, 1, 4).unbind(0)
    do = dout.contiguous().transpose(1, 2)
    (o64, dq64, dk64, dv64), _ = _oracle(q, k, v, do, d**-0.5)
    o_t, dq_t, dk_t, dv_t = _sdpa_grads(q, k, v, do, d**-0.5)
    dq, dk, dv = qkv.grad.permute(2, 0, 3, 1, 4).unbind(0)
    for label, ours, same, want in (("o", out.transpose(1, 2), o_t, o64), ("dq", dq, dq_t, dq64),
                                    ("dk", dk, dk_t, dk64), ("dv", dv, dv_t, dv64)):  # fmt: skip
        _check(f"{kind}: {label}", ours, same, want, F32)


# A child process: before int64 row offsets such views made the interpreter read outside the
# storage (a crash). Each lies in a lazily allocated 4 GiB buffer of which only a few pages are used.
_LARGE_STRIDE_CHILD = r"""
import sys
import torch
from kernels.flash_attention import flash_attention, flash_attention_qkv

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU: the compiled kernels, ~4 GB each
torch.manual_seed(0)
b, h, s, d = 1, 2, 9, 16
row = 2**28  # rows 2**28 elements apart: row 8 at 2**31, past int32 offsets


def lazily(shape, stride, values):
    n = sum((size - 1) * st for size, st in zip(shape, stride)) + 1
    view = torch.empty(n, dtype=values.dtype, device=DEV).as_strided(shape, stride)
    view.copy_(values)
    return view


def run(fn, *inputs, grad):
    xs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*xs)
    out.backward(grad)
    return [out.detach(), *(x.grad for x in xs)]


q, k, v = (torch.randn(b, h, s, d).half().to(DEV) for _ in range(3))
do = torch.randn(b, h, s, d).half().to(DEV)
qkv = torch.randn(b, s, 3, h, d).half().to(DEV)
dout = torch.randn(b, s, h, d).half().to(DEV)
failed = 0
for name in ("q", "k", "v"):
    inputs = {"q": q, "k": k, "v": v}
    inputs[name] = lazily((b, h, s, d), (h * d, d, row, 1), inputs[name])
    got = run(flash_attention, *inputs.values(), grad=do)
    ok = all(torch.equal(a, c) for a, c in zip(got, run(flash_attention, q, k, v, grad=do)))
    print(("ok      " if ok else "WRONG   ") + f"flash_attention, {name} rows 2**28 apart", flush=True)
    failed += not ok
big = lazily((b, s, 3, h, d), (3 * h * d, row, h * d, d, 1), qkv)
ok = all(torch.equal(a, c) for a, c in zip(run(flash_attention_qkv, big, grad=dout),
                                           run(flash_attention_qkv, qkv, grad=dout)))
print(("ok      " if ok else "WRONG   ") + "flash_attention_qkv, rows 2**28 apart", flush=True)
sys.exit(1 if failed or not ok else 0)
"""


def test_int64_offsets_for_large_strides() -> None:
    """Sequence strides whose offsets pass 2**31 elements (a (B, H, S, D) view of a huge
    activation): the kernels must address rows in int64 and give the bits of a contiguous copy."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", _LARGE_STRIDE_CHILD],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (
        f"child exited with {res.returncode} (negative: killed by a signal):\n{res.stdout}{res.stderr[-2000:]}"
    )


# --------------------------------------------------------------------------------------------------
# The one-launch backward (bwd="onepass", kernels/variants.py): same oracle, same bounds
# --------------------------------------------------------------------------------------------------
_slow = pytest.mark.slow
_ONEPASS_CASES = [
    # (B, H, S_q, S_k, D, dtype, layout): ViT lengths, its head dims (D <= 64), tails on both axes
    (1, 2, 197, 197, 64, torch.float16, "qkv"),  # ViT-B/16
    (1, 2, 257, 257, 64, F32, "bshd"),  # corenet's H/16 at 256 px
    pytest.param(2, 1, 65, 65, 32, F32, "bhsd", marks=_slow),
    pytest.param(1, 1, 129, 129, 16, torch.float16, "qkv", marks=_slow),
    pytest.param(2, 1, 70, 33, 64, F32, "bhsd", marks=_slow),  # cross-attention: S_q != S_k
    pytest.param(3, 2, 1, 1, 64, F32, "bhsd", marks=_slow),
    pytest.param(1, 1, 48, 48, 8, torch.float16, "bhsd", marks=_slow),  # D < 16
    (1, 1, 401, 401, 64, F32, "bhsd"),  # multi-scale: 20 x 20 patches + class token
]


@pytest.mark.parametrize(("b", "h", "s_q", "s_k", "d", "dtype", "layout"), _ONEPASS_CASES)
def test_onepass_backward_matches_float64(b, h, s_q, s_k, d, dtype, layout) -> None:
    _seed("onepass", b, h, s_q, s_k, d, dtype, layout)
    q, k, v, do = _qkv(b, h, s_q, s_k, d, dtype, layout)
    _compare(q, k, v, do, 1.0 / math.sqrt(d), dtype, onepass=True)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
def test_onepass_very_negative_scores_and_determinism() -> None:
    """Masked keys with exp(0 - lse) = inf must not reach dQ; two runs give the same bits."""
    _seed("onepass-negative")
    b, h, s, d = 1, 2, 65, 64
    u = torch.nn.functional.normalize(torch.randn(d), dim=0).to(DEVICE)
    q = (-10 * u + 0.1 * torch.randn(b, h, s, d, device=DEVICE)).to(F32)
    k = (10 * u + 0.1 * torch.randn(b, h, s, d, device=DEVICE)).to(F32)
    v, do = torch.randn(b, h, s, d, device=DEVICE).to(F32), torch.randn(b, h, s, d, device=DEVICE).to(F32)
    _compare(q, k, v, do, 1.0, F32, onepass=True)
    first, second = _run_kernels(q, k, v, do, 1.0, True), _run_kernels(q, k, v, do, 1.0, True)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)


def test_onepass_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """bwd="onepass" routes the autograd Functions to it (S <= 512; longer: split)."""
    from kernels import flash_attention_bwd_onepass as onepass

    calls = []
    real = onepass.attention_bwd_onepass
    monkeypatch.setattr(onepass, "attention_bwd_onepass", lambda *a: calls.append(1) or real(*a))
    _seed("onepass-switch")
    qkv = torch.randn(1, 33, 3, 2, 32, device=DEVICE).to(F32).requires_grad_()
    flash_attention_qkv(qkv, bwd="onepass").sum().backward()
    q, k, v = (t.detach().requires_grad_() for t in qkv.detach().permute(2, 0, 3, 1, 4).unbind(0))
    flash_attention(q, k, v, bwd="onepass").sum().backward()
    assert len(calls) == 2
    monkeypatch.setattr(onepass, "DQ_ONEPASS_MAX_S", 16)  # too long now: the split backward
    flash_attention(q, k, v, bwd="onepass").sum().backward()
    assert len(calls) == 2
    monkeypatch.setattr(onepass, "DQ_ONEPASS_MAX_S", 512)
    for d in (80, 40):  # a split head dim: the two-launch backward
        qkv_d = torch.randn(1, 17, 3, 1, d, device=DEVICE).to(F32).requires_grad_()
        flash_attention_qkv(qkv_d, bwd="onepass").sum().backward()
        assert len(calls) == 2 and torch.isfinite(qkv_d.grad).all()
    with pytest.raises(ValueError, match="D <= 64"):
        onepass.attention_bwd_onepass(*(torch.zeros(1, 1, 4, 80, device=DEVICE),) * 5, torch.zeros(1, 1, 4),
                                      1.0, *(torch.zeros(1, 1, 4, 80, device=DEVICE),) * 3)  # fmt: skip
    with pytest.raises(ValueError, match="bwd"):
        flash_attention(q, k, v, bwd="fused")
