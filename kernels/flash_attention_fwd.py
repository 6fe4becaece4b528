"""Fused attention, forward stage: O = softmax(scale * Q K^T) V, plus the log-sum-exp of each row.

Shapes: q (B, H, S_q, D), k and v (B, H, S_k, D), any strides with the last dim contiguous (views
into the ViT's (B, S, 3, H, D) qkv buffer need no copy); o (B, H, S_q, D), written through its
strides (the launcher lays it out as (B, S_q, H, D) memory, so the model's `transpose(1, 2)
.reshape(B, S, H * D)` is free); lse (B, H, S_q) fp32, natural log. Non-causal, no dropout.

FA2's schedule: one program per (query block, batch x head); it keeps its Q tile and an fp32 output
accumulator in registers and streams K and V tiles past them with an online softmax (running row
max m and row sum l in fp32, the accumulator rescaled by exp(m_old - m_new)). Scores never touch
memory. Exponentials are exp2 of scores pre-multiplied by scale * log2(e) (one FMA per score).

Work and traffic per (batch, head), elt = bytes per element:
    FLOPs  4 * S_q * S_k * D (Q K^T and P V), plus S_q * S_k exp2
    bytes  (2 * S_q + 2 * S_k) * D * elt from HBM (q, o, k, v) + 4 * S_q (lse); K and V are read
           again by every query block, from L2 (S_k * D * elt * 2 * cdiv(S_q, BLOCK_M)).
At ViT shapes (S ~ 200-400, D 64-80) this is 100-130 FLOP/byte, below the H200's nominal
balance point (~206 bf16 FLOP/byte at 989 TFLOP/s and 4.8 TB/s); counting the padding and the
tensor cores' real efficiency on such short loops, both limits matter (perf/notes_attention.md).

Two ways this avoids paying for padding (the Triton tutorial pads D to a power of two and S to a
multiple of the block):
  * Head dim split: D = BLOCK_D0 + BLOCK_D1 with BLOCK_D0 the largest power of two <= D (at most
    128) and BLOCK_D1 the next power of two >= the rest, at least 16 (tl.dot's minimum K).
    80 = 64 + 16 and 96 = 64 + 32 cost exactly D; 40 = 32 + 16 costs 48 instead of 64. Every
    product over D is written as two dots (Q0 K0^T + Q1 K1^T; P V0 and P V1 into two accumulators).
  * Sequence tails: the streamed loop runs its full blocks unmasked and the remainder
    r = S_k % BLOCK_N as one masked step of width max(16, next_pow2(r)) (a constexpr: one compile
    per tail class), so S = 197 streams 192 + 16 keys, not 256. The held query block is 64 rows;
    when S_q % 64 != 0 (MASK_M) every program masks its one Q load and O store (the loop
    needs no row mask), and the last block computes up to 63 idle rows. Forward work at S = 197:
    256 x 208 score tiles (128 x 128 blocks: 256 x 256; exact: 197 x 197).
    A narrow (16-row) tile for the last block was tried and dropped: in one kernel it raises every
    program's registers (mma.sync layout; D = 80: 127 -> 228 registers), and as a second launch it
    re-reads every head's K and V from HBM (2 extra passes, +50% forward traffic).

Limits: D in [1, 128] (D < 16 pads to 16; kernels/flash_attention.py says why not 256); fp16, bf16 and fp32 inputs (q, k, v one dtype);
accumulation and softmax statistics in fp32; fp32 inputs use IEEE fp32 products unless
torch.get_float32_matmul_precision() allows TF32 (then tl.dot's TF32); P is rounded to the input
dtype before P V, as in FlashAttention. Under TRITON_INTERPRET=1 bf16 is not exact (the
interpreter's bf16 arithmetic), so bf16 is checked on a GPU only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from kernels.variants import autotune_on

LOG2E = math.log2(math.e)


# --------------------------------------------------------------------------------------------------
# Block shapes shared by the forward and backward stages
# --------------------------------------------------------------------------------------------------
# Experiment switch (perf/bench_attention.py's "triton-pad" provider): pad D to one power-of-two
# block as the Triton tutorial does (80 -> 128), to measure what the split saves. Read at launch.
PAD_HEAD_DIM = False


def head_dim_split(d: int) -> tuple[int, int]:
    """(BLOCK_D0, BLOCK_D1): a power-of-two part and a power-of-two remainder part (0 if none).

    80 -> (64, 16), 96 -> (64, 32), 40 -> (32, 16: 8 used), 128 -> (128, 0), 8 -> (16, 0: 8 used).
    """
    if not 1 <= d <= 256:
        raise ValueError(f"head dim must be in [1, 256], got {d}")
    if d <= 16:
        return 16, 0
    if PAD_HEAD_DIM and d <= 128:
        return triton.next_power_of_2(d), 0
    d0 = min(128, 1 << (d.bit_length() - 1))
    rest = d - d0
    return d0, (0 if rest == 0 else max(16, triton.next_power_of_2(rest)))


def tail_block(n: int, block: int) -> int:
    """Width of the one masked step after the full blocks of a streamed loop (0: none)."""
    r = n % block
    return 0 if r == 0 else min(block, max(16, triton.next_power_of_2(r)))


# triton.heuristics for HEAD_DIM: BLOCK_D0, BLOCK_D1 and whether each part needs a column mask.
# BLOCK_D1 is a placeholder 16 when HAS_D1 is False (never loaded).
HEAD_DIM_HEURISTICS = {
    "BLOCK_D0": lambda a: head_dim_split(a["HEAD_DIM"])[0],
    "HAS_D1": lambda a: head_dim_split(a["HEAD_DIM"])[1] > 0,
    "BLOCK_D1": lambda a: max(16, head_dim_split(a["HEAD_DIM"])[1]),
    "MASK_D0": lambda a: head_dim_split(a["HEAD_DIM"])[0] > a["HEAD_DIM"],
    "MASK_D1": lambda a: sum(head_dim_split(a["HEAD_DIM"])) > a["HEAD_DIM"],
}


@dataclass(frozen=True)
class BlockConfig:
    """Pinned launch parameters of one kernel (used unless CATLIP_AUTOTUNE=1)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# IEEE fp32 products (fp32 inputs at "highest" matmul precision) run on the FMA units, not the
# tensor cores: a test and debugging path. Small tiles keep its registers, spills and compile
# time down on a GPU (64 x 64: 19 s to compile the dK/dV kernel, 43 KB of spills; 32 x 32: 3 s).
IEEE_FMA_CONFIG = BlockConfig(32, 32, 4, 1)


@dataclass(frozen=True)
class ConfigTable:
    """A kernel's pinned launch parameters, by padded head width (BLOCK_D0 + BLOCK_D1: 48 for
    D = 40, 80 for 80, 96 for 96); the first width >= the head's is taken.

    sm90: 16-bit inputs on Hopper, and the default; sm80: entries where Ampere (mma.sync, 164 KB
    of shared memory) needs other tiles; tf32: fp32 inputs with TF32 dots; ieee: fp32 inputs at
    "highest" precision on a GPU (FMA units). Every entry compiles without spills under Triton
    3.6 and 3.8 (perf/results/compiled_kernels.csv, checked in CI by tests/test_compiled_kernels.py).
    """

    sm90: dict[int, BlockConfig]
    sm80: dict[int, BlockConfig] = field(default_factory=dict)
    tf32: dict[int, BlockConfig] = field(default_factory=dict)
    ieee: dict[int, BlockConfig] = field(default_factory=dict)

    def pick(self, d: int, kind: str = "16", arch: int = 9) -> BlockConfig:
        """kind: "16" (fp16/bf16), "tf32" or "ieee" (fp32, see config_kind); arch: the compute
        capability's major (9 Hopper, 8 Ampere). The sm80 and tf32 entries override the sm90
        ones of the same width; ieee has its own (IEEE_FMA_CONFIG where it has none)."""
        d0, d1 = head_dim_split(d)
        table = {
            "16": {**self.sm90, **(self.sm80 if arch < 9 else {})},
            "tf32": {**self.sm90, **self.tf32},
            "ieee": dict(self.ieee),
        }[kind]
        for width, cfg in sorted(table.items()):
            if d0 + d1 <= width:
                return cfg
        if kind == "ieee":
            return IEEE_FMA_CONFIG
        raise ValueError(f"no pinned configuration for head dim {d} (padded {d0 + d1})")


def config_kind(dtype: torch.dtype, precision: str, on_gpu: bool) -> str:
    """Which of a ConfigTable's entries a launch takes. The interpreter takes the default ("16")
    for every dtype: its tiles only need to be the forward's (the one-launch backward's dQ relies
    on recomputing the forward's scores bit for bit)."""
    if dtype == torch.float32 and on_gpu:
        return "ieee" if precision == "ieee" else "tf32"
    return "16"


def arch_of(t: torch.Tensor) -> int:
    """The compute capability's major of t's GPU; 9 (the default tables) on the CPU interpreter."""
    return torch.cuda.get_device_capability(t.device)[0] if t.is_cuda else 9


# 64-row blocks keep the tails of S = 197 / 257 small (a 128-row block would pad 197 to 256 again)
# and fill one warpgroup's wgmma (M = 64 per 4 warps) on Hopper. Registers, spills and shared
# memory of every entry: perf/results/compiled_kernels.csv (sm_90a bf16 at D 64 / 80 / 128:
# 107-114 / 128 / 168 registers, 56 / 70 / 112 KB). Not yet timed on a GPU:
# perf/bench_attention.py --autotune prints the winners to pin here.
FWD_CONFIGS = ConfigTable(
    sm90={64: BlockConfig(64, 64, 4, 3), 128: BlockConfig(64, 64, 4, 3)},
    # Ampere above D 64: 64 x 64 on 4 warps spills 128-152 B at D 128; 32 x 64 takes 210-228 registers
    sm80={128: BlockConfig(32, 64, 4, 3)},
)


def pinned(table: ConfigTable, d: int, ieee_on_gpu: bool = False, *, kind: str | None = None, arch: int = 9):
    """table.pick, with a boolean switch too: ieee_on_gpu selects the FMA-unit configs."""
    return table.pick(d, kind or ("ieee" if ieee_on_gpu else "16"), arch)


# CATLIP_AUTOTUNE=1's search space per kernel: the pinned tile and three neighbours (taller,
# wider, more warps or stages), each compiling without spills for sm_90a at D 64 and 80 under
# Triton 3.6 and 3.8. Of the 27 candidates below, 16 spill in the dK/dV kernel at D 80 (e.g.
# 64 x 32 and 128 x 32 tiles, and 64 x 128 on 4 warps): perf/results/compiled_kernels.csv.
_AUTOTUNE = {
    "fwd": [(64, 64, 4, 3), (64, 128, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2)],
    "dq": [(64, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 3), (64, 128, 4, 2)],
    "dkdv": [(64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (64, 64, 4, 3)],
}


def autotune_checked(d: int) -> bool:
    """CATLIP_AUTOTUNE=1 applies at the padded head widths its spaces were compiled at (64, 80:
    the ViTs'); other head dims keep their pinned configs."""
    return sum(head_dim_split(d)) in (64, 80)


def autotune_configs(kernel: str | None = None) -> list[triton.Config]:
    """CATLIP_AUTOTUNE=1: the search space of "fwd", "dq" or "dkdv" (tried on the first call of
    each shape class); all three kernels' configs without an argument."""
    tiles = _AUTOTUNE[kernel] if kernel else sorted({t for v in _AUTOTUNE.values() for t in v})
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in tiles
    ]


def autotune_candidates() -> list[triton.Config]:
    """The grid autotune_configs() was picked from (perf/compile_kernels.py --candidates)."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm in (64, 128)
        for bn in (32, 64, 128)
        for w in (4, 8)
        for st in (2, 3, 4)
        if not (bm == 128 and w == 4)  # a 128-row wgmma tile needs two warpgroups
    ]


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 follows torch's matmul setting (IEEE unless TF32 is allowed)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # ignored by tl.dot for 16-bit inputs


# --------------------------------------------------------------------------------------------------
# Tile loads and stores (masks only where the constexpr flags say a tile crosses an edge)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(
    base, offs_r, offs_d, stride_r, n_rows, HEAD_DIM: tl.constexpr, MASK_R: tl.constexpr, MASK_D: tl.constexpr
):
    """(len(offs_r), len(offs_d)) tile of a row-major matrix; masked elements read as 0."""
    ptrs = base + offs_r[:, None] * stride_r + offs_d[None, :]
    if MASK_R:
        if MASK_D:
            x = tl.load(ptrs, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            x = tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
    else:
        if MASK_D:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _store_tile(
    base,
    x,
    offs_r,
    offs_d,
    stride_r,
    n_rows,
    HEAD_DIM: tl.constexpr,
    MASK_R: tl.constexpr,
    MASK_D: tl.constexpr,
):
    ptrs = base + offs_r[:, None] * stride_r + offs_d[None, :]
    x = x.to(base.dtype.element_ty)
    if MASK_R:
        if MASK_D:
            tl.store(ptrs, x, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))
        else:
            tl.store(ptrs, x, mask=offs_r[:, None] < n_rows)
    else:
        if MASK_D:
            tl.store(ptrs, x, mask=offs_d[None, :] < HEAD_DIM)
        else:
            tl.store(ptrs, x)


# --------------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_step(
    acc0, acc1, m_i, l_i, q0, q1, K, V, stride_kn, stride_vn, start_n, S_K, qk_scale,
    BLOCK_N: tl.constexpr, MASK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One K/V tile of the online softmax; m_i and l_i are in log2 units of scaled scores."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    k0 = _load_tile(K, offs_n, offs_d0, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    qk = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    if HAS_D1:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        k1 = _load_tile(K, offs_n, offs_d1, stride_kn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        qk = tl.dot(q1, tl.trans(k1), qk, input_precision=PRECISION)
    if MASK_N:  # keys past S_K must get zero weight, not exp(0 - m)
        qk = tl.where(offs_n[None, :] < S_K, qk, float("-inf"))
    # Every step holds at least one real key, so m_new is finite from the first step on.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)  # 0 on the first step (m_i = -inf)
    l_i = l_i * alpha + tl.sum(p, 1)
    v0 = _load_tile(V, offs_n, offs_d0, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D0)
    # P is rounded to the input dtype for the tensor cores (FlashAttention does the same).
    acc0 = tl.dot(p.to(v0.dtype), v0, acc0 * alpha[:, None], input_precision=PRECISION)
    if HAS_D1:
        v1 = _load_tile(V, offs_n, offs_d1, stride_vn, S_K, HEAD_DIM, MASK_N, MASK_D1)
        acc1 = tl.dot(p.to(v1.dtype), v1, acc1 * alpha[:, None], input_precision=PRECISION)
    return acc0, acc1, m_new, l_i


@triton.heuristics(
    {
        "MASK_M": lambda a: a["S_Q"] % a["BLOCK_M"] != 0,  # the last query block is partial
        "BLOCK_N_TAIL": lambda a: tail_block(a["S_K"], a["BLOCK_N"]),
    }
)
@triton.heuristics(HEAD_DIM_HEURISTICS)
@triton.jit(do_not_specialize=["H", "S_Q", "S_K"])  # fewer compiled variants; S enters only bounds
def _attn_fwd_kernel(
    Q, K, V, Out, LSE,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, S_Q, S_K, qk_scale,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    MASK_M: tl.constexpr, BLOCK_N_TAIL: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
):  # fmt: skip
    # Grid (cdiv(S_Q, BLOCK_M), B * H): the query blocks of one head are neighbours in launch
    # order, so they run together and read the head's K and V from HBM once, from L2 after.
    if INT64_ROWS:  # offsets inside one head pass 2**31 (see needs_int64_rows): widen the row strides
        stride_qm = tl.cast(stride_qm, tl.int64)
        stride_kn = tl.cast(stride_kn, tl.int64)
        stride_vn = tl.cast(stride_vn, tl.int64)
        stride_om = tl.cast(stride_om, tl.int64)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)  # int64: B * stride_b can pass 2^31 elements
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    Out += off_b * stride_ob + off_h * stride_oh
    LSE += pid_bh.to(tl.int64) * S_Q

    # MASK_M: rows past S_Q load Q as 0 and store nothing; the key loop needs no row mask.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    q0 = _load_tile(Q, offs_m, offs_d0, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    q1 = q0  # placeholder when HAS_D1 is False (never used)
    if HAS_D1:
        q1 = _load_tile(Q, offs_m, offs_d1, stride_qm, S_Q, HEAD_DIM, MASK_M, MASK_D1)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)  # untouched (folded away) without D1

    n_full = (S_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc0, acc1, m_i, l_i = _fwd_step(
            acc0, acc1, m_i, l_i, q0, q1, K, V, stride_kn, stride_vn, start_n, S_K, qk_scale,
            BLOCK_N, False, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip
    if BLOCK_N_TAIL > 0:  # the last S_K % BLOCK_N keys: one masked step of 16, 32, ... columns
        acc0, acc1, m_i, l_i = _fwd_step(
            acc0, acc1, m_i, l_i, q0, q1, K, V, stride_kn, stride_vn, n_full, S_K, qk_scale,
            BLOCK_N_TAIL, True, HEAD_DIM, BLOCK_D0, BLOCK_D1, HAS_D1, MASK_D0, MASK_D1, PRECISION,
        )  # fmt: skip

    inv_l = 1.0 / l_i
    _store_tile(Out, acc0 * inv_l[:, None], offs_m, offs_d0, stride_om, S_Q, HEAD_DIM, MASK_M, MASK_D0)
    if HAS_D1:
        _store_tile(Out, acc1 * inv_l[:, None], offs_m, offs_d1, stride_om, S_Q, HEAD_DIM, MASK_M, MASK_D1)
    # Natural-log LSE of the scaled scores: (m + log2 l) / log2(e).
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    if MASK_M:
        tl.store(LSE + offs_m, lse, mask=offs_m < S_Q)
    else:
        tl.store(LSE + offs_m, lse)


_attn_fwd_tuned = triton.autotune(
    configs=autotune_configs("fwd"), key=["S_Q", "S_K", "HEAD_DIM", "PRECISION"], cache_results=True
)(_attn_fwd_kernel)


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------
def _check_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """The kernels index (B, H, S, D) through strides; only the last dim must be contiguous."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, H, S, D), got shape {tuple(x.shape)}")
    return x if x.stride(-1) == 1 else x.contiguous()


def needs_int64_rows(*tensors: torch.Tensor) -> bool:
    """Whether an offset inside one (batch, head) slice of a (B, H, S, D) view, row * stride + col,
    can pass 2**31 elements. The kernels offset each slice's base in int64 and the rows inside it
    in int32 unless told (INT64_ROWS): int64 row offsets cost registers in every tile load, and
    only a view of a huge activation (e.g. S-stride 3 H D of a batch-major buffer seen sequence
    first) needs them."""
    return any(t.shape[2] * t.stride(2) + t.shape[3] >= 2**31 for t in tensors)


def empty_bshd(b: int, h: int, s: int, d: int, like: torch.Tensor) -> torch.Tensor:
    """A (B, H, S, D) tensor laid out as (B, S, H, D) in memory (what the model reshapes next)."""
    return torch.empty(b, s, h, d, dtype=like.dtype, device=like.device).transpose(1, 2)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    autotune: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """o (B, H, S_q, D) and lse (B, H, S_q) fp32; o is written into `out` when given (any strides
    with a contiguous last dim, e.g. a view of a (B, S, H, D) buffer). autotune: search the
    configs (kernels.variants.autotune_on: None is the CATLIP_AUTOTUNE=1 switch, read now)."""
    q, k, v = _check_rows(q, "q"), _check_rows(k, "k"), _check_rows(v, "v")
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    if out is None:
        out = empty_bshd(b, h, s_q, d, q)
    lse = torch.empty(b, h, s_q, dtype=torch.float32, device=q.device)  # (B, H, S_q)
    if out.numel() == 0:
        return out, lse
    if s_k == 0:  # softmax over no keys: define the output as 0 (SDPA gives NaN)
        out.zero_(), lse.fill_(float("-inf"))
        return out, lse
    args = (
        q, k, v, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, s_q, s_k, scale * LOG2E,
    )  # fmt: skip
    precision = dot_precision(q.dtype)
    meta = {"HEAD_DIM": d, "PRECISION": precision, "INT64_ROWS": needs_int64_rows(q, k, v, out)}
    if autotune_on(autotune) and autotune_checked(d):
        grid = lambda meta: (triton.cdiv(s_q, meta["BLOCK_M"]), b * h)  # noqa: E731
        _attn_fwd_tuned[grid](*args, **meta)
    else:
        cfg = FWD_CONFIGS.pick(d, config_kind(q.dtype, precision, q.is_cuda), arch_of(q))
        _attn_fwd_kernel[(triton.cdiv(s_q, cfg.block_m), b * h)](
            *args, **meta, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out, lse
