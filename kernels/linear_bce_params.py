"""linear_bce's non-tensor arguments and switches, shared by the dispatcher (kernels/linear_bce.py)
and the launcher (kernels/linear_bce_fwd.py): neither imports the other to reach them, and the
dispatcher stays free of Triton. The variants (`design`, `dx_accumulate`, `validate_labels`) are
listed, with the ones a GPU run must settle, in kernels/variants.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kernels.variants import AUTOTUNE_ENV, check, variant

DEFAULT_CHUNK_MB = 256
DESIGNS = variant("linear_bce", "design").choices  # ("fused", "cublas")
DX_MODES = variant("linear_bce", "dx_accumulate").choices  # ("mm", "addmm")


@dataclass(frozen=True)
class LinearBCEParams:
    """Everything about a linear_bce call that is not a tensor."""

    reduction: str = "batch_mean"
    label_smoothing: float = 0.0
    chunk_cols: int | None = None  # columns of V per chunk; None: from chunk_mb
    # Grad mode at the call: inside forward it is always off, and ctx.needs_input_grad still says
    # True under torch.no_grad(), so the caller records it (linear_bce does).
    grad_enabled: bool = True
    # check_labels' range and duplicate checks (one host sync a call); off where the caller has
    # validated the labels already (the packer and the loader do). Malformed labels are then a
    # silently wrong loss, or an out-of-bounds read.
    validate_labels: bool = True
    # fused (GEMM + epilogue in one Triton kernel) | cublas (design E: cuBLAS logits, then a Triton
    # epilogue kernel, kernels/linear_bce_split.py); kernels/variants.py
    design: str = "fused"
    # mm (dz W_c into an fp32 product, added to dx) | addmm (cuBLAS accumulates into dx itself:
    # addmm(dx, dz, W_c, out_dtype=float32, out=dx)); kernels/variants.py
    dx_accumulate: str = "mm"
    # The dz buffer's budget per chunk of V, in MB (at least 1024 columns a chunk); memory, not results.
    chunk_mb: float = DEFAULT_CHUNK_MB
    # Search the launch configs on a GPU (kernels.variants.autotune_on); None: CATLIP_AUTOTUNE=1.
    autotune: bool | None = None

    def __post_init__(self) -> None:
        check("linear_bce", "design", self.design)
        check("linear_bce", "dx_accumulate", self.dx_accumulate)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


__all__ = ["AUTOTUNE_ENV", "DEFAULT_CHUNK_MB", "DESIGNS", "DX_MODES", "LinearBCEParams", "interpreting"]
