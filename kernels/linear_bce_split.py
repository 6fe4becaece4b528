"""linear_bce, design E: the logits GEMM on cuBLAS, then a Triton epilogue kernel over them.

The alternative to kernels/linear_bce_fwd.py's fused GEMM + epilogue that the first GPU run
settles (kernels/variants.py; perf/notes_linear_bce.md, "Designs considered", row E). Per chunk
of Vc columns:

  1. cuBLAS: z = b_c + x W_c^T into the chunk's (B, Vc) buffer, in the input dtype (torch.addmm);
  2. `_epilogue_kernel` (Triton): reads z, writes the tile's softplus row sums (per-tile
     partials, as the fused kernel does), overwrites z with dz = s (sigmoid(z) - eps/2) in place,
     and the tile's column sums of dz for db;
  3. as in the fused design: the positives' scatter, then dx += dz W_c and dW_c = dz^T x on cuBLAS.

What it trades: cuBLAS's GEMM (its tile shapes and TMA pipelines, tuned for H100/H200) against
the fused kernel's Triton GEMM, for one more round trip of the logits through HBM: z written and
read back (4 B V bytes in bf16, ~8% of the three GEMMs' time at B 8192, D 1280, V 24,320 by the
notes' model), and no epilogue hidden under a GEMM main loop. Numerics: the loss comes from z
rounded to the input dtype (bf16: about 3 significant digits a logit, as eager PyTorch), where
the fused kernel keeps fp32 logits; the gradients see the same bf16 dz in both. Selected by
linear_bce(..., design="cublas") (LinearBCEParams.design) or the benchmark's
"triton-cublas" provider.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.linear_bce_softplus import _log1p_row_sum, _sigmoid_parts


@triton.heuristics(
    {
        "HAS_WEIGHT": lambda a: a["s_ptr"] is not None,
        "HAS_SMOOTHING": lambda a: a["eps"] != 0.0,
        "WRITE_DB": lambda a: a["db_part_ptr"] is not None,
    }
)
@triton.jit
def _epilogue_kernel(
    z_ptr,  # (B, N) view, row stride stride_z: z in, dz out (in place) when WRITE_GRAD
    s_ptr,  # (B,) fp32 sample weights or None
    row_part_ptr,  # (>= cdiv(N, BLOCK_N), B) per-tile row sums of softplus(z) - (eps/2) z
    db_part_ptr,  # (>= cdiv(B, BLOCK_M), N) per-tile column sums of dz, or None
    B,
    N,
    stride_z,
    stride_dbp,
    eps,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LOG_PRODUCT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_DB: tl.constexpr,
):
    pid_n = tl.program_id(0)  # column tiles fastest: neighbours read neighbouring z
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < B
    mask_n = rn < N
    ptrs = z_ptr + rm.to(tl.int64)[:, None] * stride_z + rn[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    z = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
    e, u, r, sigmoid = _sigmoid_parts(z)
    term = tl.maximum(z, 0.0)
    if HAS_SMOOTHING:
        term -= (0.5 * eps) * z
    row = tl.sum(tl.where(mask_n[None, :], term, 0.0), axis=1)
    row += _log1p_row_sum(e, u, r, mask_n, BLOCK_N, LOG_PRODUCT)
    tl.store(row_part_ptr + pid_n * B + rm, row, mask=mask_m)
    if WRITE_GRAD:
        if HAS_WEIGHT:
            s = tl.where(mask_m, tl.load(s_ptr + rm, mask=mask_m, other=0.0).to(ACC), 0.0)
        else:
            s = tl.where(mask_m, 1.0, 0.0).to(ACC)
        g = sigmoid
        if HAS_SMOOTHING:
            g -= 0.5 * eps
        g = (g * s[:, None]).to(z_ptr.dtype.element_ty)
        tl.store(ptrs, g, mask=mask)
        if WRITE_DB:  # rows past B have s = 0, so they add nothing to the column sums
            tl.store(db_part_ptr + pid_m * stride_dbp + rn, tl.sum(g.to(ACC), axis=0), mask=mask_n)


def cublas_logits_then_epilogue(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    s: torch.Tensor | None,
    z: torch.Tensor,
    row_part: torch.Tensor,
    db_part: torch.Tensor | None,
    eps: float,
    write_grad: bool,
    *,
    acc_tl,
    block_m: int,
    block_n: int,
    log_product: bool,
) -> None:
    """One chunk: z (B, n) view <- b + x w^T (cuBLAS), then the epilogue kernel over it."""
    if b is None:
        torch.mm(x, w.t(), out=z)
    else:
        torch.addmm(b, x, w.t(), out=z)
    bsz, n = z.shape
    grid = (triton.cdiv(n, block_n), triton.cdiv(bsz, block_m))
    _epilogue_kernel[grid](
        z, s, row_part, db_part, bsz, n, z.stride(0), 0 if db_part is None else db_part.stride(0), eps,
        ACC=acc_tl, BLOCK_M=block_m, BLOCK_N=block_n, LOG_PRODUCT=log_product, WRITE_GRAD=write_grad,
        num_warps=4,
    )  # fmt: skip
