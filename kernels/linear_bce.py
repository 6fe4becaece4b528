"""Fused linear + sigmoid binary cross-entropy over a large vocabulary (the CatLIP head and loss).

Computes, for x (B, D), W (V, D), b (V,) and padded labels (B, L) (-1 = padding),

    z = x W^T + b,    loss_i = sum_j softplus(z_ij) - (eps/2) sum_j z_ij - (1 - eps) sum_{j in P_i} z_ij

times an optional sample weight s_i, summed and divided by B ("batch_mean"), B * V ("mean") or 1
("sum"). That is BCE with the smoothed multi-hot target y = (1 - eps) * onehot + eps / 2, written
so that the labels enter only through a gather of B x L logits (kernels/reference.py has the
derivation and the plain-PyTorch reference this op matches). Neither the (B, V) logits nor a
dense target is ever materialised.

Design: gradients computed in the forward, chunk by chunk over V (Liger-Kernel's plan, chunked
over the vocabulary instead of the batch); kernels/linear_bce_fwd.py runs it. For each chunk of
Vc columns:

  1. `_fwd_kernel` (Triton): tiled GEMM z = x W_c^T + b_c with fp32 accumulation; the epilogue
     writes each tile's softplus(z) - (eps/2) z row sums to a per-tile partial (no atomics, so the
     loss is deterministic) and, when gradients are wanted, dz = s_i (sigmoid(z) - eps/2) in the
     input dtype into a (B, Vc) buffer and the tile's column sums of dz (fp32) for db.
  2. `_scatter_kernel` (Triton): overwrites the positives of the chunk with
     dz_ij = s_i (sigmoid(z_ij) - 1 + eps/2), from the positive logits that `_gather_kernel`
     computed once, up front, as B x L fp32 dot products.
  3. Two cuBLAS GEMMs: dx += dz_c W_c (fp32 accumulator) and dW_c = dz_c^T x (its whole reduction
     over B happens inside one GEMM with fp32 accumulation, then one rounding to W's dtype: the
     known pitfall of accumulating dW in bf16 across chunks cannot occur, because chunks split V,
     never B). The reduction's scale (1/B, 1/(BV)) is the GEMM's alpha, so small gradients do
     not underflow in the 16-bit dz buffer.

The backward only multiplies the stored gradients by the incoming scalar (skipped when it is 1).
Recomputing z in the backward instead (Cut Cross-Entropy's plan) costs a fourth GEMM: 8BVD FLOPs
against 6BVD, 1.33x the three GEMMs the op must do, over the op's 1.15x budget; see
perf/notes_linear_bce.md for the arithmetic.

Work (bf16, with gradients): 6 B V D FLOPs in three GEMMs, plus ~25 ALU and 2 MUFU ops per logit
in the first one's epilogue; HBM traffic 6 V D + 6 B V bytes; memory besides the gradients about
chunk_mb (default 256) of dz per chunk. kernels/linear_bce_fwd.py itemises it.

Limits: x, weight and bias share one dtype (fp32, fp16, bf16, or fp64 for gradchecks); fp32 dots
use TF32 iff torch.backends.cuda.matmul.allow_tf32 (PyTorch's own switch; off by default); the
loss is returned in fp32 (fp64 for fp64 inputs), as the reference does. A second backward through
a retained graph recomputes everything. Forward with gradients enabled does the full work; use
torch.no_grad() for evaluation. Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import torch

from kernels.linear_bce_params import DEFAULT_CHUNK_MB, DESIGNS, DX_MODES, LinearBCEParams, interpreting
from kernels.reference import REDUCTIONS, check_labels, linear_bce_reference
from kernels.variants import AUTOTUNE_ENV, autotune_on

IMPLS = ("triton", "torch")


def _check_inputs(x, weight, bias, labels, sample_weight, params: LinearBCEParams) -> None:
    if params.reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {params.reduction!r}")
    if not 0.0 <= params.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {params.label_smoothing}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"need x (B, D) and weight (V, D); got {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if labels.dim() != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be (B, L) with B = {x.shape[0]}, got {tuple(labels.shape)}")
    if sample_weight is not None and tuple(sample_weight.shape) != (x.shape[0],):
        raise ValueError(f"sample_weight must be (B,) = ({x.shape[0]},), got {tuple(sample_weight.shape)}")
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dtypes) != 1 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x, weight and bias must share one float dtype, got {sorted(map(str, dtypes))}")
    devices = {t.device for t in (x, weight, bias, labels, sample_weight) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(
            "linear_bce(impl='triton') needs a CUDA device, or TRITON_INTERPRET=1 set before triton is "
            "imported (slow; for tests); use impl='torch' on the CPU"
        )
    if params.validate_labels:
        check_labels(labels, weight.shape[0])


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class LinearBCEFunction(torch.autograd.Function):
    """Loss from the forward kernels; the gradients are computed there too and only scaled here."""

    @staticmethod
    def forward(ctx, x, weight, bias, labels, sample_weight, params: LinearBCEParams):
        from kernels.linear_bce_fwd import linear_bce_forward  # Triton, on first use

        _check_inputs(x, weight, bias, labels, sample_weight, params)
        need = tuple(ctx.needs_input_grad[:3]) if params.grad_enabled else (False, False, False)
        with torch.autocast(x.device.type, enabled=False):  # our GEMMs run in the inputs' dtype
            loss, dx, dw, db = linear_bce_forward(x, weight, bias, labels, sample_weight, params, need)
        ctx.grads = (dx, dw, db)
        # Inputs only (no new memory), for a second backward through a retained graph.
        ctx.save_for_backward(x, weight, bias, labels, sample_weight)
        ctx.params = params
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.grads is not None:
            dx, dw, db = ctx.grads
            ctx.grads = None  # hand the tensors over: autograd keeps them as .grad without a copy
        else:  # backward again through a retained graph (gradcheck does): recompute, rarely needed
            from kernels.linear_bce_fwd import linear_bce_forward

            x, weight, bias, labels, sample_weight = ctx.saved_tensors
            with torch.autocast(x.device.type, enabled=False):
                need = tuple(ctx.needs_input_grad[:3])
                _, dx, dw, db = linear_bce_forward(x, weight, bias, labels, sample_weight, ctx.params, need)
        # Gradients were computed for an incoming 1; scaling dW is a pass over V x D, so skip it in
        # the usual case (one device sync to look; Liger-Kernel does the same).
        if not bool((grad_loss == 1).all()):
            for g in (dx, dw, db):
                if g is not None:
                    g.mul_(grad_loss.to(g.dtype))
        return dx, dw, db, None, None, None


def linear_bce(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    reduction: str = "batch_mean",
    label_smoothing: float = 0.0,
    impl: str = "triton",
    sample_weight: torch.Tensor | None = None,
    validate_labels: bool = True,
    design: str = "fused",
    dx_accumulate: str = "mm",
    chunk_mb: float = DEFAULT_CHUNK_MB,
    autotune: bool | None = None,
) -> torch.Tensor:
    """Sigmoid BCE of x @ weight^T + bias against padded (B, L) labels (-1 = padding).

    x (B, D), weight (V, D), bias (V,) or None, sample_weight (B,) or None. reduction:
    "batch_mean" (sum over all B x V terms / B), "mean" (/ (B * V)) or "sum". impl="torch" runs
    kernels.reference.linear_bce_reference (Triton is never imported); impl="triton" the fused
    kernels of kernels/linear_bce_fwd.py. Under autocast the inputs are cast to the autocast dtype,
    as F.linear would be. validate_labels=False skips the label checks (see LinearBCEParams).
    impl="triton" only: `design` ("fused" | "cublas") and `dx_accumulate` ("mm" | "addmm") pick
    the variant (kernels/variants.py: the defaults, and what a GPU run must settle); `chunk_mb`
    bounds the dz buffer per chunk of V; `autotune` searches the launch configs on a GPU (None:
    the CATLIP_AUTOTUNE=1 switch, read at this call).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return linear_bce_reference(
            x, weight, bias, labels, reduction=reduction, label_smoothing=label_smoothing,
            sample_weight=sample_weight, validate_labels=validate_labels,
        )  # fmt: skip
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if x.shape[0] == 0 or weight.shape[0] == 0:  # nothing to tile; the reference's value (0 or nan)
        return linear_bce_reference(
            x, weight, bias, labels,
            reduction=reduction, label_smoothing=label_smoothing, sample_weight=sample_weight,
        )  # fmt: skip
    params = LinearBCEParams(
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        grad_enabled=torch.is_grad_enabled(),
        validate_labels=validate_labels,
        design=design,
        dx_accumulate=dx_accumulate,
        chunk_mb=chunk_mb,
        autotune=autotune_on(autotune),
    )
    return LinearBCEFunction.apply(x, weight, bias, labels, sample_weight, params)


__all__ = [
    "AUTOTUNE_ENV",
    "DESIGNS",
    "DX_MODES",
    "IMPLS",
    "LinearBCEFunction",
    "LinearBCEParams",
    "linear_bce",
]
