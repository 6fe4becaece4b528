"""Fused multi-head attention for ViT shapes (non-causal, no dropout): softmax(scale * Q K^T) V.

The op in four layers, top to bottom:
  * kernels/flash_attention_fwd.py: the forward kernel (FA2 online softmax, fp32 statistics,
    log-sum-exp saved), its launcher, and the block shapes shared with the backward;
  * kernels/flash_attention_bwd.py: the backward (a dQ kernel that also computes Delta, then a
    dK/dV kernel; deterministic, no atomics);
  * this file: the autograd Functions, the public aliases and the `impl` dispatcher
    (`attention`, `attention_qkv`: "triton" | "sdpa" | "math", with a `causal` flag), which the
    model calls. It imports Triton only when impl="triton" runs, so a model on "sdpa" or "math"
    never loads it (`import catlip.models` stays free of Triton);
  * `kernels.reference.attention_reference`: the plain-PyTorch math ("math") that the model's
    math path, every test and every benchmark share.

Layouts (no copies for the ViT):
  * `flash_attention(q, k, v)`: q (B, H, S_q, D), k and v (B, H, S_k, D) with any strides whose
    last is 1 (e.g. `qkv.permute(2, 0, 3, 1, 4).unbind(0)` of a (B, S, 3, H, D) buffer); returns
    (B, H, S_q, D) whose memory is (B, S_q, H, D), so `out.transpose(1, 2).reshape(B, S, H * D)`
    is a view. Gradients come back in the same (B, S, H, D) memory layout.
  * `flash_attention_qkv(qkv)`: the packed (B, S, 3, H, D) tensor as one autograd input and
    (B, S, H, D) out. Its backward writes dq, dk, dv straight into one (B, S, 3, H, D) buffer,
    which saves the stack + copy that autograd does for `unbind` of three separate gradients.

FLOPs (counted the usual way, for TFLOP/s): forward 4 * B * H * S_q * S_k * D, backward 2.5x that
(the kernels do 3.5x: dQ and dK/dV recompute the scores in separate kernels, see the backward's
docstring). Limits: fp16, bf16, fp32; D <= 128 (MAX_HEAD_DIM); any S >= 1; CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1 (tests). `impl="sdpa"` and `impl="math"` run anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.reference import attention_reference, resolve_scale
from kernels.variants import autotune_on, check, variant

ATTN_IMPLS = ("triton", "sdpa", "math")
# Which Triton backward: "split" (two launches, kernels/flash_attention_bwd.py) or "onepass" (one
# program per (batch, head), kernels/flash_attention_bwd_onepass.py, S_q <= 512 and D <= 64; other
# shapes fall back to "split"). The keyword `bwd` of flash_attention / flash_attention_qkv; the GPU
# benchmark compares both (kernels/variants.py).
BWD_VARIANTS = variant("flash_attention", "bwd").choices  # ("split", "onepass")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# 129-256 (two 128-wide parts) spilled registers in the dK/dV kernel in every tile compiled for sm_90a
# and sm_80, Triton 3.6 and 3.8 (perf/results/compiled_kernels.csv): not offered. ViTs use 64 or 80.
MAX_HEAD_DIM = 128


@dataclass(frozen=True)
class AttentionParams:
    """Non-tensor arguments of the autograd Functions.

    scale: multiplies Q K^T (1 / sqrt(D) by default). bwd: one of BWD_VARIANTS (kernels/variants.py).
    autotune: search the launch configs on a GPU (None: the CATLIP_AUTOTUNE=1 switch).
    """

    scale: float
    bwd: str = "split"
    autotune: bool | None = None

    def __post_init__(self) -> None:
        check("flash_attention", "bwd", self.bwd)


def _params(scale: float | None, head_dim: int, bwd: str, autotune: bool | None) -> AttentionParams:
    return AttentionParams(resolve_scale(scale, head_dim), bwd, autotune_on(autotune))


def _onepass(params: AttentionParams, s_q: int, d: int) -> bool:
    if params.bwd != "onepass":
        return False
    from kernels.flash_attention_bwd_onepass import onepass_supported

    return onepass_supported(s_q, d)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, S, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, _, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(
            f"k and v must be (B, H, S_k, D) with q's B, H, D; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        raise TypeError(f"q, k, v must share one dtype of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(
            f"head dim must be in [1, {MAX_HEAD_DIM}] for impl='triton', got {d}; use impl='sdpa' or 'math'"
        )
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
            "use impl='sdpa' or impl='math' on the CPU"
        )


class FlashAttention(torch.autograd.Function):
    """q, k, v (B, H, S, D) -> o (B, H, S_q, D) with (B, S_q, H, D) memory."""

    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AttentionParams
    ) -> torch.Tensor:
        from kernels.flash_attention_fwd import attention_fwd  # Triton, on first use

        o, lse = attention_fwd(q, k, v, params.scale, autotune=params.autotune)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.params = params
        return o

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        from kernels.flash_attention_bwd import attention_bwd
        from kernels.flash_attention_fwd import empty_bshd

        q, k, v, o, lse = ctx.saved_tensors
        b, h, s_q, d = q.shape
        s_k = k.shape[2]
        dq = empty_bshd(b, h, s_q, d, q)
        dk = empty_bshd(b, h, s_k, d, k)
        dv = empty_bshd(b, h, s_k, d, v)
        p = ctx.params
        attention_bwd(
            do, q, k, v, o, lse, p.scale, dq, dk, dv, onepass=_onepass(p, s_q, d), autotune=p.autotune
        )
        return dq, dk, dv, None


def _unpack(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, 3, H, D) -> three (B, H, S, D) views."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class FlashAttentionQKV(torch.autograd.Function):
    """qkv (B, S, 3, H, D) -> o (B, S, H, D); d(qkv) written by the kernels into one buffer."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, params: AttentionParams) -> torch.Tensor:
        from kernels.flash_attention_fwd import attention_fwd

        b, s, _, h, d = qkv.shape
        out = torch.empty(b, s, h, d, dtype=qkv.dtype, device=qkv.device)  # (B, S, H, D)
        q, k, v = _unpack(qkv)
        _, lse = attention_fwd(q, k, v, params.scale, out=out.transpose(1, 2), autotune=params.autotune)
        ctx.save_for_backward(qkv, out, lse)
        ctx.params = params
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        from kernels.flash_attention_bwd import attention_bwd

        qkv, out, lse = ctx.saved_tensors
        dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)  # (B, S, 3, H, D)
        q, k, v = _unpack(qkv)
        dq, dk, dv = _unpack(dqkv)
        p = ctx.params
        attention_bwd(
            dout.transpose(1, 2), q, k, v, out.transpose(1, 2), lse, p.scale, dq, dk, dv,
            onepass=_onepass(p, qkv.shape[1], qkv.shape[-1]), autotune=p.autotune,
        )  # fmt: skip
        return dqkv, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    bwd: str = "split",
    autotune: bool | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T) v with the Triton kernels; q (B, H, S_q, D), k, v (B, H, S_k, D).
    bwd: "split" | "onepass", the backward's variant (kernels/variants.py); autotune: search the
    launch configs on a GPU (None: the CATLIP_AUTOTUNE=1 switch, read at this call)."""
    _check(q, k, v)
    return FlashAttention.apply(q, k, v, _params(scale, q.shape[-1], bwd, autotune))


def flash_attention_qkv(
    qkv: torch.Tensor, scale: float | None = None, *, bwd: str = "split", autotune: bool | None = None
) -> torch.Tensor:
    """Packed self-attention: qkv (B, S, 3, H, D) -> (B, S, H, D), Triton kernels; bwd and
    autotune as flash_attention's."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (B, S, 3, H, D), got shape {tuple(qkv.shape)}")
    _check(*_unpack(qkv))
    return FlashAttentionQKV.apply(qkv, _params(scale, qkv.shape[-1], bwd, autotune))


# --------------------------------------------------------------------------------------------------
# The dispatcher: one switch for the model, the tests and the benchmarks
# --------------------------------------------------------------------------------------------------
def _check_impl(impl: str, causal: bool) -> None:
    if impl not in ATTN_IMPLS:
        raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {impl!r}")
    if causal and impl == "triton":
        raise ValueError(
            "the Triton attention kernel is non-causal; use impl='sdpa' or 'math' for causal attention"
        )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    impl: str = "triton",
) -> torch.Tensor:
    """(B, H, S_q, D) attention through `impl`: "triton" (this op, non-causal), "sdpa" (PyTorch's
    fused backends), "math" (kernels.reference.attention_reference). ``causal``: query i sees keys
    <= i (top-left aligned, as SDPA's is_causal)."""
    _check_impl(impl, causal)
    if impl == "triton":
        return flash_attention(q, k, v, scale)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return attention_reference(q, k, v, scale, causal=causal)


def attention_qkv(
    qkv: torch.Tensor, *, causal: bool = False, scale: float | None = None, impl: str = "triton"
) -> torch.Tensor:
    """Packed self-attention: qkv (B, S, 3, H, D) -> (B, S, H, D) through `impl` (as `attention`).

    With impl="triton" nothing is copied in either direction; "sdpa" and "math" permute to
    (B, H, S, D) views and transpose back (the model's reshape to (B, S, H * D) then copies).
    """
    _check_impl(impl, causal)
    if impl == "triton":
        return flash_attention_qkv(qkv, scale)
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (B, S, 3, H, D), got shape {tuple(qkv.shape)}")
    q, k, v = _unpack(qkv)
    return attention(q, k, v, causal=causal, scale=scale, impl=impl).transpose(1, 2)


__all__ = [
    "ATTN_IMPLS",
    "AttentionParams",
    "FlashAttention",
    "FlashAttentionQKV",
    "attention",
    "attention_qkv",
    "attention_reference",
    "flash_attention",
    "flash_attention_qkv",
]
