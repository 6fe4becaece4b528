"""linear_bce's non-tensor arguments and switches, shared by the dispatcher (kernels/linear_bce.py)
and the launcher (kernels/linear_bce_fwd.py): neither imports the other to reach them, and the
dispatcher stays free of Triton.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CHUNK_MB_ENV = "CATLIP_LINEAR_BCE_CHUNK_MB"
AUTOTUNE_ENV = "CATLIP_AUTOTUNE"
DEFAULT_CHUNK_MB = 256
# Designs the first GPU run compares (issue 12, point 4; read at each call):
#   CATLIP_LINEAR_BCE_DESIGN  fused (default: GEMM + epilogue in one Triton kernel) | cublas (design
#                             E: cuBLAS logits, then a Triton epilogue kernel, kernels/linear_bce_split.py)
#   CATLIP_LINEAR_BCE_DX      mm (default: dz W_c into an fp32 product, added to dx) | addmm (cuBLAS
#                             accumulates into dx itself: addmm(dx, dz, W_c, out_dtype=float32, out=dx))
DESIGN_ENV = "CATLIP_LINEAR_BCE_DESIGN"
DESIGNS = ("fused", "cublas")
DX_ENV = "CATLIP_LINEAR_BCE_DX"
DX_MODES = ("mm", "addmm")


@dataclass(frozen=True)
class LinearBCEParams:
    """Everything about a linear_bce call that is not a tensor."""

    reduction: str = "batch_mean"
    label_smoothing: float = 0.0
    chunk_cols: int | None = None  # columns of V per chunk; None: from CATLIP_LINEAR_BCE_CHUNK_MB
    # Grad mode at the call: inside forward it is always off, and ctx.needs_input_grad still says
    # True under torch.no_grad(), so the caller records it (linear_bce does).
    grad_enabled: bool = True
    # check_labels' range and duplicate checks (one host sync a call); off where the caller has
    # validated the labels already (the packer and the loader do). Malformed labels are then a
    # silently wrong loss, or an out-of-bounds read.
    validate_labels: bool = True
    design: str = "fused"  # one of DESIGNS
    dx_accumulate: str = "mm"  # one of DX_MODES


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
