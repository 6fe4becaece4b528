"""Contrastive losses of the CLIP baseline: InfoNCE (CLIP) and sigmoid (SigLIP), across ranks.

Both give the values and gradients of open_clip's ``ClipLoss`` and ``SigLipLoss`` (tests compare
them on 1 process and on 2, 4 and 5 gloo ranks). Inputs are each rank's L2-normalised features (B, D), the
exponentiated logit scale and, for SigLIP, the logit bias; every rank must hold the same B.
Without a process group (or with one rank) they are the single-device losses.

CLIP (``ContrastiveLoss``): the (W*B, W*B) similarity matrix of the global batch needs every
rank's image and text features: one all-gather of the (B, 2D) concatenation [image | text] (one
collective instead of open_clip's two; the same numbers). The gathering modes are open_clip's:

  default           gathered without autograd; this rank's own rows put back in (so they carry its
                    gradient); each rank computes the whole (W*B)^2 loss, and its features get the
                    global batch's gradient.
  gather_with_grad  all-gather with autograd: the backward reduce-scatters (sums) the other ranks'
                    gradients w.r.t. this rank's features, the gradient of the sum of all ranks'
                    losses (W x the global batch's); costs a second collective of the same size,
                    in the backward.
  local_loss        only this rank's B rows against all W*B columns, labels offset by rank*B: a
                    (B, W*B) matrix instead of (W*B)^2; the ranks' losses average to the global
                    one. With gather_with_grad (open_clip's recommendation at scale) the gradient
                    is again W x the global batch's; without it, only the local rows' part.

SigLIP (``SigLipLoss``): every (image, text) pair is an independent binary term, so a rank needs
the other ranks' text features only, one block at a time, never the image features. ``dist_impl``:

  "bidir" (default, open_clip's default): text blocks travel around the ring to both neighbours at
          once (point-to-point send/recv with autograd), W-1 blocks in ceil((W-1)/2) rounds; a rank
          holds at most two foreign (B, D) blocks, and each exchange can overlap with the previous
          block's matmul. The backward sends the gradients back along the same links.
  "gather": one all-gather with autograd of all text features, then a single (B, W*B) matmul; one
          large collective (best at small W on a fast all-gather), W*B*D memory.

Communication is recorded in ``loss.comm`` (a :class:`CommStats`) at every call, for the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------------------------------
# Collectives
# --------------------------------------------------------------------------------------------------
def dist_info(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


# torch 2.13 renames all_gather_into_tensor / reduce_scatter_tensor (deprecated) to *_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Rank-ordered concatenation of every rank's (B, ...) tensor: (W*B, ...). No autograd."""
    world = dist.get_world_size(group)
    x = x.contiguous()
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))  # (W*B, ...)
    _all_gather_single(out, x, group=group)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward reduce-scatters: grad_x = sum over ranks of d(loss_r)/d(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return all_gather_rows(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        world = dist.get_world_size(ctx.group)
        gx = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        _reduce_scatter_single(gx, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return gx, None


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """(B, ...) on each rank -> (W*B, ...), differentiable (torch.distributed.nn's all_gather, fused)."""
    return _AllGatherWithGrad.apply(x, group)


def _exchange(sends: list[tuple[torch.Tensor, int]], sources: list[int], group) -> list[torch.Tensor]:
    """Point-to-point, all posted at once: send each (tensor, rank); receive one block per source.

    Ranks are within ``group``; every received block has the shape and dtype of the first sent one.
    """

    def peer(r: int) -> int:  # P2POp wants global ranks
        return dist.get_global_rank(group, r) if group is not None else r

    recvs = [torch.empty_like(sends[0][0]) for _ in sources]
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer(r), group) for t, r in sends]
    ops += [dist.P2POp(dist.irecv, buf, peer(r), group) for buf, r in zip(recvs, sources, strict=True)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return recvs


class _RingShift(torch.autograd.Function):
    """Send ``x`` to ``right``, receive ``left``'s block; the backward sends the gradient back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, left: int, right: int, group) -> torch.Tensor:
        ctx.left, ctx.right, ctx.group = left, right, group
        return _exchange([(x, right)], [left], group)[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _RingShift.apply(grad, ctx.right, ctx.left, ctx.group), None, None, None


class _RingShiftBidir(torch.autograd.Function):
    """Send ``to_left`` left and ``to_right`` right at once; return (from_right, from_left)."""

    @staticmethod
    def forward(ctx, to_left: torch.Tensor, to_right: torch.Tensor, left: int, right: int, group):
        ctx.left, ctx.right, ctx.group = left, right, group
        from_right, from_left = _exchange([(to_left, left), (to_right, right)], [right, left], group)
        return from_right, from_left

    @staticmethod
    def backward(ctx, grad_from_right: torch.Tensor, grad_from_left: torch.Tensor):
        # Each gradient goes back where its block came from; the right neighbour returns the
        # gradient of what this rank sent right (to_right), the left one that of to_left.
        grad_to_left, grad_to_right = _exchange(
            [(grad_from_right, ctx.right), (grad_from_left, ctx.left)], [ctx.left, ctx.right], ctx.group
        )
        return grad_to_left, grad_to_right, None, None, None


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
@dataclass
class CommStats:
    """Collective traffic of one loss call on this rank (bytes; a step's forward and backward).

    ``gathered_bytes`` is the size of what the forward assembles on each rank from all ranks (the
    all-gather's output, NCCL-tests' "size"; the received blocks for a neighbour exchange, plus the
    local one); ``recv_bytes`` is what this rank receives from peers in the forward (W-1 blocks:
    a ring all-gather's bus traffic), ``backward_recv_bytes`` the same for the gradients sent back
    (gather_with_grad's reduce-scatter, SigLIP's reverse exchanges; 0 without autograd).
    """

    world_size: int = 1
    collectives: int = 0
    gathered_bytes: int = 0
    recv_bytes: int = 0
    backward_recv_bytes: int = 0


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class ContrastiveLoss(nn.Module):
    """CLIP's symmetric InfoNCE over the global batch; open_clip's ``ClipLoss`` (modes above).

    ``forward(image_features, text_features, logit_scale, logit_bias=None)`` -> scalar loss:
    (CE(logits_per_image, labels) + CE(logits_per_text, labels)) / 2 with logits = scale * I @ T^T
    (+ bias).
    """

    def __init__(
        self,
        *,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.group = group
        self.comm = CommStats()

    def extra_repr(self) -> str:
        return f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}"

    def gather(self, image: torch.Tensor, text: torch.Tensor, rank: int, world: int):
        """Every rank's image and text features (W*B, D) each, in one all-gather of [image | text]."""
        local = torch.cat([image, text], dim=1)  # (B, 2D)
        if self.gather_with_grad:
            both = all_gather_with_grad(local, self.group)  # (W*B, 2D)
        else:
            with torch.no_grad():
                both = all_gather_rows(local, self.group)
            if not self.local_loss:  # put this rank's rows back, with their autograd history
                b = local.shape[0]
                both = torch.cat([both[: rank * b], local, both[(rank + 1) * b :]])
        size = _nbytes(local)
        self.comm = CommStats(
            world_size=world,
            collectives=1,
            gathered_bytes=world * size,
            recv_bytes=(world - 1) * size,
            backward_recv_bytes=(world - 1) * size if self.gather_with_grad else 0,
        )
        return both.split([image.shape[1], text.shape[1]], dim=1)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rank, world = dist_info(self.group)
        b = image_features.shape[0]
        if world == 1:
            self.comm = CommStats()
            logits_image = logit_scale * image_features @ text_features.T  # (B, B)
            logits_text = logit_scale * text_features @ image_features.T
            labels = torch.arange(b, device=image_features.device)
        else:
            all_image, all_text = self.gather(image_features, text_features, rank, world)  # (W*B, D)
            if self.local_loss:
                logits_image = logit_scale * image_features @ all_text.T  # (B, W*B)
                logits_text = logit_scale * text_features @ all_image.T
                labels = torch.arange(b, device=image_features.device) + rank * b
            else:
                logits_image = logit_scale * all_image @ all_text.T  # (W*B, W*B)
                logits_text = logits_image.T
                labels = torch.arange(world * b, device=image_features.device)
        if logit_bias is not None:
            logits_image = logits_image + logit_bias
            logits_text = logits_text + logit_bias
        return (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2


class SigLipLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss; open_clip's ``SigLipLoss`` (``dist_impl`` "bidir" | "gather").

    loss = -sum_ij log sigmoid(y_ij * (scale * <i_i, t_j> + bias)) / B, y = +1 on this rank's
    own (image, text) pairs and -1 elsewhere, j over the texts of all ranks.
    """

    DIST_IMPLS = ("bidir", "gather")

    def __init__(self, *, dist_impl: str = "bidir", group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if dist_impl not in self.DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {self.DIST_IMPLS}, got {dist_impl!r}")
        self.dist_impl = dist_impl
        self.group = group
        self.comm = CommStats()

    def extra_repr(self) -> str:
        return f"dist_impl={self.dist_impl!r}"

    @staticmethod
    def block_loss(image, text, logit_scale, logit_bias, positives: bool) -> torch.Tensor:
        """-sum log sigmoid(y * logits) / B for one (B, B') block; y = 2I - 1 or all -1."""
        logits = logit_scale * image @ text.T + logit_bias  # (B, B')
        if positives:
            signs = 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype) - 1
            logits = logits * signs
        else:
            logits = -logits
        return -F.logsigmoid(logits).sum() / image.shape[0]

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        rank, world = dist_info(self.group)
        if world == 1:
            self.comm = CommStats()
            return self.block_loss(image_features, text_features, logit_scale, logit_bias, True)
        if self.dist_impl == "gather":
            return self._gather_loss(image_features, text_features, logit_scale, logit_bias, rank, world)
        return self._ring_loss(image_features, text_features, logit_scale, logit_bias, rank, world)

    def _gather_loss(self, image, text, scale, bias, rank: int, world: int) -> torch.Tensor:
        b = image.shape[0]
        all_text = all_gather_with_grad(text, self.group)  # (W*B, D)
        logits = scale * image @ all_text.T + bias  # (B, W*B)
        signs = -torch.ones_like(logits)
        signs[:, rank * b : (rank + 1) * b] += 2 * torch.eye(b, device=logits.device, dtype=logits.dtype)
        size = _nbytes(text)
        self.comm = CommStats(
            world_size=world,
            collectives=1,
            gathered_bytes=world * size,
            recv_bytes=(world - 1) * size,
            backward_recv_bytes=(world - 1) * size,
        )
        return -F.logsigmoid(signs * logits).sum() / b

    def _ring_loss(self, image, text, scale, bias, rank: int, world: int) -> torch.Tensor:
        """Own block, then W-1 foreign text blocks from the ring; open_clip's order of summation."""
        left, right = (rank - 1) % world, (rank + 1) % world
        loss = self.block_loss(image, text, scale, bias, True)
        to_left = to_right = text
        rounds, odd = divmod(world - 1, 2)
        for _ in range(rounds):  # blocks from 1, 2, ... ranks away on both sides
            from_right, from_left = _RingShiftBidir.apply(to_left, to_right, left, right, self.group)
            loss = loss + self.block_loss(image, from_right, scale, bias, False)
            loss = loss + self.block_loss(image, from_left, scale, bias, False)
            to_left, to_right = from_right, from_left  # each block travels on in its direction
        if odd:  # even W: the block of the rank W/2 away, from the left
            from_left = _RingShift.apply(to_right, left, right, self.group)
            loss = loss + self.block_loss(image, from_left, scale, bias, False)
        size = _nbytes(text)
        self.comm = CommStats(
            world_size=world,
            collectives=2 * rounds + odd,
            gathered_bytes=world * size,
            recv_bytes=(world - 1) * size,
            backward_recv_bytes=(world - 1) * size,
        )
        return loss
