"""linear_bce's softplus and sigmoid arithmetic, the `@triton.jit` helpers both epilogues share.

kernels/linear_bce_fwd.py's fused GEMM + epilogue and kernels/linear_bce_split.py's epilogue over
cuBLAS logits compute the same per-logit terms from the same fp32 z: one exp and one division give
sigmoid(z) and the parts of softplus(z) = max(z, 0) + log1p(exp(-|z|)), and the log1p terms of a
tile's row are summed in one place, so the two designs differ only in where z comes from.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid_parts(z):
    """e = exp(-|z|) in (0, 1], u = 1 + e (rounded), r = 1 / u and sigmoid(z): one exp, one division."""
    e = tl.exp(-tl.abs(z))
    u = 1.0 + e
    r = 1.0 / u
    return e, u, r, tl.where(z >= 0, r, e * r)


@triton.jit
def _excess_product(a, b):
    """(1 + a)(1 + b) - 1: a product of factors 1 + e, carried as its excess over 1."""
    return a + b + a * b


@triton.jit
def _log1p_row_sum(e, u, r, col_ok, BLOCK_N: tl.constexpr, LOG_PRODUCT: tl.constexpr):
    """sum_j log1p(e_ij) over the valid columns of the tile, for e = exp(-|z|) in [0, 1].

    softplus(z) = max(z, 0) + log1p(e), and libdevice's accurate logf is ~30 instructions (the
    rest of the epilogue is ~20). With LOG_PRODUCT the factors 1 + e of a row are multiplied first
    (a reduction, like the sum) and one log is taken per row of the tile. The product is carried
    as its excess over 1, c = prod(1 + e) - 1 (combine a + b + ab), so every rounding is relative
    to c itself and the result is as exact as a sum of per-element log1p (perf/notes_linear_bce.md,
    "Loss epilogue", has the error analysis). Two ways that lose precision, measured there: a
    product of the rounded factors 1 + e (drops e's low bits: ~4e-7 of random error per tile,
    30-300x torch's fp32 error at the bias prior), and scaling the factors by a rounded constant
    such as 1/sqrt(2) (a fixed error per column, growing with V). The factors stay in [1, 2], so
    the product leaves fp32's range only when all BLOCK_N <= 128 columns have |z| < ~1e-7
    (all-zero logits): c is inf, and the sum is BLOCK_N log 2 to within 6e-8. log1p(c) is
    log(1 + c) corrected by the rounding error of 1 + c (tl has no log1p that the interpreter
    runs). The interpreter reduces a custom combine one element at a time in Python, so it takes
    the per-element path unless a test asks.
    """
    if LOG_PRODUCT:
        c = tl.reduce(tl.where(col_ok[None, :], e, 0.0), 1, _excess_product)  # (BLOCK_M,)
        full = c == float("inf")
        c = tl.where(full, 0.0, c)
        uc = 1.0 + c
        return tl.where(full, BLOCK_N * 0.6931471805599453, tl.log(uc) + (c - (uc - 1.0)) / uc)
    else:
        # log1p(e) = log(u) + (e - (u - 1)) / u to first order: e - (u - 1) is exactly the
        # rounding error of u = 1 + e (Sterbenz), all of e once e < 6e-8 (z < -16.6)
        per = tl.log(u) + (e - (u - 1.0)) * r
        return tl.sum(tl.where(col_ok[None, :], per, 0.0), axis=1)
