"""Fused attention, backward stage: dQ, dK, dV from dO, O and the forward's log-sum-exp.

With S = scale * Q K^T, P = softmax(S) = exp(S - lse) recomputed tile by tile (never stored):
    dV = P^T dO                 dP = dO V^T
    dS = P * (dP - Delta)       Delta_i = sum_d dO_id O_id  (= rowsum(P * dP), FA2's preprocess)
    dQ = scale * dS K           dK = scale * dS^T Q

Three launches, deterministic (no atomics):
  1. _bwd_preprocess: Delta (B, H, S_q) fp32, one read of O and dO.
  2. _bwd_dkdv: one program per (key block, batch x head) holds K, V and fp32 dK, dV accumulators
     and streams Q, dO, lse, Delta tiles past them: 4 products per tile pair (S^T, dP^T, dV, dK).
  3. _bwd_dq: one program per (query block, batch x head) holds Q, dO and an fp32 dQ accumulator
     and streams K, V: 3 products per tile pair (S, dP, dQ).
That is 7 products of 2 * S_q * S_k * D FLOPs, 3.5x the forward's 2, where FA2's single kernel
with fp32 atomics on dQ does 5 (2.5x). The price buys: no fp32 dQ buffer and conversion pass, no
atomic traffic through L2 (cdiv(S_k, BLOCK_N) read-modify-writes of every dQ element), and
bit-for-bit reproducible gradients, which the trainer's exact-resume tests rely on. Predicted cost
of the choice at ViT shapes, and the measurement that would overturn it: perf/notes_attention.md.

Work and traffic per (batch, head), elt = bytes per element:
    FLOPs  14 * S_q * S_k * D, plus 2 * S_q * S_k exp2
    bytes  HBM: q, k, v, o, dO read and dq, dk, dv written (5 S_q + 3 S_k ... ) * D * elt
           + 12 * S_q (lse, Delta); Q, dO re-read from L2 by each key block, K, V by each query
           block.

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
    AUTOTUNE,
    HEAD_DIM_HEURISTICS,
    LOG2E,
    BlockConfig,
    _load_tile,
    _store_tile,
    autotune_configs,
    dot_precision,
    pinned,
    tail_block,
)

# Pinned by padded head width (BLOCK_D0 + BLOCK_D1). BLOCK_M is the streamed dimension of
# _bwd_dkdv and the held one of _bwd_dq (and BLOCK_N the other way round); 64 x 64 keeps the
# tails of S = 197 / 257 to one 16-wide step. Not yet measured on a GPU.
DKDV_CONFIGS = {
    64: BlockConfig(64, 64, 4, 2),
    128: BlockConfig(64, 64, 8, 2),
    256: BlockConfig(32, 64, 8, 1),
}
DQ_CONFIGS = {
    64: BlockConfig(64, 64, 4, 2),
    128: BlockConfig(64, 64, 8, 2),
    256: BlockConfig(64, 32, 8, 1),
}
PRE_BLOCK_M = 64


# --------------------------------------------------------------------------------------------------
# 1. Delta = rowsum(dO * O)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    H, S_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + off_b * stride_ob + off_h * stride_oh, offs_m, offs_d, stride_om, S_Q, HEAD_DIM, True, True)
    do = _load_tile(DO + off_b * stride_dob + off_h * stride_doh, offs_m, offs_d, stride_dom, S_Q, HEAD_DIM, True, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # fp32: D products of O(1) terms
    tl.store(DELTA + pid_bh.to(tl.int64) * S_Q + offs_m, delta, mask=offs_m < S_Q)


# --------------------------------------------------------------------------------------------------
# 2. dK, dV: one key block per program, query tiles streamed
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
    pT = tl.math.exp2(qkT * qk_scale - (lse * 1.4426950408889634)[None, :])
    dv0 = tl.dot(pT.to(do0.dtype), do0, dv0, input_precision=PRECISION)
    # dS^T in fp32, rounded to the input dtype only as a dot operand (as FlashAttention does).
    dsT = pT * (dpT - delta[None, :])
    dk0 = tl.dot(dsT.to(q0.dtype), q0, dk0, input_precision=PRECISION)
    if HAS_D1:
        dv1 = tl.dot(pT.to(do1.dtype), do1, dv1, input_precision=PRECISION)
        dk1 = tl.dot(dsT.to(q1.dtype), q1, dk1, input_precision=PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit
def _dkdv_tile(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
    start_n, S_Q, S_K, qk_scale, scale,
    BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_M_TAIL: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    # Keys past S_K load as 0; their rows of dK, dV are computed and never stored.
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
    if BLOCK_M_TAIL > 0:
        dk0, dk1, dv0, dv1 = _dkdv_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qm, stride_dom, m_full, S_Q, qk_scale,
            BLOCK_M_TAIL, True, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    _store_tile(DV, dv0, offs_n, offs_d0, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    _store_tile(DK, dk0 * scale, offs_n, offs_d0, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    if HAS_D1:
        _store_tile(DV, dv1, offs_n, offs_d1, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        _store_tile(DK, dk1 * scale, offs_n, offs_d1, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D1)


@triton.heuristics(
    {
        "BLOCK_M_TAIL": lambda a: tail_block(a["S_Q"], a["BLOCK_M"]),
        "BLOCK_N_TAIL": lambda a: tail_block(a["S_K"], a["BLOCK_N"]),
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit
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
    BLOCK_M_TAIL: tl.constexpr, BLOCK_N_TAIL: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (cdiv(S_K, BLOCK_N), B * H).
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
    start_n = pid_n * BLOCK_N
    if BLOCK_N_TAIL > 0:
        if start_n + BLOCK_N > S_K:  # the last, partial key block: a narrower tile
            _dkdv_tile(
                Q, K, V, DO, DK, DV, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
                start_n, S_Q, S_K, qk_scale, scale, BLOCK_N_TAIL, True, BLOCK_M, BLOCK_M_TAIL,
                HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
            )  # fmt: skip
        else:
            _dkdv_tile(
                Q, K, V, DO, DK, DV, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
                start_n, S_Q, S_K, qk_scale, scale, BLOCK_N, False, BLOCK_M, BLOCK_M_TAIL,
                HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
            )  # fmt: skip
    else:
        _dkdv_tile(
            Q, K, V, DO, DK, DV, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
            start_n, S_Q, S_K, qk_scale, scale, BLOCK_N, False, BLOCK_M, BLOCK_M_TAIL,
            HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# 3. dQ: one query block per program, key tiles streamed
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
    if MASK_N:  # keys past S_K load as 0 (so dS K adds 0 there); zero P too, for clarity of dS
        p = tl.where(offs_n[None, :] < S_K, p, 0.0)
    ds = p * (dp - delta[:, None])
    dq0 = tl.dot(ds.to(k0.dtype), k0, dq0, input_precision=PRECISION)
    if HAS_D1:
        dq1 = tl.dot(ds.to(k1.dtype), k1, dq1, input_precision=PRECISION)
    return dq0, dq1


@triton.jit
def _dq_tile(
    Q, K, V, DO, DQ, LSE, DELTA,
    stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm,
    start_m, S_Q, S_K, qk_scale, scale,
    BLOCK_M: tl.constexpr, MASK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_TAIL: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    q0 = _load_tile(Q, offs_m, offs_d0, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    do0 = _load_tile(DO, offs_m, offs_d0, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    q1 = q0  # placeholders when HAS_D1 is False (never used)
    do1 = do0
    if HAS_D1:
        q1 = _load_tile(Q, offs_m, offs_d1, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        do1 = _load_tile(DO, offs_m, offs_d1, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D1)
    if MASK_M:  # rows past S_Q: finite placeholders, never stored
        lse = tl.load(LSE + offs_m, mask=offs_m < S_Q, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=offs_m < S_Q, other=0.0)
    else:
        lse = tl.load(LSE + offs_m)
        delta = tl.load(DELTA + offs_m)
    lse2 = lse * 1.4426950408889634  # natural log -> log2 units of the scaled scores
    dq0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)  # untouched (folded away) without D1

    n_full = (S_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq0, dq1 = _dq_step(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, K, V, stride_kn, stride_vn, start_n, S_K, qk_scale,
            BLOCK_N, False, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    if BLOCK_N_TAIL > 0:
        dq0, dq1 = _dq_step(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, K, V, stride_kn, stride_vn, n_full, S_K, qk_scale,
            BLOCK_N_TAIL, True, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    _store_tile(DQ, dq0 * scale, offs_m, offs_d0, stride_dqm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    if HAS_D1:
        _store_tile(DQ, dq1 * scale, offs_m, offs_d1, stride_dqm, S_Q, HEAD_DIM, MASK_M, MASK_D1)


@triton.heuristics(
    {
        "BLOCK_M_TAIL": lambda a: tail_block(a["S_Q"], a["BLOCK_M"]),
        "BLOCK_N_TAIL": lambda a: tail_block(a["S_K"], a["BLOCK_N"]),
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    H, S_Q, S_K, qk_scale, scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_M_TAIL: tl.constexpr, BLOCK_N_TAIL: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (cdiv(S_Q, BLOCK_M), B * H).
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += pid_bh.to(tl.int64) * S_Q
    DELTA += pid_bh.to(tl.int64) * S_Q
    start_m = pid_m * BLOCK_M
    if BLOCK_M_TAIL > 0:
        if start_m + BLOCK_M > S_Q:  # the last, partial query block: a narrower tile
            _dq_tile(
                Q, K, V, DO, DQ, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm,
                start_m, S_Q, S_K, qk_scale, scale, BLOCK_M_TAIL, True, BLOCK_N, BLOCK_N_TAIL,
                HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
            )  # fmt: skip
        else:
            _dq_tile(
                Q, K, V, DO, DQ, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm,
                start_m, S_Q, S_K, qk_scale, scale, BLOCK_M, False, BLOCK_N, BLOCK_N_TAIL,
                HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
            )  # fmt: skip
    else:
        _dq_tile(
            Q, K, V, DO, DQ, LSE, DELTA, stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm,
            start_m, S_Q, S_K, qk_scale, scale, BLOCK_M, False, BLOCK_N, BLOCK_N_TAIL,
            HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip


_bwd_dkdv_tuned = triton.autotune(
    configs=autotune_configs(), key=["S_Q", "S_K", "HEAD_DIM", "PRECISION"], cache_results=True
)(_bwd_dkdv_kernel)
_bwd_dq_tuned = triton.autotune(
    configs=autotune_configs(), key=["S_Q", "S_K", "HEAD_DIM", "PRECISION"], cache_results=True
)(_bwd_dq_kernel)


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
) -> None:
    """Write dq (B, H, S_q, D), dk and dv (B, H, S_k, D) through their strides (each with a
    contiguous last dim); every element is written. lse is the forward's (B, H, S_q) fp32."""
    do, q, k, v, o = _rows(do), _rows(q), _rows(k), _rows(v), _rows(o)
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        if g.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got strides {g.stride()}")
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    if dq.numel() == 0 and dk.numel() == 0:
        return
    if s_q == 0 or s_k == 0:  # no scores: the gradients are zero (and o was all zero, or empty)
        dq.zero_(), dk.zero_(), dv.zero_()
        return
    delta = torch.empty(b, h, s_q, dtype=torch.float32, device=q.device)  # (B, H, S_q)
    _bwd_preprocess[(triton.cdiv(s_q, PRE_BLOCK_M), b * h)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        h, s_q,
        HEAD_DIM=d, BLOCK_M=PRE_BLOCK_M, BLOCK_D=triton.next_power_of_2(max(d, 16)),
    )  # fmt: skip
    meta = {"HEAD_DIM": d, "PRECISION": dot_precision(q.dtype)}
    qkv_strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
    )  # fmt: skip
    dkdv_args = (
        q, k, v, do, dk, dv, lse, delta, *qkv_strides,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        h, s_q, s_k, scale * LOG2E, scale,
    )  # fmt: skip
    dq_args = (
        q, k, v, do, dq, lse, delta, *qkv_strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        h, s_q, s_k, scale * LOG2E, scale,
    )  # fmt: skip
    if AUTOTUNE:
        _bwd_dkdv_tuned[lambda m: (triton.cdiv(s_k, m["BLOCK_N"]), b * h)](*dkdv_args, **meta)
        _bwd_dq_tuned[lambda m: (triton.cdiv(s_q, m["BLOCK_M"]), b * h)](*dq_args, **meta)
    else:
        cfg = pinned(DKDV_CONFIGS, d)
        _bwd_dkdv_kernel[(triton.cdiv(s_k, cfg.block_n), b * h)](*dkdv_args, **meta, **cfg.kwargs())
        cfg = pinned(DQ_CONFIGS, d)
        _bwd_dq_kernel[(triton.cdiv(s_q, cfg.block_m), b * h)](*dq_args, **meta, **cfg.kwargs())
