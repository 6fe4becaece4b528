"""The kernels' variants in one place: each op's alternatives, the one switch that picks one, and
which of them a GPU run must still settle.

A variant is a field of the op's params dataclass, set per call by the keyword of the same name on
the op's public function; nothing about it is read from the environment. The first choice is the
default: what the model, the trainer, the tests and every benchmark provider not named below run.

  op (params)                        keyword         choices                       GPU run compares
  linear_bce (LinearBCEParams)       design          "fused" | "cublas"            triton / triton-cublas
  linear_bce                         dx_accumulate   "mm" | "addmm"                triton / triton-addmm
  linear_bce                         validate_labels True | False                  triton / triton-nocheck
  flash_attention, flash_attention_qkv (AttentionParams)
                                     bwd             "split" | "onepass"           triton / triton-bwd1

`VARIANTS` holds these rows; `settled=False` marks the ones not yet measured on a GPU, which
perf/gpu_suite.sh times side by side (perf/bench_linear_bce.py, perf/bench_attention.py providers
above; the notes are perf/notes_linear_bce.md and perf/notes_attention.md). When a run settles one,
its default becomes the winner and the row says so.

Launch configurations are pinned per kernel (tests stay deterministic). Autotune is off by default;
`autotune=True` on the op, or the environment switch CATLIP_AUTOTUNE=1 (STYLE.md: an opt-in, read
at each call, never at import) searches the pinned tile's neighbours on a GPU instead:
`autotune_on` is the one place it is read. Not a variant either: linear_bce's `chunk_mb` (the dz
buffer's size per chunk of the vocabulary, LinearBCEParams.chunk_mb) changes memory, not results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AUTOTUNE_ENV = "CATLIP_AUTOTUNE"


@dataclass(frozen=True)
class Variant:
    """One switch of one op: its keyword (the params field), its choices (the first is the default)."""

    op: str  # the public function that takes the keyword
    switch: str  # the keyword, and the field of the op's params dataclass
    choices: tuple[object, ...]
    settled: bool  # False: no GPU run has measured the choices against each other yet
    compared_by: str  # the benchmark and its providers that time the choices
    what: str


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "linear_bce",
        "design",
        ("fused", "cublas"),
        settled=False,
        compared_by="perf/bench_linear_bce.py: triton, triton-cublas",
        what="fused: the logits GEMM and the loss epilogue in one Triton kernel (kernels/linear_bce_fwd.py); "
        "cublas: the logits on cuBLAS, then a Triton epilogue kernel over them (kernels/linear_bce_split.py)",
    ),
    Variant(
        "linear_bce",
        "dx_accumulate",
        ("mm", "addmm"),
        settled=False,
        compared_by="perf/bench_linear_bce.py: triton, triton-addmm",
        what="mm: each chunk's dz W_c into an fp32 product, added to dx; addmm: cuBLAS accumulates into dx "
        "itself (addmm(dx, dz, W_c, out_dtype=float32, out=dx)), where torch has it",
    ),
    Variant(
        "linear_bce",
        "validate_labels",
        (True, False),
        settled=False,
        compared_by="perf/bench_linear_bce.py: triton, triton-nocheck",
        what="True: check_labels' range and duplicate checks, one host sync a call; False: none (the caller "
        "validated the labels, as the packer and the loader do)",
    ),
    Variant(
        "flash_attention",
        "bwd",
        ("split", "onepass"),
        settled=False,
        compared_by="perf/bench_attention.py: triton, triton-bwd1",
        what="split: a dQ kernel, then a dK/dV kernel (kernels/flash_attention_bwd.py); onepass: one program "
        "per (batch, head) for S_q <= 512 and D <= 64 (kernels/flash_attention_bwd_onepass.py), other "
        "shapes split",
    ),
)


def variant(op: str, switch: str) -> Variant:
    for v in VARIANTS:
        if v.op == op and v.switch == switch:
            return v
    raise KeyError(f"no variant {switch!r} of {op}")


def check(op: str, switch: str, value: object) -> object:
    """value, if it is one of the switch's choices; else a ValueError naming the switch."""
    choices = variant(op, switch).choices
    if value not in choices:
        raise ValueError(f"{op}'s {switch} must be one of {choices}, got {value!r}")
    return value


def unsettled() -> list[Variant]:
    """The variants a GPU run must still settle."""
    return [v for v in VARIANTS if not v.settled]


def autotune_on(requested: bool | None = None) -> bool:
    """Whether to autotune: `requested` where the caller said; else CATLIP_AUTOTUNE=1, read now."""
    if requested is not None:
        return bool(requested)
    return os.environ.get(AUTOTUNE_ENV, "0") == "1"
