"""Plain-PyTorch references for the kernels, shared by the model, tests, benchmarks and CPU runs.

attention: softmax(scale * Q K^T) V in fp32 (fp64 for fp64 inputs), optionally causal; the
model's attn_impl="math" path and the oracle of kernels/flash_attention*.py.

linear_bce: the CatLIP head and loss. z = x @ W^T + b over V synsets, sigmoid binary cross-entropy
against sparse multi-hot labels given as a padded (B, L) index tensor (-1 = padding).

With y in {0, 1}, BCE(z, y) = softplus(z) - y * z, so

    sum_ij BCE(z_ij, y_ij) = sum_ij softplus(z_ij) - sum_{(i, j) positive} z_ij

and label smoothing eps (y -> (1 - eps) * y + eps / 2) only changes constants:

    sum_ij softplus(z_ij) - (eps / 2) * sum_ij z_ij - (1 - eps) * sum_{positive} z_ij.

The dense target is never built: the positives enter through a gather of B x L logits. This
reference still materialises the (B, V) logits in fp32; the Triton kernel will not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REDUCTIONS = ("batch_mean", "mean", "sum")


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """The attention scale: 1 / sqrt(D) unless given."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *, causal: bool = False
) -> torch.Tensor:
    """softmax(scale * q k^T) v for q (B, H, S_q, D), k, v (B, H, S_k, D), cast back to q's dtype.

    In at least fp32 (fp64 stays fp64): materialises the (B, H, S_q, S_k) scores. ``causal``:
    query i sees keys j <= i (top-left aligned, as SDPA's is_causal).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * resolve_scale(scale, q.shape[-1])  # (B, H, S_q, S_k)
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return (scores.softmax(dim=-1) @ v.to(acc)).to(q.dtype)


def check_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Validate a padded (B, L) label tensor; return the mask of real entries.

    Ids must be in [0, num_classes) or -1 (padding), and unique within a row (a duplicate would
    count its positive twice): both are errors, never a silently wrong loss.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, L) padded with -1, got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"labels must be int32 or int64, got {labels.dtype}")
    mask = labels >= 0
    if labels.numel() == 0:
        return mask
    # min, max and "any duplicate in a row" come back to the host in one transfer (one device sync)
    dup = torch.zeros_like(labels[:, :1], dtype=torch.bool).squeeze(1)  # (B,)
    if labels.size(1) > 1:
        ordered = labels.sort(dim=1).values
        dup = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(dim=1)
    lo, hi = torch.aminmax(labels)
    lo, hi, any_dup = torch.stack([lo.long(), hi.long(), dup.any().long()]).tolist()
    if lo < -1 or hi >= num_classes:
        raise ValueError(f"label ids must be in [0, {num_classes}) or -1 for padding; got min {lo}, max {hi}")
    if any_dup:
        row = int(dup.nonzero()[0])
        raise ValueError(f"duplicate label ids in row {row}: {labels[row].tolist()}")
    return mask


def bce_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "batch_mean",
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    validate_labels: bool = True,
) -> torch.Tensor:
    """Sigmoid BCE of (B, V) logits against padded (B, L) labels, accumulated in fp32.

    reduction: "batch_mean" (corenet: sum over all B x V terms / B), "mean" (/ (B * V)), "sum".
    sample_weight: optional (B,) weights (e.g. 0 for samples whose image failed to decode); the
    batch_mean divisor stays B so that ranks with equal B average correctly.
    validate_labels=False skips check_labels (its host sync) for labels validated upstream.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    b, v = logits.shape
    mask = check_labels(labels, v) if validate_labels else labels >= 0
    # (B, V) in at least fp32: the sums below run over 10^4-10^6 terms per row (fp64 stays fp64)
    z = logits if logits.dtype == torch.float64 else logits.float()
    dense = F.softplus(z).sum(dim=1)  # (B,)
    if label_smoothing:
        dense = dense - 0.5 * label_smoothing * z.sum(dim=1)
    pos = z.gather(1, labels.clamp(min=0).long()) * mask  # (B, L)
    per_sample = dense - (1.0 - label_smoothing) * pos.sum(dim=1)  # (B,)
    if sample_weight is not None:
        per_sample = per_sample * sample_weight.to(per_sample.dtype)
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / b if reduction == "batch_mean" else total / (b * v)


def linear_bce_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    reduction: str = "batch_mean",
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    validate_labels: bool = True,
) -> torch.Tensor:
    """linear_bce in eager PyTorch: x (B, D), weight (V, D), bias (V,) or None, labels (B, L)."""
    logits = F.linear(x, weight, bias)  # (B, V)
    return bce_from_logits(
        logits, labels, reduction=reduction, label_smoothing=label_smoothing,
        sample_weight=sample_weight, validate_labels=validate_labels,
    )  # fmt: skip


def dense_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, V) float multi-hot from padded labels: for tests and baselines only."""
    target = torch.zeros(labels.size(0), num_classes + 1, dtype=torch.float32, device=labels.device)
    target.scatter_(1, torch.where(labels >= 0, labels, num_classes).long(), 1.0)
    return target[:, :num_classes]
