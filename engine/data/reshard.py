"""Where an epoch goes on when a run resumes on another number of ranks, and what that costs it.

DALI gives shard ``j`` of ``world`` the contiguous sample range ``[n*j//world, n*(j+1)//world)``
and moves each rank one range per epoch. Old rank ``r`` had read the first ``position x chunk``
samples of its range of the epoch. The new ranks each skip the same number of whole chunks of
their ranges (all ranks must yield the same number of batches): the consumed samples over the new
ranks' chunk, rounded down, so they skip at most as many samples as were consumed. Counting in
reader order, a sample is *repeated* if the old ranks consumed it and a new rank reads it again in
the same epoch, and *skipped* if an uninterrupted epoch on the old ranks would have trained it
(``drop_last`` leaves out the tail of each range) and neither the old nor the new ranks did.

With multi-scale batches (engine/multiscale.py) the chunk is the plan's pipeline iteration and an
epoch ends at the first draw that no longer fits: the old ranks' uninterrupted epoch ends where
their plan's draws from the saved position stop fitting, the new ranks' where the new plan's draws
from the skipped-to chunk stop fitting (the same draws per optimizer step, regrouped for the new
accumulation). The counts are taken over those ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reshard:
    """The plan and its counts: ``consumed`` samples the old ranks had read in ``epoch``,
    ``skipped_ahead`` the new ranks skip, ``repeated`` and ``skipped`` samples of that epoch (in
    reader order); the new ranks start at ``resume_chunk`` of ``resume_epoch``."""

    old_world: int
    new_world: int
    epoch: int
    samples: int
    consumed: int
    skipped_ahead: int
    repeated: int
    skipped: int
    shuffle_buffer: int
    resume_epoch: int
    resume_chunk: int

    @classmethod
    def plan(
        cls, *, samples: int, epoch: int, old_world: int, old_position: int, old_chunk: int, new_world: int,
        new_chunk: int, new_chunks: int, shuffle_buffer: int, old_end: int | None = None,
        new_end: Callable[[int], int] | None = None,
    ) -> Reshard:  # fmt: skip
        """``old_position`` chunks of ``old_chunk`` samples taken on each of ``old_world`` ranks;
        ``new_chunks``: the chunks of ``new_chunk`` samples a new rank has in full per epoch.
        Multi-scale: ``old_end``, the chunk the old ranks' uninterrupted epoch ends at (None:
        ``(samples // old_world) // old_chunk``), and ``new_end(skip)``, the chunk the new ranks'
        epoch ends at when they start at chunk ``skip`` (None: ``new_chunks``)."""
        n = samples
        old_end = (n // old_world) // old_chunk if old_end is None else old_end
        consumed = [(a, a + min(old_position * old_chunk, b - a)) for a, b in ranges(n, old_world)]
        trained = [(a, a + old_end * old_chunk) for a, _ in ranges(n, old_world)]
        skip = min(count(consumed) // (new_world * new_chunk), new_chunks)
        end = new_chunks if new_end is None else new_end(skip)
        if end <= skip:  # the epoch was done: the next one starts whole
            rest, start = [], (epoch + 1, 0)
        else:
            rest = [(a + skip * new_chunk, a + end * new_chunk) for a, _ in ranges(n, new_world)]
            start = (epoch, skip)
        return cls(
            old_world=old_world, new_world=new_world, epoch=epoch, samples=n, consumed=count(consumed),
            skipped_ahead=0 if not rest else skip * new_chunk * new_world,
            repeated=count(intersect(consumed, rest)),
            skipped=count(trained) - count(intersect(trained, consumed + rest)),
            shuffle_buffer=shuffle_buffer, resume_epoch=start[0], resume_chunk=start[1],
        )  # fmt: skip

    def line(self) -> str:
        bound = (self.old_world + self.new_world) * self.shuffle_buffer
        exact = (
            "exact"
            if self.shuffle_buffer <= 1
            else f"within {bound} with a shuffle buffer of {self.shuffle_buffer}"
        )
        return (
            f"resume: data epoch {self.epoch} re-sharded from {self.old_world} to {self.new_world} rank"
            f"{'s' if self.new_world > 1 else ''}: "
            f"{self.consumed} of {self.samples} samples consumed, the new ranks skip {self.skipped_ahead}; "
            f"{self.repeated} samples repeated and {self.skipped} skipped in this epoch (reader order, {exact})"
        )


def ranges(n: int, world: int) -> list[tuple[int, int]]:
    """The sample ranges DALI gives ``world`` shards of ``n`` samples."""
    return [(n * j // world, n * (j + 1) // world) for j in range(world)]


def count(spans: list[tuple[int, int]]) -> int:
    """Samples in a union of half-open ranges."""
    covered, end = 0, 0
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        covered += max(0, b - max(a, end))
        end = max(end, b)
    return covered


def intersect(xs: list[tuple[int, int]], ys: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces where two unions of half-open ranges overlap."""
    return [(max(a, c), min(b, d)) for a, b in xs for c, d in ys if min(b, d) > max(a, c)]
