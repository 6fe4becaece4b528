"""Fused attention, backward stage, one launch: a whole (batch, head) per program, for S <= 512.

The alternative to kernels/flash_attention_bwd.py's two launches that the first GPU run settles
(kernels/variants.py; perf/notes_attention.md). Same math (S = scale Q K^T, P = exp(S - lse),
dV = P^T dO, dP = dO V^T, dS = P (dP - Delta), dQ = scale dS K, dK = scale dS^T Q), scheduled so
that one program owns a (batch, head):

  1. Delta = rowsum(dO O) for all its queries (stored), and its fp32 dQ accumulator zeroed;
  2. for each key block (K, V and fp32 dK, dV held in registers), stream the query blocks:
     S, dP, dV += P^T dO, dK += dS^T Q, and dQ_rows += dS K read-modified-written in the
     accumulator. Only this program touches those rows, and in a fixed order: deterministic,
     no atomics;
  3. dQ = scale * accumulator, rounded once to the input dtype.

Head dims 16, 32 and 64 (see ONEPASS_CONFIGS and onepass_supported for why not 40 or 80). That is 5 products of 2 * S_q * S_k * D FLOPs per (key, query) tile pair (2.5x the forward's 2),
against 7 in the two-launch backward, which recomputes S and dP for dQ in a kernel of its own.
The price: the accumulator's traffic (S_q * D fp32 read and written once per key block, from L2
at ViT sizes: 4 key blocks of 64 at S = 197, ~400 KB a head) and B * H programs only, each one
serial over all tile pairs of its head: 3,072 at ViT-B/16 (B 256, H 12), 2,048 at ViT-H/14 (B 128,
H 16), many more than the 132 SMs hold, but little parallelism at small batch. S is capped at
512 (DQ_ONEPASS_MAX_S): the accumulator of a head is S * D * 4 bytes and the serial work grows
as S^2. Intra-program ordering: the accumulator is written and re-read by the same program
through different register layouts, so a barrier closes each step that stores it.

Work and traffic per (batch, head): FLOPs 10 * S_q * S_k * D (+ 2 * S_q * S_k exp2); HBM q, k, v,
dO read once (dO and O twice: the Delta pass, then the key loop), o once, dq, dk, dv written
once, the fp32 accumulator S_q * D * 8 bytes per key block (L2). Selected by
flash_attention(..., bwd="onepass") (AttentionParams.bwd, kernels/flash_attention.py), or by the
benchmark's "triton-bwd1" provider; the default stays the two-launch backward until a GPU has timed both.
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
    config_kind,
    dot_precision,
    head_dim_split,
    needs_int64_rows,
    tail_block,
)

DQ_ONEPASS_MAX_S = 512
# Head dims up to 64 only (ViT-B/16, corenet's H/16, the multi-scale shapes). The kernel holds K,
# V, dK, dV and a dQ tile at once: at D 80 (64 + 16) every tile compiled for sm_90a and sm_80
# spilled (24-2,400 B of stack, 32 x 32 to 64 x 64, 4 or 8 warps, Triton 3.6 and 3.8), so ViT-H/14
# keeps the two-launch backward. BLOCK_M is the streamed (query) block, BLOCK_N the held (key) one.
# 8 warps on 64 x 64 take 208 registers on sm_90a. 4 warps spilled 40-56 B while the last query
# step was a second, narrower copy of the step; with one step they take 240-243 registers and do
# not spill, so the GPU timing may pick either. Registers and spills:
# perf/results/compiled_kernels.csv. Not yet timed.
DQ_ONEPASS_MAX_D = 64
# fp32 with TF32 dots is not offered (attention_bwd takes the two-launch backward): 64 x 64 on 8
# warps spills 80-96 B with fp32 operands, and a spill-free 32 x 64 tile would not recompute the
# forward's 64 x 64 scores bit for bit, which dQ's cancellation needs (the orientation finding).
# IEEE fp32 (the GPU tests): the forward's 32-query blocks (IEEE_FMA_CONFIG) against 16 keys. Its
# 32 x 32 spilled on sm_90a once every query step became a full, masked BLOCK_M step
# (_onepass_key_block): 312 B on 4 warps, 8 B on 8 under Triton 3.6. The FMA units sum each score
# over D in order whatever the tile, so the scores stay the forward's.
ONEPASS_CONFIGS = ConfigTable(
    sm90={64: BlockConfig(64, 64, 8, 1)},
    sm80={64: BlockConfig(32, 32, 4, 1)},
    ieee={64: BlockConfig(32, 16, 4, 1)},
)


@triton.jit
def _onepass_step(
    dk0, dk1, dv0, dv1, k0, k1, v0, v1, offs_n, Q, DO, LSE, DELTA, DQACC,
    stride_qm, stride_dom, start_m, S_Q, S_K, qk_scale,
    BLOCK_M: tl.constexpr, MASK_M: tl.constexpr, MASK_N: tl.constexpr, DQ_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One query tile against the held keys: dK, dV accumulate; dQ's rows read-modify-written."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    q0 = _load_tile(Q, offs_m, offs_d0, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    do0 = _load_tile(DO, offs_m, offs_d0, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    if MASK_M:  # lse = +inf past S_Q: P^T = 0 there (Delta and dO are 0 there too)
        lse = tl.load(LSE + offs_m, mask=offs_m < S_Q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=offs_m < S_Q, other=0.0)
    else:
        lse = tl.load(LSE + offs_m)
        delta = tl.load(DELTA + offs_m)
    # S and dP in (queries, keys) orientation, Q K^T as the forward computes it (the same tiles):
    # P must be consistent with the forward's lse for the rows of dS to sum to 0, which dQ's
    # cancellation needs (dQ_i = sum_j dS_ij k_j; with large scores, an S^T = K Q^T recomputed
    # in the other orientation rounds differently and gave 20x the dQ error under the interpreter).
    qk = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    dp = tl.dot(do0, tl.trans(v0), input_precision=PRECISION)
    if HAS_D1:
        q1 = _load_tile(Q, offs_m, offs_d1, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        do1 = _load_tile(DO, offs_m, offs_d1, stride_dom, S_Q, HEAD_DIM, MASK_M, MASK_D1)
        qk = tl.dot(q1, tl.trans(k1), qk, input_precision=PRECISION)
        dp = tl.dot(do1, tl.trans(v1), dp, input_precision=PRECISION)
    p = tl.math.exp2(qk * qk_scale - (lse * 1.4426950408889634)[:, None])
    if MASK_N:  # keys past S_K load as 0 and may get P = inf: they must not reach dQ (inf * 0 = NaN)
        p = tl.where(offs_n[None, :] < S_K, p, 0.0)
    ds = p * (dp - delta[:, None])  # fp32, rounded to the input dtype only as a dot operand
    pT = tl.trans(p).to(do0.dtype)  # (BLOCK_N, BLOCK_M)
    dsT = tl.trans(ds).to(q0.dtype)
    ds = ds.to(k0.dtype)
    dv0 = tl.dot(pT, do0, dv0, input_precision=PRECISION)
    dk0 = tl.dot(dsT, q0, dk0, input_precision=PRECISION)
    # dQ rows += dS K, in the fp32 accumulator (the 5th product)
    acc_ptrs = DQACC + offs_m[:, None] * DQ_W + offs_d0[None, :]
    if MASK_M:
        acc0 = tl.load(acc_ptrs, mask=offs_m[:, None] < S_Q, other=0.0)
        tl.store(acc_ptrs, tl.dot(ds, k0, acc0, input_precision=PRECISION), mask=offs_m[:, None] < S_Q)
    else:
        tl.store(acc_ptrs, tl.dot(ds, k0, tl.load(acc_ptrs), input_precision=PRECISION))
    if HAS_D1:
        dv1 = tl.dot(pT, do1, dv1, input_precision=PRECISION)
        dk1 = tl.dot(dsT, q1, dk1, input_precision=PRECISION)
        acc_ptrs1 = DQACC + offs_m[:, None] * DQ_W + offs_d1[None, :]
        if MASK_M:
            acc1 = tl.load(acc_ptrs1, mask=offs_m[:, None] < S_Q, other=0.0)
            tl.store(acc_ptrs1, tl.dot(ds, k1, acc1, input_precision=PRECISION), mask=offs_m[:, None] < S_Q)
        else:
            tl.store(acc_ptrs1, tl.dot(ds, k1, tl.load(acc_ptrs1), input_precision=PRECISION))
    # the next step (or the final pass) reads accumulator rows written here, maybe by other threads
    tl.debug_barrier()
    return dk0, dk1, dv0, dv1


@triton.jit
def _onepass_key_block(
    Q, K, V, DO, DK, DV, LSE, DELTA, DQACC,
    stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
    start_n, S_Q, S_K, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, MASK_M: tl.constexpr,
    DQ_W: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    HAS_D1: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Keys [start_n, start_n + BLOCK_N) held, every query streamed past; dK, dV stored."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
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
    dk1 = tl.zeros([BLOCK_N, BLOCK_D1], dtype=tl.float32)
    dv1 = tl.zeros([BLOCK_N, BLOCK_D1], dtype=tl.float32)
    # Every query step is BLOCK_M rows, the last one masked (MASK_M masks them all, so the step is
    # compiled once): the forward's query blocks, whose scores dQ must recompute bit for bit
    # (_onepass_step). A narrower tail step (16 rows at S 197, as tail_block gives) multiplies
    # tiles of another shape, and those need not round the same: under the interpreter, OpenBLAS's
    # AVX-512 (SkylakeX) sgemm gives a 16-row product other last bits than the 64-row one, which
    # gave the last query rows 9x PyTorch's dQ error at scores ~-100; on Hopper a 16-row tile
    # cannot be a wgmma (64 rows), so it ran as mma.sync against the forward's wgmma. Price: at
    # S 197, 256 query rows per key block instead of 208 (perf/notes_attention.md already counted
    # 256); one inlined step instead of two took sm_90a's 64 x 64 at D 64 from 255 to 208 registers.
    for start_m in range(0, S_Q, BLOCK_M):
        dk0, dk1, dv0, dv1 = _onepass_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, offs_n, Q, DO, LSE, DELTA, DQACC,
            stride_qm, stride_dom, start_m, S_Q, S_K, qk_scale,
            BLOCK_M, MASK_M, MASK_N, DQ_W, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    _store_tile(DV, dv0, offs_n, offs_d0, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    _store_tile(DK, dk0 * scale, offs_n, offs_d0, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    if HAS_D1:
        _store_tile(DV, dv1, offs_n, offs_d1, stride_dvn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        _store_tile(DK, dk1 * scale, offs_n, offs_d1, stride_dkn, S_K, HEAD_DIM, MASK_N, MASK_D1)


@triton.heuristics(
    {
        "BLOCK_N_TAIL": lambda a: tail_block(a["S_K"], a["BLOCK_N"]),
        # the last query block is partial: every query step is masked (see _onepass_key_block)
        "MASK_M": lambda a: a["S_Q"] % a["BLOCK_M"] != 0,
        "BLOCK_D": lambda a: triton.next_power_of_2(max(a["HEAD_DIM"], 16)),
        "DQ_W": lambda a: sum(head_dim_split(a["HEAD_DIM"])),  # the accumulator's row: D padded
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit(do_not_specialize=["H", "S_Q", "S_K"])
def _bwd_onepass_kernel(
    Q, K, V, Out, DO, DQ, DK, DV, LSE, DELTA, DQACC,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, S_Q, S_K, qk_scale, scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    BLOCK_N_TAIL: tl.constexpr, MASK_M: tl.constexpr, BLOCK_D: tl.constexpr, DQ_W: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (B * H,): one program per (batch, head).
    if INT64_ROWS:  # offsets inside one head pass 2**31 (flash_attention_fwd.needs_int64_rows)
        stride_qm = tl.cast(stride_qm, tl.int64)
        stride_kn = tl.cast(stride_kn, tl.int64)
        stride_vn = tl.cast(stride_vn, tl.int64)
        stride_om = tl.cast(stride_om, tl.int64)
        stride_dom = tl.cast(stride_dom, tl.int64)
        stride_dqm = tl.cast(stride_dqm, tl.int64)
        stride_dkn = tl.cast(stride_dkn, tl.int64)
        stride_dvn = tl.cast(stride_dvn, tl.int64)
    pid_bh = tl.program_id(0)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    Out += off_b * stride_ob + off_h * stride_oh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dvb + off_h * stride_dvh
    LSE += pid_bh.to(tl.int64) * S_Q
    DELTA += pid_bh.to(tl.int64) * S_Q
    DQACC += pid_bh.to(tl.int64) * S_Q * DQ_W  # (S_Q, DQ_W) fp32 of this head

    # 1. Delta = rowsum(dO O) per query, and the dQ accumulator zeroed
    offs_d = tl.arange(0, BLOCK_D)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    for start_m in range(0, S_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < S_Q
        o = _load_tile(Out, offs_m, offs_d, stride_om, S_Q, HEAD_DIM, True, BLOCK_D != HEAD_DIM)
        do = _load_tile(DO, offs_m, offs_d, stride_dom, S_Q, HEAD_DIM, True, BLOCK_D != HEAD_DIM)
        tl.store(DELTA + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=row_ok)
        tl.store(DQACC + offs_m[:, None] * DQ_W + offs_d0[None, :], tl.zeros([BLOCK_M, BLOCK_D0], tl.float32),
                 mask=row_ok[:, None])  # fmt: skip
        if HAS_D1:
            tl.store(DQACC + offs_m[:, None] * DQ_W + offs_d1[None, :], tl.zeros([BLOCK_M, BLOCK_D1], tl.float32),
                     mask=row_ok[:, None])  # fmt: skip
    tl.debug_barrier()

    # 2. key blocks: full ones unmasked, then the S_K % BLOCK_N tail
    n_full = (S_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        _onepass_key_block(
            Q, K, V, DO, DK, DV, LSE, DELTA, DQACC,
            stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
            start_n, S_Q, S_K, qk_scale, scale, BLOCK_M, BLOCK_N, False, MASK_M,
            DQ_W, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    if BLOCK_N_TAIL > 0:
        _onepass_key_block(
            Q, K, V, DO, DK, DV, LSE, DELTA, DQACC,
            stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn,
            n_full, S_Q, S_K, qk_scale, scale, BLOCK_M, BLOCK_N_TAIL, True, MASK_M,
            DQ_W, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    # 3. dQ = scale * accumulator, rounded once to the input dtype
    for start_m in range(0, S_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m[:, None] < S_Q
        acc0 = tl.load(DQACC + offs_m[:, None] * DQ_W + offs_d0[None, :], mask=row_ok, other=0.0)
        _store_tile(DQ, acc0 * scale, offs_m, offs_d0, stride_dqm, S_Q, HEAD_DIM, True, MASK_D0)
        if HAS_D1:
            acc1 = tl.load(DQACC + offs_m[:, None] * DQ_W + offs_d1[None, :], mask=row_ok, other=0.0)
            _store_tile(DQ, acc1 * scale, offs_m, offs_d1, stride_dqm, S_Q, HEAD_DIM, True, MASK_D1)


def onepass_supported(s_q: int, d: int) -> bool:
    """S_q <= 512 and a head dim in one power-of-two part <= 64 (16, 32, 64; D <= 16 pads to 16):
    a split head dim (40 = 32 + 16) spilled 144-176 B at both targets."""
    d0, d1 = head_dim_split(d)
    return 1 <= s_q <= DQ_ONEPASS_MAX_S and d1 == 0 and d0 <= DQ_ONEPASS_MAX_D


def attention_bwd_onepass(
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
    """As kernels.flash_attention_bwd.attention_bwd (which calls this), in one launch; inputs with
    a contiguous last dim, S_q <= DQ_ONEPASS_MAX_S, S_q and S_k >= 1."""
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    if not onepass_supported(s_q, d):
        raise ValueError(
            f"the one-launch backward takes 1 <= S_q <= {DQ_ONEPASS_MAX_S} and D <= {DQ_ONEPASS_MAX_D} in one "
            f"power-of-two part, got S_q {s_q}, D {d}"
        )
    d0, d1 = head_dim_split(d)
    delta = torch.empty(b, h, s_q, dtype=torch.float32, device=q.device)  # (B, H, S_q)
    dq_acc = torch.empty(b * h, s_q, d0 + d1, dtype=torch.float32, device=q.device)  # zeroed in-kernel
    precision = dot_precision(q.dtype)
    cfg = ONEPASS_CONFIGS.pick(d, config_kind(q.dtype, precision, q.is_cuda), arch_of(q))
    _bwd_onepass_kernel[(b * h,)](
        q, k, v, o, do, dq, dk, dv, lse, delta, dq_acc,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        h, s_q, s_k, scale * LOG2E, scale,
        HEAD_DIM=d, PRECISION=precision, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        INT64_ROWS=needs_int64_rows(do, q, k, v, o, dq, dk, dv),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
