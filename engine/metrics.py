"""Held-out metrics over ranks: multi-label mAP per image, and top-k accuracy.

mAP needs, for each class, every image's score. Gathering the dense (N, V) score matrix on every
rank costs N x V x 4 bytes each (50k held-out images x 24,320 synsets: ~5 GB); instead the classes
are sharded over the ranks: rank r receives only the columns of its class range from every rank
(``dist.gather`` to r, one class range at a time: N x V / W scores per rank), computes those
classes' average precision, and three scalars (AP sum, chance sum, classes) are all-reduced.

Per image: a held-out split of captioned images holds one sample per caption (COCO: five per
image), each with its own labels. The samples of one image are found by their image: evaluation
preprocessing is deterministic (resize + center crop), so the samples of one image have identical
pixels; a fixed random projection of the pixels (float64) is their fingerprint. The image is
scored once and its target is the union of its captions' labels. Only the (N,) fingerprints and the
(N, L) label lists, not the scores, are all-gathered to find the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

_FINGERPRINT_SEED = 20240423  # the paper's arXiv month


def average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float, int]:
    """Mean over classes with a positive of the average precision, and the chance level.

    scores, targets: (N, C) arrays. Chance: a random ranking's expected AP is the class's positive
    rate. Returns (mAP, chance mAP, classes evaluated); (nan, nan, 0) when no class has a positive.
    """
    ap_sum, chance_sum, classes = _ap_sums(scores, targets)
    if classes == 0:
        return float("nan"), float("nan"), 0
    return ap_sum / classes, chance_sum / classes, classes


def _ap_sums(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float, int]:
    """AP as scikit-learn's ``average_precision_score``: sum over thresholds of (recall step) x
    precision, where equal scores are one threshold. A run of tied images enters the ranking
    together: each of its positives gets the precision at the run's end, so the input order of
    tied images cannot change the result."""
    keep = targets.sum(axis=0) > 0
    if not keep.any():
        return 0.0, 0.0, 0
    s, t = scores[:, keep], targets[:, keep].astype(np.float64)
    order = np.argsort(-s, axis=0, kind="stable")
    ranked = np.take_along_axis(t, order, axis=0)  # (N, C) targets in score order
    ranked_scores = np.take_along_axis(s, order, axis=0)  # (N, C) descending
    n = len(t)
    # last[i]: the index of the end of the run of scores tied with row i (per class)
    is_end = np.ones_like(ranked, dtype=bool)
    is_end[:-1] = ranked_scores[:-1] != ranked_scores[1:]
    last = np.where(is_end, np.arange(n)[:, None], n - 1)
    last = np.minimum.accumulate(last[::-1], axis=0)[::-1]
    hits = np.cumsum(ranked, axis=0)
    precision = np.take_along_axis(hits, last, axis=0) / (last + 1)  # at the end of each tie run
    ap = (precision * ranked).sum(axis=0) / ranked.sum(axis=0)
    return float(ap.sum()), float(t.mean(axis=0).sum()), int(keep.sum())


def image_fingerprint(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) float64: equal for pixel-identical images, distinct otherwise (a fixed
    random projection; two different images agree with probability ~0)."""
    flat = images.detach().reshape(len(images), -1).double()
    g = torch.Generator().manual_seed(_FINGERPRINT_SEED)
    proj = torch.rand(flat.shape[1], generator=g, dtype=torch.float64).to(flat.device)
    return flat @ proj


@dataclass
class EvalResult:
    mean_ap: float
    chance: float
    classes: int  # classes with a positive among the evaluated images
    images: int  # distinct images evaluated
    samples: int  # samples (captions) read


class MultiLabelAccumulator:
    """Collects one rank's eval batches; :meth:`compute` returns the global per-image mAP.

    ``add(scores, labels, keep, fingerprint)``: scores (B, V) float, labels (B, L) padded with -1,
    keep (B,) bool (False: padding or an image that failed to decode), fingerprint (B,) from
    :func:`image_fingerprint`, or None to take every sample as its own image.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._prints: list[torch.Tensor] = []
        self._per_sample = False  # no fingerprints given: every sample is its own image

    def add(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor | None = None,
        fingerprint: torch.Tensor | None = None,
    ) -> None:
        if keep is None:
            keep = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
        keep = keep.bool()
        if fingerprint is None:
            self._per_sample = True
            fingerprint = torch.zeros(len(scores), dtype=torch.float64)
        self._scores.append(scores[keep].float().cpu())
        self._labels.append(labels[keep].long().cpu())
        self._prints.append(fingerprint[keep].double().cpu())

    def compute(self) -> EvalResult:
        rank, world = _rank_world()
        scores = torch.cat(self._scores) if self._scores else torch.zeros(0, self.num_classes)
        labels = _pad_cols(self._labels)
        prints = torch.cat(self._prints) if self._prints else torch.zeros(0, dtype=torch.float64)
        if self._per_sample:  # ids unique over ranks
            prints = torch.arange(len(prints), dtype=torch.float64) + rank * 2.0**40
        all_prints, all_labels, counts = _gather_rows(prints, labels, world)
        # global grouping: samples with one fingerprint are one image; its first sample scores it
        uniq, first, image_of = _groups(all_prints)
        targets = np.zeros((len(uniq), self.num_classes), dtype=bool)  # (images, V), on every rank
        rows, cols = np.nonzero(all_labels >= 0)
        targets[image_of[rows], all_labels[rows, cols]] = True
        offset = int(sum(counts[:rank]))
        mine = [i for i, f in enumerate(first) if offset <= f < offset + counts[rank]]  # images I score
        my_scores = scores[[first[i] - offset for i in mine]] if mine else torch.zeros(0, self.num_classes)
        ap_sum, chance_sum, classes = _sharded_ap(my_scores, np.asarray(mine, dtype=np.int64), targets, world)
        m_ap = ap_sum / classes if classes else float("nan")
        chance = chance_sum / classes if classes else float("nan")
        return EvalResult(m_ap, chance, classes, images=len(uniq), samples=len(all_prints))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pad_cols(labels: list[torch.Tensor]) -> torch.Tensor:
    if not labels:
        return torch.full((0, 1), -1, dtype=torch.long)
    width = max(max(t.shape[1] for t in labels), 1)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in labels])


def _gather_rows(prints: torch.Tensor, labels: torch.Tensor, world: int):
    """All ranks' fingerprints and label lists in rank order, and the per-rank counts."""
    if world == 1:
        return prints.numpy(), labels.numpy(), [len(prints)]
    n = torch.tensor([len(prints), labels.shape[1]])
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s[0]) for s in sizes]
    rows, width = max(counts), max(int(s[1]) for s in sizes)
    p = torch.zeros(rows, dtype=torch.float64)
    p[: len(prints)] = prints
    lab = torch.full((rows, width), -1, dtype=torch.long)
    lab[: len(labels), : labels.shape[1]] = labels
    ps, ls = [torch.zeros_like(p) for _ in range(world)], [torch.zeros_like(lab) for _ in range(world)]
    dist.all_gather(ps, p)
    dist.all_gather(ls, lab)
    all_p = np.concatenate([q[:c].numpy() for q, c in zip(ps, counts, strict=True)])
    all_l = np.concatenate([q[:c].numpy() for q, c in zip(ls, counts, strict=True)])
    return all_p, all_l, counts


def _groups(prints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique fingerprints, index of each image's first sample, image index of each sample)."""
    uniq, first, image_of = np.unique(prints, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # images numbered in order of first appearance
    rename = np.empty_like(order)
    rename[order] = np.arange(len(order))
    return uniq[order], first[order], rename[image_of.reshape(-1)]


def _class_ranges(num_classes: int, world: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, num_classes, world + 1).round().astype(int)
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(world)]


def _sharded_ap(my_scores: torch.Tensor, my_images: np.ndarray, targets: np.ndarray, world: int):
    """AP sums over all classes, each rank scoring the class range it owns."""
    num_images, num_classes = targets.shape
    if world == 1:
        dense = np.zeros((num_images, num_classes), dtype=np.float32)
        dense[my_images] = my_scores.numpy()
        return _ap_sums(dense, targets)
    rank = dist.get_rank()
    n = torch.tensor([len(my_images)])
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    rows = max(int(s) for s in sizes)
    ids = torch.full((rows,), -1, dtype=torch.long)
    ids[: len(my_images)] = torch.from_numpy(my_images)
    all_ids = [torch.zeros_like(ids) for _ in range(world)]
    dist.all_gather(all_ids, ids)  # which image each rank's rows are
    sums = torch.zeros(3, dtype=torch.float64)
    for owner, (lo, hi) in enumerate(_class_ranges(num_classes, world)):
        part = torch.zeros(rows, hi - lo)
        part[: len(my_images)] = my_scores[:, lo:hi]
        received = [torch.zeros_like(part) for _ in range(world)] if rank == owner else None
        dist.gather(part, received, dst=owner)
        if rank == owner:
            dense = np.zeros((num_images, hi - lo), dtype=np.float32)  # (N, V / W): this rank's share
            for got, who in zip(received, all_ids, strict=True):
                real = who >= 0
                dense[who[real].numpy()] = got[real].numpy()
            sums += torch.tensor(_ap_sums(dense, targets[:, lo:hi]), dtype=torch.float64)
    dist.all_reduce(sums)
    return float(sums[0]), float(sums[1]), int(round(float(sums[2])))


class TopKAccumulator:
    """Single-label top-k accuracy over ranks: counts are reduced, scores never leave the rank."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = ks
        self._correct = torch.zeros(len(ks), dtype=torch.float64)
        self._count = 0
        self.total = 0  # samples over all ranks, set by compute()

    def add(self, scores: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """scores (B, C), target (B,) class indices."""
        if keep is not None:
            scores, target = scores[keep.bool()], target[keep.bool()]
        k_max = min(max(self.ks), scores.shape[1])
        top = scores.topk(k_max, dim=1).indices.cpu()  # (B, k)
        hit = top == target.cpu().view(-1, 1)
        for i, k in enumerate(self.ks):
            self._correct[i] += hit[:, :k].any(dim=1).sum().item()
        self._count += len(target)

    def compute(self) -> dict[int, float]:
        totals = torch.cat([self._correct, torch.tensor([float(self._count)], dtype=torch.float64)])
        if _rank_world()[1] > 1:
            dist.all_reduce(totals)
        self.total = int(totals[-1])
        n = max(float(totals[-1]), 1.0)
        return {k: float(totals[i]) / n for i, k in enumerate(self.ks)}
