"""Variable-resolution (multi-scale) training batches: corenet's variable batch sampler.

corenet's CatLIP recipes (``projects/catlip/pretraining/vit_*.yaml``, ``sampler.vbs``) train on
square crops of 128-320 px (``max_n_scales: 25`` sizes spread evenly over that range, each made a
multiple of ``check_scale: 16``, plus the base 224), and scale each batch so that the pixels per
batch stay about those of the base: ``batch = base_batch x base^2 / (h w)``. ``data.multiscale``
is the same switch here::

    data:
      batch_size: 1024                                      # at the base resolution (model.image_size)
      multiscale: {min: 128, max: 320, step: 16, scales: 25}   # multiple: 8 (the default)

gives 13 sizes, 128, 144, ..., 320 (the 25 evenly spaced values collapse onto the multiples of 16;
224 is among them), with batches 3136 at 128 px down to 504 at 320 px. The base is the model's
``image_size`` (224 for ViT-B/16, 64 for the CPU tiny model), not a literal 224. Batches are
rounded to a multiple of ``multiple`` (8) where they are at least 8, else to the nearest integer,
and are never below 1. Every size must be a multiple of the model's patch (ViT-H/14: step 14).

The draw: the batch at loader index ``i`` uses ``table[k]`` with ``k`` drawn uniformly from a
``numpy`` generator seeded by ``(run.seed, i // group)``, ``group = optim.grad_accum``: one draw per
optimizer step (all its micro-batches have the same size, so the mean of the micro-batch means the
trainer and DeepSpeed take is the mean over the step's images), the same on every rank (it depends
on no rank), deterministic, and restored exactly on resume (the loader saves ``i``). On another world size
(:func:`resharded`) the group becomes the accumulation that keeps the global batch and ``i`` is
regrouped with it, so step s keeps its draw.

Why plain data-parallel averaging stays right: every rank draws the same ``(h, w, batch)`` for a
step, so each rank's loss is a mean over the same number of images and DeepSpeed's gradient
average over ranks (and its ``1 / grad_accum`` scaling of each micro-step) is the mean over all the
step's images. DeepSpeed's ``train_micro_batch_size_per_gpu`` is the base batch: it is used for its
own throughput bookkeeping only, never to reduce the loss or the gradients.

The chunk plan (:class:`ChunkPlan`; the DALI loader, engine/data/loader.py, runs it, training only):
the pipeline's batch is a fixed ``chunk`` (the gcd of the table's batches, 8 for the recipes),
an external source feeds every iteration's (h, w), which the random-resized crop is resized to
(and the placeholder made at), and a batch of ``b`` samples is ``b / chunk`` iterations
concatenated. The source's sizes are a pure function of the position (chunk in the epoch, batch
index), so a pipeline rebuilt from a checkpoint (resume, or the replay after a decode error, even
in the middle of a batch) gets a new source started at that position. An epoch ends at the first
draw that no longer fits in its full chunks (that draw opens the next epoch), which drops at most
one largest batch less a chunk per epoch. Why this and not the alternatives (perf/bench_multiscale.py
``--part dali``, 255 COCO photos x 5, CPU decoding, 2 threads, 9 sizes 32-96 px, base batch 32):
  * a variable batch in one pipeline: DALI 2.4 readers refuse it ("Batch size has to be uniform
    across one iteration": the reader always gives max_batch_size), so the reader would have to
    leave DALI for an external source, losing its sharding, shuffle and checkpoint;
  * one pipeline per scale: each has its own reader, shuffle buffer and prefetch queue, so the
    epochs of the scales are independent (samples repeated or skipped, no single resumable
    position); measured: build 1.48 s vs 0.16 s, +628 MB resident vs +199 MB (shuffle buffer 256),
    and the prefetch queues scale with the table: 2 batches x 13 scales x ~0.6 GB (1024 x 224^2 x 3
    float32) ~ 16 GB for the ViT-B recipe, against 2 x 8 x 320^2 x 3 x 4 B = 20 MB for chunks of 8;
  * chunks (chosen): 0.16 s to build, one reader; chunks of 8 at the fixed size run at 160
    images/s against 179 for whole batches of 32 (the per-iteration overhead, ~10% on 2 CPU
    threads; a GPU decoder prefers bigger iterations: a table with ``multiple: 32`` gives chunks
    of 32 at a pixel error under 2% at ViT-B sizes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

_DRAW_STREAM = 0x6D73  # keeps the scale draws apart from other generators seeded by run.seed


@dataclass(frozen=True)
class Scale:
    """One entry of the table: crop height and width in pixels, and the per-rank batch."""

    height: int
    width: int
    batch: int

    def tokens(self, patch: int) -> int:
        """The ViT's sequence length at this size (patches + the class token)."""
        return (self.height // patch) * (self.width // patch) + 1


@dataclass(frozen=True)
class MultiScaleConfig:
    """``data.multiscale``: sizes from ``min`` to ``max`` (``scales`` evenly spaced values, each
    rounded to a multiple of ``step``, duplicates dropped, the base added); batches rounded to a
    multiple of ``multiple``."""

    min: int = 128
    max: int = 320
    step: int = 16
    scales: int = 25
    multiple: int = 8

    @classmethod
    def from_dict(cls, raw: Any) -> MultiScaleConfig:
        """Parse the YAML mapping; ``ValueError`` naming what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError(
                f"data.multiscale: expected a mapping like {{min: 128, max: 320, step: 16}}, got {raw!r}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"data.multiscale: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})"
            )
        bad = [k for k, v in raw.items() if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"data.multiscale: {', '.join(bad)} must be integers")
        cfg = cls(**raw)
        problems = []
        if not 1 <= cfg.step <= cfg.min <= cfg.max:
            problems.append(
                f"need 1 <= step <= min <= max, got step {cfg.step}, min {cfg.min}, max {cfg.max}"
            )
        if cfg.scales < 1 or cfg.multiple < 1:
            problems.append("scales and multiple must be >= 1")
        if problems:
            raise ValueError("data.multiscale: " + "; ".join(problems))
        return cfg

    def sizes(self, base: int) -> list[int]:
        """The crop sides: corenet's ``create_intervallic_integer_list`` + ``make_divisible``."""
        values = np.linspace(self.min, self.max, self.scales) if self.scales > 1 else [self.min]
        out = {max(self.step, int(v / self.step + 0.5) * self.step) for v in values}
        return sorted(out | {base})

    def table(self, base: int, base_batch: int, patch: int | None = None) -> tuple[Scale, ...]:
        """(h, w, batch) for each size; ``patch`` (the model's) checks every side divides by it."""
        sizes = self.sizes(base)
        if patch is not None:
            off = [s for s in sizes if s % patch]
            if off:
                raise ValueError(
                    f"data.multiscale gives sides {off} that are not multiples of the model's patch {patch} "
                    f"(set step, min and max to multiples of {patch}, and model.image_size too)"
                )
        return tuple(Scale(s, s, scaled_batch(base_batch, base, s, s, self.multiple)) for s in sizes)


def scaled_batch(base_batch: int, base: int, height: int, width: int, multiple: int = 8) -> int:
    """``base_batch x base^2 / (h w)``: a multiple of ``multiple`` where that is at least
    ``multiple``, else the nearest integer; never below 1."""
    exact = base_batch * base * base / (height * width)
    rounded = int(exact / multiple + 0.5) * multiple
    return rounded if rounded >= multiple else max(1, int(exact + 0.5))


class MultiScale:
    """The per-batch draws over a table (see the module docstring)."""

    def __init__(self, table: tuple[Scale, ...], seed: int, group: int = 1) -> None:
        if not table:
            raise ValueError("the multi-scale table is empty")
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        self.table, self.seed, self.group = tuple(table), int(seed), int(group)
        # Every pipeline iteration decodes this many samples at one size; a batch is batch / chunk
        # iterations (the module docstring says why the pipeline is not one per scale).
        self.chunk = math.gcd(*(s.batch for s in self.table))
        self._last: tuple[int, Scale] | None = None

    def draw(self, index: int) -> Scale:
        """The scale of the loader's batch ``index`` (0, 1, ... over the whole run)."""
        key = index // self.group
        if self._last is None or self._last[0] != key:
            rng = np.random.default_rng([abs(self.seed), _DRAW_STREAM, key])
            self._last = (key, self.table[int(rng.integers(len(self.table)))])
        return self._last[1]

    @property
    def smallest(self) -> Scale:
        return min(self.table, key=lambda s: s.height * s.width)

    def identity(self) -> dict[str, Any]:
        """What a saved loader state must match to resume (the table, the seed, the group)."""
        return {
            "table": [list(asdict(s).values()) for s in self.table],
            "seed": self.seed,
            "group": self.group,
        }

    def __repr__(self) -> str:
        rows = ", ".join(f"{s.height}x{s.width}:{s.batch}" for s in self.table)
        return f"MultiScale([{rows}], seed={self.seed}, group={self.group}, chunk={self.chunk})"


class ChunkPlan:
    """A loader's epochs of pipeline iterations (``chunk`` samples each, at one size) cut into
    the drawn batches (see the module docstring). ``full_chunks``, the iterations every rank has
    in full, and ``reader_chunks``, those DALI produces per epoch, are set by the loader once its
    reader has counted the samples; a plan made before reads them when first iterated."""

    def __init__(self, scales: MultiScale) -> None:
        self.scales = scales
        self.chunk = scales.chunk  # samples per pipeline iteration (the batch when fixed)
        self.reader_chunks = self.full_chunks = 1

    def chunks(self, batch: int) -> int:
        """Pipeline iterations of the batch at draw ``batch``."""
        return self.scales.draw(batch).batch // self.chunk

    def fits(self, pos: int, batch: int) -> bool:
        """Whether the batch at draw ``batch`` still fits in this epoch from chunk ``pos``."""
        return pos + self.chunks(batch) <= self.full_chunks

    def fitting(self, pos: int, batch: int) -> Iterator[int]:
        """The draws from ``batch`` on that fit, one after the other, in this epoch's full chunks
        from chunk ``pos``."""
        while pos + self.chunks(batch) <= self.full_chunks:
            yield batch
            pos, batch = pos + self.chunks(batch), batch + 1

    def end(self, pos: int, batch: int) -> int:
        """The chunk this epoch's batches end at, from chunk ``pos`` where draw ``batch`` begins
        (``pos`` when the draw does not fit: the epoch is done)."""
        for b in self.fitting(pos, batch):
            pos += self.chunks(b)
        return pos

    def sizes(self, pos: int, batch: int) -> Iterator[tuple[int, int]]:
        """(h, w) of every pipeline iteration from chunk ``pos`` of this epoch on, where batch
        ``batch`` begins: each drawn batch takes ``batch / chunk`` iterations while it fits in the
        epoch's full chunks; the rest of the epoch (dropped, as with drop_last) is decoded at the
        smallest size; then the next epoch, which starts with the draw that did not fit."""
        tail = self.scales.smallest
        while True:
            for b in self.fitting(pos, batch):
                scale = self.scales.draw(b)
                for _ in range(self.chunks(b)):
                    yield scale.height, scale.width
                pos, batch = pos + self.chunks(b), b + 1
            for _ in range(pos, self.reader_chunks):
                yield tail.height, tail.width
            pos = 0


def from_config(cfg: Any, base: int, patch: int | None = None) -> MultiScale | None:
    """The run's draws from ``data.multiscale`` (None when off), ``data.batch_size`` at ``base``."""
    raw = cfg.data.multiscale
    if raw is None:
        return None
    table = MultiScaleConfig.from_dict(raw).table(base, cfg.data.batch_size, patch)
    return MultiScale(table, seed=cfg.run.seed, group=cfg.optim.grad_accum)


def resharded(
    saved: dict[str, Any], old_world: int, old_batch: int, new: MultiScale, new_world: int, new_batch: int
) -> tuple[MultiScale, MultiScale]:
    """The draws of a run saved on ``old_world`` ranks (``saved``: its :meth:`MultiScale.identity`,
    base batch ``old_batch``) and those that continue it on ``new_world`` ranks with ``new``'s
    table (base batch ``new_batch``). The group becomes the accumulation that keeps the global
    batch (base batch x ranks x accumulation, as engine.reshard.keep_global_batch), so the draw of
    optimizer step s stays ``table[k]`` with ``k`` seeded by ``(seed, s)``; every size must keep its
    global batch too. ``ValueError`` naming what cannot be kept."""
    old = MultiScale(tuple(Scale(*row) for row in saved["table"]), int(saved["seed"]), int(saved["group"]))
    if old.seed != new.seed:
        raise ValueError(f"data.multiscale: the draws were seeded with run.seed {old.seed}, now {new.seed}")
    sides = [(s.height, s.width) for s in old.table]
    if sides != [(s.height, s.width) for s in new.table]:
        raise ValueError(
            f"data.multiscale: saved with sizes {sides}, now {[(s.height, s.width) for s in new.table]}"
        )
    total = old_batch * old_world * old.group
    group = total // (new_batch * new_world)
    if total % (new_batch * new_world) or any(
        o.batch * old_world * old.group != n.batch * new_world * group
        for o, n in zip(old.table, new.table, strict=True)
    ):
        raise ValueError(
            f"data.multiscale: the global batch of every size cannot be kept from {old_world} to {new_world} "
            f"rank(s): per-rank batches {[s.batch for s in old.table]} x {old_world} x accumulation {old.group} "
            f"against {[s.batch for s in new.table]} x {new_world} x {group} (data.batch_size {old_batch} -> {new_batch}); "
            f"keep data.batch_size {old_batch}, with a number of ranks that divides {old_world * old.group}"
        )
    return old, MultiScale(new.table, new.seed, group)
