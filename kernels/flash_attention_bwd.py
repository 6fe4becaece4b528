"""Fused attention, backward stage: dQ, dK, dV from dO, O and the forward's log-sum-exp.

With S = scale * Q K^T, P = softmax(S) = exp(S - lse) recomputed tile by tile (never stored):
    dV = P^T dO                 dP = dO V^T
    dS = P * (dP - Delta)       Delta_i = sum_d dO_id O_id  (= rowsum(P * dP), FA2's preprocess)
    dQ = scale * dS K           dK = scale * dS^T Q

Two launches, deterministic (no atomics):
  1. _bwd_dq_kernel: one program per (query block, batch x head) loads Q, dO and O once, computes
     and stores Delta for its rows (FA2's separate preprocess pass, folded in: it saves a read of
     dO and a launch), then streams K, V tiles: 3 products per tile pair (S, dP, dQ).
  2. _bwd_dkdv_kernel: one program per (key block, batch x head) holds K, V and fp32 dK, dV
     accumulators and streams Q, dO, lse, Delta tiles: 4 products per tile pair (S^T, dP^T, dV, dK).
That is 7 products of 2 * S_q * S_k * D FLOPs, 3.5x the forward's 2, where FA2's single kernel
with fp32 atomics on dQ does 5 (2.5x). The price buys less traffic (no fp32 dQ buffer to zero,
accumulate through L2 and convert: 12 passes over (S, D) tensors per head against FA2's ~15) and
bit-for-bit reproducible gradients (atomics add in arrival order, so two runs of the trainer,
which resumes bit-exactly, would differ in the last bits). Predicted cost of the choice at ViT
shapes, and the measurement that would overturn it: perf/notes_attention.md.

Work and traffic per (batch, head), elt = bytes per element:
    FLOPs  14 * S_q * S_k * D, plus 2 * S_q * S_k exp2
    bytes  HBM: q, dO, k, v read by each kernel, o by the dQ kernel; dq, dk, dv written once;
           lse, Delta 4 bytes per row: 12 passes over (S, D) tensors per head, 939 MB at
           ViT-B/16 (B 256), 218 us at 4.3 TB/s. Re-reads of streamed tiles come from L2.

The head-dim split (D = BLOCK_D0 + BLOCK_D1) and the masked tail steps are the forward's (see
kernels/flash_attention_fwd.py); every product over D is two dots, every product whose output
is (rows, D) has two accumulators. Gradients are stored through their strides, so dq, dk, dv
can be views into one (B, S, 3, H, D) buffer (the packed-qkv autograd Function's d(qkv)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.flash_attention_fwd import (
    HEAD_DIM_HEURISTICS,
    LOG2E,
    BlockConfig,
    ConfigTable,
    _load_tile,
    _store_tile,
    arch_of,
    autotune_checked,
    autotune_configs,
    config_kind,
    dot_precision,
    head_dim_split,
    needs_int64_rows,
    tail_block,
)
from kernels.variants import autotune_on

# Pinned by padded head width (BLOCK_D0 + BLOCK_D1). BLOCK_M is the held dimension of _bwd_dq
# and the streamed one of _bwd_dkdv (BLOCK_N the other way round). Registers as compiled for
# sm_90a (bf16, no spills) are in perf/notes_attention.md. Not yet timed on a GPU.
# Ampere (sm_80, mma.sync) entries: the Hopper tiles spill there (dK/dV: 8 B at D 64, 64 B at 80,
# 680-1216 B at 128; dQ: 496-1048 B at 128); these take 204-255 registers without spills.
# fp32 entries: with TF32 dots the 16-bit dK/dV tile spills (16 B at D 64, 400 B at 80), and IEEE
# dots (FMA units) spill in the shared 32 x 32 x 4-warp tile (dQ 200-300 B, dK/dV at D 80 780 B).
# At D 96 (64 + 32) the 4-warp tile spills 8 B on sm_90a (Triton 3.8) and Ampere's 32 x 64 40 B.
DKDV_CONFIGS = ConfigTable(
    sm90={
        64: BlockConfig(64, 64, 4, 2),
        80: BlockConfig(64, 64, 4, 2),
        96: BlockConfig(64, 64, 8, 2),
        128: BlockConfig(64, 64, 8, 2),
    },
    sm80={
        64: BlockConfig(32, 32, 4, 2),
        80: BlockConfig(32, 64, 8, 1),
        96: BlockConfig(32, 32, 4, 2),
        128: BlockConfig(32, 32, 4, 2),
    },
    tf32={64: BlockConfig(32, 64, 4, 2)},
    ieee={96: BlockConfig(32, 16, 4, 1)},
)
TF32_DKDV_MAX_WIDTH = 64  # padded head width above which dK/dV takes IEEE dots for fp32 (below)
DQ_CONFIGS = ConfigTable(
    sm90={64: BlockConfig(64, 64, 4, 2), 96: BlockConfig(64, 64, 4, 2), 128: BlockConfig(64, 64, 8, 2)},
    sm80={128: BlockConfig(32, 64, 4, 2)},
    ieee={96: BlockConfig(32, 32, 8, 1)},
)


# --------------------------------------------------------------------------------------------------
# 2. dK, dV: one key block per program, query tiles streamed (launched second)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _dkdv_step(
    dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qm, stride_dom, start_m, S_Q, qk_scale,
    BLOCK_M: tl.constexpr, MASK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One query tile against the program's keys; everything is transposed, (keys, queries)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    q0 = _load_tile(Q, offs_m, offs_d0, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    do0 = _load_tile(DO, offs_m, offs_d0, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    if MASK_M:
        # lse = +inf past S_Q makes P^T = exp2(-inf) = 0 there; Delta and dO are 0 there too.
        lse = tl.load(LSE + offs_m, mask=offs_m < S_Q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=offs_m < S_Q, other=0.0)
    else:
        lse = tl.load(LSE + offs_m)
        delta = tl.load(DELTA + offs_m)
    qkT = tl.dot(k0, tl.trans(q0), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M) fp32
    dpT = tl.dot(v0, tl.trans(do0), input_precision=PRECISION)
    if HAS_D1:
        q1 = _load_tile(Q, offs_m, offs_d1, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        do1 = _load_tile(DO, offs_m, offs_d1, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        qkT = tl.dot(k1, tl.trans(q1), qkT, input_precision=PRECISION)
        dpT = tl.dot(v1, tl.trans(do1), dpT, input_precision=PRECISION)
    # Keys past S_K (a partial key block) load as 0, so their P^T = exp2(-lse) may even be inf:
    # harmless, as row n of dK and dV depends on row n of P^T alone and those rows are not stored.
    pT = tl.math.exp2(qkT * qk_scale - (lse * 1.4426950408889634)[None, :])
    dv0 = tl.dot(pT.to(do0.dtype), do0, dv0, input_precision=PRECISION)
    # dS^T in fp32, rounded to the input dtype only as a dot operand (as FlashAttention does).
    dsT = pT * (dpT - delta[None, :])
    dk0 = tl.dot(dsT.to(q0.dtype), q0, dk0, input_precision=PRECISION)
    if HAS_D1:
        dv1 = tl.dot(pT.to(do1.dtype), do1, dv1, input_precision=PRECISION)
        dk1 = tl.dot(dsT.to(q1.dtype), q1, dk1, input_precision=PRECISION)
    return dk0, dk1, dv0, dv1


@triton.heuristics(
    {
        "MASK_N": lambda a: a["S_K"] % a["BLOCK_N"] != 0,  # the last key block is partial
        "BLOCK_M_TAIL": lambda a: tail_block(a["S_Q"], a["BLOCK_M"]),
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit(do_not_specialize=["H", "S_Q", "S_K"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, S_Q, S_K, qk_scale, scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    MASK_N: tl.constexpr, BLOCK_M_TAIL: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (cdiv(S_K, BLOCK_N), B * H); MASK_N: keys past S_K load as 0 and are not stored.
    if INT64_ROWS:  # offsets inside one head pass 2**31: widen the row strides (forward's note)
        stride_qm = tl.cast(stride_qm, tl.int64)
        stride_kn = tl.cast(stride_kn, tl.int64)
        stride_vn = tl.cast(stride_vn, tl.int64)
        stride_dom = tl.cast(stride_dom, tl.int64)
        stride_dkn = tl.cast(stride_dkn, tl.int64)
        stride_dvn = tl.cast(stride_dvn, tl.int64)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dvb + off_h * stride_dvh
    LSE += pid_bh.to(tl.int64) * S_Q
    DELTA += pid_bh.to(tl.int64) * S_Q

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    k0 = _load_tile(K, offs_n, offs_d0, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    v0 = _load_tile(V, offs_n, offs_d0, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    k1 = k0  # placeholders when HAS_D1 is False (never used)
    v1 = v0
    if HAS_D1:
        k1 = _load_tile(K, offs_n, offs_d1, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        v1 = _load_tile(V, offs_n, offs_d1, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D1)
    dk0 = tl.zeros([BLOCK_N, BLOCK_D0], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, BLOCK_D0], dtype=tl.float32)
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], dtype=tl.float32)  # untouched (folded away) without D1
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], dtype=tl.float32)

    m_full = (S_Q // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk0, dk1, dv0, dv1 = _dkdv_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qm, stride_dom, start_m, S_Q, qk_scale,
            BLOCK_M, False, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    if BLOCK_M_TAIL > 0:  # the last S_Q % BLOCK_M queries: one masked step
        dk0, dk1, dv0, dv1 = _dkdv_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qm, stride_dom, m_full, S_Q, qk_scale,
            BLOCK_M_TAIL, True, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    _store_tile(DV, dv0, offs_n, offs_d0, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    _store_tile(DK, dk0 * scale, offs_n, offs_d0, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    if HAS_D1:
        _store_tile(DV, dv1, offs_n, offs_d1, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        _store_tile(DK, dk1 * scale, offs_n, offs_d1, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D1)


# --------------------------------------------------------------------------------------------------
# 1. dQ and Delta: one query block per program, key tiles streamed (launched first)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _dq_step(
    dq0, dq1, q0, q1, do0, do1, lse2, delta, K, V, stride_kn, stride_vn, start_n, S_K, qk_scale,
    BLOCK_N: tl.constexpr, MASK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    k0 = _load_tile(K, offs_n, offs_d0, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    v0 = _load_tile(V, offs_n, offs_d0, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    qk = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    dp = tl.dot(do0, tl.trans(v0), input_precision=PRECISION)
    if HAS_D1:
        k1 = _load_tile(K, offs_n, offs_d1, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        v1 = _load_tile(V, offs_n, offs_d1, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        qk = tl.dot(q1, tl.trans(k1), qk, input_precision=PRECISION)
        dp = tl.dot(do1, tl.trans(v1), dp, input_precision=PRECISION)
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASK_N:  # keys past S_K load as 0, but exp2(0 - lse) can overflow to inf, and inf * 0 = NaN
        p = tl.where(offs_n[None, :] < S_K, p, 0.0)
    ds = p * (dp - delta[:, None])
    dq0 = tl.dot(ds.to(k0.dtype), k0, dq0, input_precision=PRECISION)
    if HAS_D1:
        dq1 = tl.dot(ds.to(k1.dtype), k1, dq1, input_precision=PRECISION)
    return dq0, dq1


@triton.heuristics(
    {
        "MASK_M": lambda a: a["S_Q"] % a["BLOCK_M"] != 0,  # the last query block is partial
        "BLOCK_N_TAIL": lambda a: tail_block(a["S_K"], a["BLOCK_N"]),
        "BLOCK_D": lambda a: triton.next_power_of_2(max(a["HEAD_DIM"], 16)),
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit(do_not_specialize=["H", "S_Q", "S_K"])
def _bwd_dq_kernel(
    Q, K, V, Out, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    H, S_Q, S_K, qk_scale, scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    MASK_M: tl.constexpr, BLOCK_N_TAIL: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (cdiv(S_Q, BLOCK_M), B * H); MASK_M: rows past S_Q load as 0 and are not stored.
    if INT64_ROWS:  # offsets inside one head pass 2**31: widen the row strides (forward's note)
        stride_qm = tl.cast(stride_qm, tl.int64)
        stride_kn = tl.cast(stride_kn, tl.int64)
        stride_vn = tl.cast(stride_vn, tl.int64)
        stride_om = tl.cast(stride_om, tl.int64)
        stride_dom = tl.cast(stride_dom, tl.int64)
        stride_dqm = tl.cast(stride_dqm, tl.int64)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    Out += off_b * stride_ob + off_h * stride_oh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += pid_bh.to(tl.int64) * S_Q
    DELTA += pid_bh.to(tl.int64) * S_Q

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # Delta = rowsum(dO * O) in fp32, stored for _bwd_dkdv_kernel (launched after this kernel).
    # One (BLOCK_M, next_pow2(D)) tile each: O is read here only, once.
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(Out, offs_m, offs_d, stride_om, S_Q, HEAD_DIM, MASK_M, BLOCK_D != HEAD_DIM)
    do = _load_tile(DO, offs_m, offs_d, stride_dom, S_Q, HEAD_DIM, MASK_M, BLOCK_D != HEAD_DIM)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if MASK_M:
        tl.store(DELTA + offs_m, delta, mask=offs_m < S_Q)
        lse = tl.load(LSE + offs_m, mask=offs_m < S_Q, other=0.0)  # finite placeholders
    else:
        tl.store(DELTA + offs_m, delta)
        lse = tl.load(LSE + offs_m)
    lse2 = lse * 1.4426950408889634  # natural log -> log2 units of the scaled scores

    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    q0 = _load_tile(Q, offs_m, offs_d0, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    do0 = _load_tile(DO, offs_m, offs_d0, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D0)  # (L1/L2 hit)
    q1 = q0  # placeholders when HAS_D1 is False (never used)
    do1 = do0
    if HAS_D1:
        q1 = _load_tile(Q, offs_m, offs_d1, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        do1 = _load_tile(DO, offs_m, offs_d1, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D1)
    dq0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)  # untouched (folded away) without D1

    n_full = (S_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq0, dq1 = _dq_step(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, K, V, stride_kn, stride_vn, start_n, S_K, qk_scale,
            BLOCK_N, False, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    if BLOCK_N_TAIL > 0:  # the last S_K % BLOCK_N keys: one masked step
        dq0, dq1 = _dq_step(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, K, V, stride_kn, stride_vn, n_full, S_K, qk_scale,
            BLOCK_N_TAIL, True, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    _store_tile(DQ, dq0 * scale, offs_m, offs_d0, stride_dqm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    if HAS_D1:
        _store_tile(DQ, dq1 * scale, offs_m, offs_d1, stride_dqm, S_Q, HEAD_DIM, MASK_M, MASK_D1)


_bwd_dq_tuned = triton.autotune(
    configs=autotune_configs("dq"), key=["S_Q", "S_K", "HEAD_DIM", "PRECISION"], cache_results=True
)(_bwd_dq_kernel)
_bwd_dkdv_tuned = triton.autotune(
    configs=autotune_configs("dkdv"), key=["S_Q", "S_K", "HEAD_DIM", "PRECISION"], cache_results=True
)(_bwd_dkdv_kernel)


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------
def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    *,
    onepass: bool = False,
    autotune: bool | None = None,
) -> None:
    """Write dq (B, H, S_q, D), dk and dv (B, H, S_k, D) through their strides (each with a
    contiguous last dim); every element is written. lse is the forward's (B, H, S_q) fp32.
    onepass: the one-launch backward of kernels/flash_attention_bwd_onepass.py (S_q <= 512).
    autotune: search the configs (kernels.variants.autotune_on: None is CATLIP_AUTOTUNE=1, read now)."""
    do, q, k, v, o = _rows(do), _rows(q), _rows(k), _rows(v), _rows(o)
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        if g.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got strides {g.stride()}")
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    if dq.numel() == 0 and dk.numel() == 0:
        return
    if s_q == 0 or s_k == 0:  # no scores: the gradients are zero
        dq.zero_(), dk.zero_(), dv.zero_()
        return
    if onepass and config_kind(q.dtype, dot_precision(q.dtype), q.is_cuda) == "tf32":
        # fp32 with TF32 dots on a GPU: its spill-free tile (32 x 64) is not the forward's, whose
        # scores the one-launch dQ must recompute bit for bit (flash_attention_bwd_onepass.py)
        onepass = False
    if onepass:
        from kernels.flash_attention_bwd_onepass import attention_bwd_onepass

        attention_bwd_onepass(do, q, k, v, o, lse, scale, dq, dk, dv)
        return
    delta = torch.empty(b, h, s_q, dtype=torch.float32, device=q.device)  # (B, H, S_q), by the dq kernel
    strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
    )  # fmt: skip
    dq_args = (
        q, k, v, o, do, dq, lse, delta, *strides,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        h, s_q, s_k, scale * LOG2E, scale,
    )  # fmt: skip
    dkdv_args = (
        q, k, v, do, dk, dv, lse, delta, *strides,
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        h, s_q, s_k, scale * LOG2E, scale,
    )  # fmt: skip
    precision = dot_precision(q.dtype)
    meta = {"HEAD_DIM": d, "PRECISION": precision, "INT64_ROWS": needs_int64_rows(do, q, k, v, o, dq, dk, dv)}
    # dq first: it writes Delta, which every dK/dV program reads.
    if autotune_on(autotune) and autotune_checked(d):
        _bwd_dq_tuned[lambda m: (triton.cdiv(s_q, m["BLOCK_M"]), b * h)](*dq_args, **meta)
        _bwd_dkdv_tuned[lambda m: (triton.cdiv(s_k, m["BLOCK_N"]), b * h)](*dkdv_args, **meta)
        return
    kind, arch = config_kind(q.dtype, precision, q.is_cuda), arch_of(q)
    cfg = DQ_CONFIGS.pick(d, kind, arch)
    _bwd_dq_kernel[(triton.cdiv(s_q, cfg.block_m), b * h)](
        *dq_args,
        **meta,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if kind == "tf32" and q.is_cuda and sum(head_dim_split(d)) > TF32_DKDV_MAX_WIDTH:
        # fp32 with TF32 allowed (not required): above D 64 every dK/dV tile spilled with TF32 dots
        # (perf/results/compiled_kernels.csv), so this kernel takes IEEE dots on its FMA tile.
        kind, meta = "ieee", {**meta, "PRECISION": "ieee"}
    cfg = DKDV_CONFIGS.pick(d, kind, arch)
    _bwd_dkdv_kernel[(triton.cdiv(s_k, cfg.block_n), b * h)](
        *dkdv_args,
        **meta,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
