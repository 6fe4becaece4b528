"""Forward stage of kernels.linear_bce: the Triton kernels and the launcher that runs them by chunks.

kernels/linear_bce.py has the op, the design and the autograd Function; this file computes, for
one call, the loss and (when asked) all three gradients for an incoming gradient of 1:

  _gather_kernel   z at the B x L positives, once: fp32 dot products of x rows and W rows
  _fwd_kernel      per chunk of V: GEMM tile + epilogue (softplus row sums; dz = s (sigmoid - eps/2)
                   in the input dtype; db column sums as a ones @ dz dot), per-tile partials
                   that torch sums (deterministic, no atomics)
  _scatter_kernel  per chunk: dz at the positives = s (sigmoid - 1 + eps/2)
  torch.mm         per chunk: dx += dz W_c (fp32 out), dW_c = scale dz^T x (cuBLAS, fp32 inside)

Work and traffic (bf16, forward with gradients; under no_grad only the GEMM + row sums run):
  FLOPs  6 B V D on tensor cores (three GEMMs) + 32 B V for the db column sums; per logit ~25
         ALU ops and 2 MUFU ops (exp, reciprocal) in the epilogue, one log per 128 logits;
         2 B L D for the positives
  bytes  W read twice (4 V D), dW written once (2 V D), dz written once and read twice (6 B V),
         x read once per chunk (2 B D V / Vc); everything else O(B L D + B D + V). No (B, V) logits.
  memory besides the gradients: dz (B, Vc) in the input dtype, Vc chosen so it stays near
         LinearBCEParams.chunk_mb (default 256 MB, at least 1024 columns); dx in fp32 (B, D) plus
         one (B, D) fp32 product per chunk; O(V) for db; per-tile partials (Vc / BLOCK_N) x B and
         (B / BLOCK_M) x Vc in fp32 (4 + 8 MB at B = 8192, Vc = 16384).
  The tensor-core work is a bare GEMM's; the epilogue must hide under the main loop (two CTAs per
  SM, see _PINNED_16) for the op to stay within 1.15x of three bare GEMMs.

Numerics: the GEMMs accumulate in fp32 (fp64 for fp64 inputs; eps enters as an fp32 scalar, so
fp64 is for gradchecks, not for fp64-exact values); softplus and sigmoid come from fp32 logits that
are never rounded to 16 bits; row sums and db are fp32 per tile and summed by torch in fp32; dz is
rounded once to the input dtype before the two gradient GEMMs (as eager's bf16 logit gradient is).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.linear_bce_params import LinearBCEParams, interpreting
from kernels.linear_bce_softplus import _log1p_row_sum, _sigmoid_parts
from kernels.variants import autotune_on

# Tests set this to fill every buffer with NaN (ids with -2**31) before a kernel writes it.
_POISON = False


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.heuristics(
    {
        "HAS_BIAS": lambda a: a["b_ptr"] is not None,
        "HAS_WEIGHT": lambda a: a["s_ptr"] is not None,
        "HAS_SMOOTHING": lambda a: a["eps"] != 0.0,
        "WRITE_GRAD": lambda a: a["dz_ptr"] is not None,
        "WRITE_DB": lambda a: a["db_part_ptr"] is not None,
        "EVEN_K": lambda a: a["D"] % a["BLOCK_K"] == 0,
    }
)
@triton.jit
def _fwd_kernel(
    x_ptr,  # (B, D)
    w_ptr,  # (N, D): this chunk's rows of W
    b_ptr,  # (N,) or None
    s_ptr,  # (B,) fp32 sample weights or None
    row_part_ptr,  # (>= cdiv(N, BLOCK_N), B) per-tile row sums of softplus(z) - (eps/2) z
    dz_ptr,  # (B, N) view, row stride stride_dz, or None (no gradients)
    db_part_ptr,  # (>= cdiv(B, BLOCK_M), N) per-tile column sums of dz, or None
    B,
    N,
    D,
    stride_xb,
    stride_xd,
    stride_wn,
    stride_wd,
    stride_bv,
    stride_dz,
    stride_dbp,
    eps,
    ACC: tl.constexpr,  # accumulator dtype: fp32 (fp64 for fp64 inputs)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32"; only read for fp32 inputs
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    LOG_PRODUCT: tl.constexpr,  # one log per row of the tile (BLOCK_N <= 128; see _log1p_row_sum)
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_DB: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # Grouped tile order (Triton's matmul tutorial): GROUP_M row tiles sweep the columns together,
    # so a tile of W is fetched from HBM once and re-read from L2 by the group.
    pid = tl.program_id(0)
    # (integer division, not tl.cdiv: each jit-helper call costs the interpreter milliseconds)
    num_m = (B + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < B
    mask_n = rn < N
    # Tail rows/columns load a valid row (index modulo) instead of a masked one: the main loop
    # then needs no row masks, and the results for those rows are masked out in the epilogue.
    rm_in = rm % B
    rn_in = rn % N
    # int64 offsets for x and W, rows and columns: x may be a row-strided view of a large
    # activation (hidden[:, 0] of (B, S, W) passes 2**31 elements at B S W >= 2**31), a chunk of W
    # may span all of V (V D passes 2**31 at V ~ 1.7M), and either may be a transposed view. They
    # cost nothing in the main loop, which only adds a scalar step to the pointers.
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    x_ptrs = x_ptr + rm_in.to(tl.int64)[:, None] * stride_xb + rk[None, :] * stride_xd  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + rn_in.to(tl.int64)[None, :] * stride_wn + rk[:, None] * stride_wd  # (BLOCK_K, BLOCK_N)
    x_step = tl.cast(stride_xd, tl.int64) * BLOCK_K  # (tl.cast: a unit stride arrives as constexpr 1)
    w_step = tl.cast(stride_wd, tl.int64) * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, (D + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = rk < D - k * BLOCK_K
            a = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        x_ptrs += x_step
        w_ptrs += w_step

    z = acc
    if HAS_BIAS:
        z += tl.load(b_ptr + rn_in.to(tl.int64) * stride_bv).to(ACC)[None, :]
    e, u, r, sigmoid = _sigmoid_parts(z)
    # softplus(z) - (eps/2) z = max(z, 0) - (eps/2) z + log1p(e), summed over the tile's valid
    # columns (tail columns are wrapped copies of the first ones: they leave the row sums through
    # the col selects; tail rows are dropped by the masked stores).
    term = tl.maximum(z, 0.0)
    if HAS_SMOOTHING:
        term -= (0.5 * eps) * z
    row = tl.sum(tl.where(mask_n[None, :], term, 0.0), axis=1)  # (BLOCK_M,) in ACC
    row += _log1p_row_sum(e, u, r, mask_n, BLOCK_N, LOG_PRODUCT)
    tl.store(row_part_ptr + pid_n * B + rm, row, mask=mask_m)

    if WRITE_GRAD:
        if HAS_WEIGHT:
            s = tl.where(mask_m, tl.load(s_ptr + rm_in).to(ACC), 0.0)
        else:
            s = tl.where(mask_m, 1.0, 0.0).to(ACC)
        g = sigmoid
        if HAS_SMOOTHING:
            g -= 0.5 * eps
        g = g * s[:, None]
        tl.store(
            dz_ptr + rm.to(tl.int64)[:, None] * stride_dz + rn[None, :],
            g.to(dz_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )
        if WRITE_DB:
            # Column sums on the tensor cores: ones (16, BLOCK_M) @ dz. A tl.sum over axis 0
            # costs ~3 warp shuffles per logit in the wgmma layout (a thread holds 64 columns of
            # 2 rows; SHFL issues at 1 warp/clock/SM), 0.4 with the dot (sm_90 PTX counts).
            # Summing the rounded dz is what the dW GEMM sees too. Tail columns: dropped below.
            ones = tl.full((16, BLOCK_M), 1.0, dz_ptr.dtype.element_ty)
            cols = tl.dot(ones, g.to(dz_ptr.dtype.element_ty), input_precision=DOT_PRECISION, out_dtype=ACC)
            tl.store(db_part_ptr + pid_m * stride_dbp + rn, tl.max(cols, axis=0), mask=mask_n)


@triton.heuristics({"HAS_BIAS": lambda a: a["b_ptr"] is not None})
@triton.jit
def _gather_kernel(
    x_ptr,  # (B, D)
    w_ptr,  # (V, D)
    b_ptr,  # (V,) or None
    labels_ptr,  # (B, L) int32/int64, -1 = padding
    zpos_ptr,  # (B, L) out: z at the positives, 0 at padding
    P,  # B * L
    L,
    D,
    stride_xb,
    stride_xd,
    stride_wv,
    stride_wd,
    stride_bv,
    stride_lb,
    stride_ll,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """z_p = x_row(p) . W_label(p) + b for BLOCK_P entries p of the flattened (B, L) labels."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    row = (p // L).to(tl.int64)
    lab = tl.load(labels_ptr + row * stride_lb + (p % L) * stride_ll, mask=p_ok, other=-1)
    is_pos = p_ok & (lab >= 0)
    j = tl.where(is_pos, lab, 0).to(tl.int64)  # int64: V * D passes 2**31 at V ~ 1.7M, D = 1280
    acc = tl.zeros((BLOCK_P,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        rd = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)  # int64: transposed x or W views
        m = is_pos[:, None] & (rd < D)[None, :]
        xv = tl.load(x_ptr + row[:, None] * stride_xb + rd[None, :] * stride_xd, mask=m, other=0.0)
        wv = tl.load(w_ptr + j[:, None] * stride_wv + rd[None, :] * stride_wd, mask=m, other=0.0)
        acc += tl.sum(xv.to(ACC) * wv.to(ACC), axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + j * stride_bv, mask=is_pos, other=0.0).to(ACC)
    tl.store(zpos_ptr + p, tl.where(is_pos, acc, 0.0), mask=p_ok)


@triton.heuristics({"HAS_WEIGHT": lambda a: a["s_ptr"] is not None})
@triton.jit
def _scatter_kernel(
    labels_ptr,  # (B, L)
    zpos_ptr,  # (B, L) from _gather_kernel
    s_ptr,  # (B,) or None
    dz_ptr,  # (B, N) chunk view of the dz buffer
    P,  # B * L
    L,
    v0,
    N,
    stride_lb,
    stride_ll,
    stride_dz,
    eps,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
):
    """dz_ij = s_i (sigmoid(z_ij) - 1 + eps/2) at the positives that fall in columns [v0, v0 + N).

    A store, not a read-modify-write: one rounding to dz's dtype, and no race, because ids are
    unique within a row (check_labels) and each (i, j) belongs to one program.
    """
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    row = (p // L).to(tl.int64)
    lab = tl.load(labels_ptr + row * stride_lb + (p % L) * stride_ll, mask=p_ok, other=-1)
    j = lab.to(tl.int64) - v0
    hit = p_ok & (lab >= 0) & (j >= 0) & (j < N)
    _, _, _, sigmoid = _sigmoid_parts(tl.load(zpos_ptr + p, mask=hit, other=0.0).to(ACC))
    g = sigmoid - (1.0 - 0.5 * eps)
    if HAS_WEIGHT:
        g = g * tl.load(s_ptr + row, mask=hit, other=0.0).to(ACC)
    tl.store(dz_ptr + row * stride_dz + j, g.to(dz_ptr.dtype.element_ty), mask=hit)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FwdConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int = 4
    num_stages: int = 4
    GROUP_M: int = 8
    LOG_PRODUCT: bool = True  # see _log1p_row_sum; needs BLOCK_N <= 128

    def kwargs(self) -> dict:
        return {
            "BLOCK_M": self.BLOCK_M,
            "BLOCK_N": self.BLOCK_N,
            "BLOCK_K": self.BLOCK_K,
            "GROUP_M": self.GROUP_M,
            "LOG_PRODUCT": self.LOG_PRODUCT,
        }

    def triton_config(self) -> triton.Config:
        return triton.Config(self.kwargs(), num_warps=self.num_warps, num_stages=self.num_stages)


# Pinned 16-bit config, from sm_90 compiles (Triton 3.8; registers and spills by cuobjdump): a
# 64 x 128 tile on one warpgroup with 4 stages takes 96 KB of shared memory and 166 registers in
# bf16 (255 in fp16, still two CTAs), so two CTAs share an SM and one's epilogue (exp, division,
# selects: ~25 ALU and 2 MUFU ops per logit) can run under the other's tensor-core main loop.
# 128 x 128 on 8 warps needs 255 registers (one CTA per SM, epilogue exposed: ~+30% on the
# forward GEMM at D = 1280 by the issue-slot count); capped at 128 registers it spills 744 bytes.
# Autotune (autotune=True or CATLIP_AUTOTUNE=1, GPU only: kernels/variants.py) measures these against
# each other.
_PINNED_16 = _FwdConfig(64, 128, 64, num_warps=4, num_stages=4)
_TUNE_CONFIGS_16 = [
    _PINNED_16,
    _FwdConfig(64, 128, 64, num_warps=4, num_stages=3),
    _FwdConfig(128, 64, 64, num_warps=4, num_stages=4),
    _FwdConfig(128, 128, 64, num_warps=8, num_stages=3),
    _FwdConfig(128, 128, 64, num_warps=8, num_stages=4),
]
_PINNED_32 = _FwdConfig(64, 128, 32, num_warps=4, num_stages=3)
_TUNE_CONFIGS_32 = [_PINNED_32, _FwdConfig(128, 128, 32, num_warps=8, num_stages=3)]
_PINNED_64 = _FwdConfig(64, 64, 32, num_warps=4, num_stages=2)  # fp64: gradchecks only
# design E's epilogue kernel (kernels/linear_bce_split.py) on a GPU: 32 x 128, 4 warps, 48-72
# registers everywhere (64 x 128 spilled 16 B on sm_80 with Triton 3.6)
EPILOGUE_BLOCK = (32, 128)
# D not a multiple of 64 (masked K loads, which Triton does not pipeline through shared memory):
# 64 x 128 x 64 takes 255 registers and spills (96 B on 3.8, 192 B on 3.6); BLOCK_K 32 does not
# (168 / 207 registers), and is unmasked again where D is a multiple of 32. No autotune there.
_MASKED_K_16 = _FwdConfig(64, 128, 32, num_warps=4, num_stages=3)
# fp32 with D not a multiple of 32: 64 x 128 x 32 spills 112 B with IEEE dots on Triton 3.6.
_MASKED_K_32 = _FwdConfig(64, 64, 32, num_warps=4, num_stages=3)
# Ampere (sm_80, mma.sync): 4 warps on 64 x 128 x 64 spill 8 B without a bias on Triton 3.6;
# 8 warps take 106-128 registers in every variant, two CTAs per SM (48 KB of shared memory each).
_PINNED_16_SM80 = _FwdConfig(64, 128, 64, num_warps=8, num_stages=3)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pinned_config(b: int, d: int, dtype: torch.dtype, arch: int = 9) -> _FwdConfig:
    """The launch parameters for (B, D, dtype) on compute capability `arch` (major); each compiles
    without spills under Triton 3.6 and 3.8 (perf/results/compiled_kernels.csv)."""
    if interpreting():
        # Few, large programs: the interpreter pays per program and per op, not per element.
        bm, bk = min(128, max(16, _next_pow2(b))), min(128, max(16, _next_pow2(d)))
        return _FwdConfig(bm, 1024, bk, num_warps=1, num_stages=1, LOG_PRODUCT=False)
    if dtype == torch.float64:
        return _PINNED_64
    if dtype == torch.float32:
        return _PINNED_32 if d % _PINNED_32.BLOCK_K == 0 else _MASKED_K_32
    if d % _PINNED_16.BLOCK_K:
        return _MASKED_K_16
    return _PINNED_16_SM80 if arch < 9 else _PINNED_16


@functools.cache
def _autotuned_fwd(dtype: torch.dtype) -> triton.runtime.Autotuner:
    configs = _TUNE_CONFIGS_32 if dtype == torch.float32 else _TUNE_CONFIGS_16
    # Every program overwrites its outputs (no atomics), so the benchmark runs need no reset.
    return triton.autotune([c.triton_config() for c in configs], key=["B", "N", "D"])(_fwd_kernel)


def _use_autotune(x: torch.Tensor, params: LinearBCEParams) -> bool:
    return autotune_on(params.autotune) and x.is_cuda and x.dtype != torch.float64


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not _POISON:
        return torch.empty(shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else -(2**31)
    return torch.full(shape, fill, dtype=dtype, device=device)


def _chunk_cols(b: int, v: int, elem_size: int, params: LinearBCEParams) -> int:
    if params.chunk_cols is not None:
        return max(1, min(v, params.chunk_cols))
    budget = float(params.chunk_mb) * 2**20
    cols = int(budget // (b * elem_size)) // 256 * 256  # whole 256-column tiles
    return max(1, min(v, max(cols, 1024)))


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@functools.cache
def _cuda_mm_out_dtype() -> bool:
    """torch.mm(bf16, bf16, out_dtype=fp32) (cuBLAS, fp32 output) exists on this build's CUDA."""
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device="cuda")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


@functools.cache
def _cuda_addmm_out_dtype() -> bool:
    """torch.addmm(fp32 C, bf16, bf16, out_dtype=fp32, out=C) (cuBLAS accumulating into C) exists."""
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device="cuda")
        c = torch.ones(16, 16, dtype=torch.float32, device="cuda")
        torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
        return bool((c == 17).all())
    except (TypeError, RuntimeError):
        return False


def _accumulate_dx(
    dx_acc: torch.Tensor | None, dz: torch.Tensor, w: torch.Tensor, mode: str = "mm"
) -> torch.Tensor:
    """dx_acc += dz @ w with 16-bit (or fp32/fp64) operands and an fp32 (fp64) accumulator.

    mode "mm": the chunk's product into a fresh fp32 (B, D) tensor, then added (three passes over
    B x D fp32 a chunk besides the GEMM's own write); "addmm": cuBLAS adds it into dx_acc itself
    (beta = 1: one read and one write), where this torch has addmm(..., out_dtype=float32)."""
    if dz.dtype in (torch.float32, torch.float64):
        return torch.mm(dz, w) if dx_acc is None else dx_acc.addmm_(dz, w)
    if mode == "addmm" and dx_acc is not None and dz.is_cuda and _cuda_addmm_out_dtype():
        return torch.addmm(dx_acc, dz, w, out_dtype=torch.float32, out=dx_acc)
    if dz.is_cuda and _cuda_mm_out_dtype():
        part = torch.mm(dz, w, out_dtype=torch.float32)  # cuBLAS: 16-bit in, fp32 out
    else:
        if dz.is_cuda:
            warnings.warn(
                "this torch has no torch.mm(..., out_dtype=float32); linear_bce upcasts each chunk to fp32",
                stacklevel=3,
            )
        part = torch.mm(dz.float(), w.float())  # exact 16-bit products, fp32 sums (CPU tests)
    return part if dx_acc is None else dx_acc.add_(part)


def _write_dw(dw: torch.Tensor, dz: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """dw = scale * dz^T @ x in one GEMM: fp32 accumulation, one rounding to dw's dtype."""
    if dz.is_cuda or dz.dtype in (torch.float32, torch.float64):
        dw.addmm_(dz.t(), x, beta=0, alpha=scale)
    else:  # the CPU's 16-bit GEMM; upcast so the sum is fp32 as it is in cuBLAS
        dw.copy_(torch.mm(dz.t().float(), x.float()).mul_(scale))


def _positive_bias_sums(
    labels: torch.Tensor, s: torch.Tensor | None, v: int, acc: torch.dtype
) -> torch.Tensor:
    """(V,) sum over the rows that have label j of s_i (1 if no weights), without atomics.

    Sort the B x L ids, prefix-sum their weights in fp64, and difference the prefix at each id's
    end (searchsorted): deterministic and sync-free, unlike index_add_ on CUDA.
    """
    ids = torch.where(labels >= 0, labels, v).reshape(-1).long()  # (B L,) padding goes to bin V
    w = torch.ones_like(labels, dtype=torch.float64) if s is None else s.double()[:, None].expand_as(labels)
    ids, order = torch.sort(ids, stable=True)
    prefix = torch.cat([w.new_zeros(1), torch.cumsum(w.reshape(-1)[order], 0)])  # (B L + 1,)
    bins = torch.arange(v, device=ids.device)
    ends = torch.searchsorted(ids, bins, right=True)
    starts = torch.searchsorted(ids, bins, right=False)
    return (prefix[ends] - prefix[starts]).to(acc)  # (V,)


def linear_bce_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    sample_weight: torch.Tensor | None,
    params: LinearBCEParams,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Loss and, where `need` (dx, dW, db) asks, the gradients for an incoming gradient of 1."""
    b, d = x.shape
    v = weight.shape[0]
    dev, dtype = x.device, x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    acc_tl = tl.float64 if dtype == torch.float64 else tl.float32
    eps = float(params.label_smoothing)
    scale = {"sum": 1.0, "batch_mean": 1.0 / b, "mean": 1.0 / (b * v)}[params.reduction]
    need_dx, need_dw, need_db = need[0], need[1], need[2] and bias is not None
    grads = need_dx or need_dw or need_db
    s = None if sample_weight is None else sample_weight.to(device=dev, dtype=acc).contiguous()
    el = labels.shape[1]
    stride_bv = 0 if bias is None else bias.stride(0)  # every input is read through its strides

    # The B x L positive logits, once for all chunks.
    zpos = _empty((b, el), acc, dev)  # (B, L)
    block_p = 512 if interpreting() else 32
    if el:
        block_d = min(_next_pow2(d), 256 if interpreting() else 128)
        _gather_kernel[(triton.cdiv(b * el, block_p),)](
            x, weight, bias, labels, zpos, b * el, el, d,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), stride_bv,
            labels.stride(0), labels.stride(1),
            ACC=acc_tl, BLOCK_P=block_p, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip

    cfg = _pinned_config(b, d, dtype, torch.cuda.get_device_capability(dev)[0] if x.is_cuda else 9)
    # autotune: on Hopper, where the candidates were compiled, and never with masked K loads
    autotune = (
        _use_autotune(x, params)
        and d % 64 == 0
        and (not x.is_cuda or torch.cuda.get_device_capability(dev)[0] >= 9)
    )
    tuned = _autotuned_fwd(dtype) if autotune else None
    configs = (_TUNE_CONFIGS_32 if dtype == torch.float32 else _TUNE_CONFIGS_16) if autotune else [cfg]
    cublas = params.design == "cublas"  # design E: cuBLAS logits into dz_buf, then an epilogue kernel
    epilogue_block = (cfg.BLOCK_M, cfg.BLOCK_N) if interpreting() else EPILOGUE_BLOCK
    min_bm = min([c.BLOCK_M for c in configs] + ([epilogue_block[0]] if cublas else []))
    min_bn = min([c.BLOCK_N for c in configs] + ([epilogue_block[1]] if cublas else []))

    vc = _chunk_cols(b, v, x.element_size(), params)
    n_m_max = triton.cdiv(b, min_bm)
    row_part = _empty((triton.cdiv(vc, min_bn), b), acc, dev)  # (Vc / BLOCK_N, B)
    # The tile partials (fp32, ~V / 128 a row) are summed in fp64: summed in fp32 the row total
    # would carry ~1 ulp of error, twice torch's own (which sums V terms in one cascade).
    row_dense = torch.zeros(b, dtype=torch.float64, device=dev)  # (B,)
    dz_buf = _empty((b, vc), dtype, dev) if grads or cublas else None  # (B, Vc)
    db_part = _empty((n_m_max, vc), acc, dev) if need_db else None  # (B / BLOCK_M, Vc)
    db_acc = _empty((v,), acc, dev) if need_db else None  # (V,)
    dw = _empty(tuple(weight.shape), weight.dtype, dev) if need_dw else None  # (V, D)
    dx_acc = None

    for v0 in range(0, v, vc):
        n = min(vc, v - v0)
        dz = dz_buf[:, :n] if grads else None  # (B, n) view, row stride Vc
        args = (
            x, weight[v0 : v0 + n], None if bias is None else bias[v0 : v0 + n], s if grads else None,
            row_part, dz, None if db_part is None else db_part[:, :n],
            b, n, d, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), stride_bv,
            vc, vc, eps,
        )  # fmt: skip
        if cublas:
            from kernels.linear_bce_split import cublas_logits_then_epilogue

            bm, bn = epilogue_block
            cublas_logits_then_epilogue(
                x, weight[v0 : v0 + n], None if bias is None else bias[v0 : v0 + n], s if grads else None,
                dz_buf[:, :n], row_part, None if db_part is None else db_part[:, :n], eps, grads,
                acc_tl=acc_tl, block_m=bm, block_n=bn, log_product=cfg.LOG_PRODUCT,
            )  # fmt: skip
        elif tuned is not None:
            grid = lambda meta, n=n: (triton.cdiv(b, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
            tuned[grid](*args, ACC=acc_tl, DOT_PRECISION=_dot_precision(dtype))
            bm, bn = tuned.best_config.kwargs["BLOCK_M"], tuned.best_config.kwargs["BLOCK_N"]
        else:
            bm, bn = cfg.BLOCK_M, cfg.BLOCK_N
            grid = (triton.cdiv(b, bm) * triton.cdiv(n, bn),)
            _fwd_kernel[grid](
                *args, ACC=acc_tl, DOT_PRECISION=_dot_precision(dtype), **cfg.kwargs(),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )  # fmt: skip
        row_dense += row_part[: triton.cdiv(n, bn)].sum(0, dtype=torch.float64)
        if not grads:
            continue
        if el:
            _scatter_kernel[(triton.cdiv(b * el, 4 * block_p),)](
                labels, zpos, s, dz, b * el, el, v0, n, labels.stride(0), labels.stride(1), vc, eps,
                ACC=acc_tl, BLOCK_P=4 * block_p, num_warps=4,
            )  # fmt: skip
        if need_db:
            db_acc[v0 : v0 + n] = db_part[: triton.cdiv(b, bm), :n].sum(0)
        if need_dx:
            dx_acc = _accumulate_dx(dx_acc, dz, weight[v0 : v0 + n], params.dx_accumulate)
        if need_dw:
            _write_dw(dw[v0 : v0 + n], dz, x, scale)

    per_sample = row_dense - (1.0 - eps) * zpos.double().sum(1)  # (B,) fp64
    if s is not None:
        per_sample = per_sample * s.double()
    loss = (per_sample.sum() * scale).to(acc)
    dx = (dx_acc * scale).to(dtype) if need_dx else None
    db = None
    if need_db:
        db_acc -= (1.0 - eps) * _positive_bias_sums(labels, s, v, acc)
        db = (db_acc * scale).to(bias.dtype)
    return loss, dx, dw, db
