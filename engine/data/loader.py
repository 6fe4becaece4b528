"""The DALI loader of one rank: iteration, failure replay, label checks and the resumable position.

Its options are one frozen :class:`LoaderOptions` (declared there only); :func:`make_loader` builds
it over a packed folder or tar paths. The graph it runs is engine/data/pipeline.py's; with
``multiscale`` the batches follow engine/multiscale.py's draws and chunk plan.

Samples that fail the guard become zero images with ``valid=False`` (DALI has no skip-on-error:
one undecodable image raises and invalidates the whole pipeline). What passes the guard and still
fails to decode (a well-framed JPEG corrupt inside) raises in DALI; the loader logs it, counts it,
rebuilds the pipeline from the checkpoint taken before that batch and replays the batch with every
sample routed to the placeholder, so the batch comes out with ``valid`` all False. Lost: the real
samples of that one batch (counted in ``lost_samples``), and from then on this rank's random crops
and flips differ from those of a run that never failed (the reader position is the same). Every
rank still yields the same number of batches, which data-parallel training needs.

Sharding: DALI splits the sample list into ``world_size`` contiguous ranges and moves each rank to
the next range every epoch (``stick_to_shard=False``). ``pad_last_batch=True`` repeats a range's
last sample so every rank produces ``ceil(ceil(N / world_size) / batch_size)`` batches per epoch.
With ``drop_last`` (training) only the batches all ranks have in full are yielded; without it
(evaluation) every batch is yielded and the repeated padding samples have ``valid=False``.

Resume: DALI's own checkpointing (``enable_checkpointing=True``) works on CPU pipelines in DALI
2.4, conditionals and random operators included, so ``state_dict()`` holds the pipeline's
checkpoint (reader position, shuffle buffer and RNG states, ~1 kB) and ``load_state_dict()``
rebuilds the pipeline from it: the batches after a restore are those the uninterrupted run would
have seen, with no fast-forward. The state is per rank.

Resume on another world size (:meth:`DaliLoader.load_resharded`): the interrupted epoch goes on
under the new sharding from the fraction of it already consumed. Each new rank starts at its
range of that epoch and skips (reads without decoding) the same number of whole batches, so the
new ranks together skip at most as many samples as the old ones consumed. What that repeats or
leaves out of the epoch is counted in reader order and reported (:class:`Reshard`); with a shuffle
buffer of F samples the samples actually yielded can differ from reader order by up to F per rank,
old and new, so the true counts are within (old + new ranks) x F of the reported ones (exact with
``shuffle_buffer=1``). The pipelines start afresh: augmentation draws differ from the old run's.
With ``multiscale`` the skip is in whole chunks, the draws are regrouped for the new accumulation
(one per optimizer step, so step s draws what it draws on any world size: engine/multiscale.py's
``resharded``) and the epoch's ends are where the old and the new plans' draws stop fitting.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catlip.readers import load_json
from engine.data.dataset import LABEL_MEMBERS, DataError, index_files, resolve_shards
from engine.data.pipeline import (
    CLIP_MEAN,
    CLIP_STD,
    MAX_CAPTION_BYTES,
    STATE_VERSION,
    PipelineSpec,
    make_pipeline,
    pick_decode_device,
    to_torch,
)
from engine.data.reshard import Reshard
from engine.multiscale import ChunkPlan, MultiScale, Scale, resharded

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 8  # a pipeline that fails this often in a row is not a bad sample


@dataclass(frozen=True)
class LoaderOptions:
    """Every option of a :class:`DaliLoader`, with its default; ``make_loader(shards, batch_size,
    **options)`` takes the same names.

    ``device`` "auto" decodes on the GPU ("mixed") where one is visible, else on the CPU;
    ``device_id`` defaults to the current CUDA device. ``drop_last`` (None: ``train``) yields only
    the batches every rank has in full. ``shuffle_buffer`` is DALI's ``initial_fill``: samples held
    for the local shuffle (raw bytes, ~150 kB each for COCO-sized JPEGs). ``keys=True`` adds each
    sample's key to the batches; ``captions=True`` adds the ``.txt`` captions (``caption``: list of
    B strings). ``label_member`` ("lbl" or "cls"; None: the folder's dataset.json
    ``label_member``, else "lbl"); ``num_classes`` (None: unchecked) bounds the label ids;
    ``expected_samples`` (dataset.json's ``samples``) counts the samples DALI skips for a missing
    member. ``multiscale`` (training only): each batch's size and resolution from its draws
    (engine/multiscale.py), ``batch_size`` and ``image_size`` being those of the base."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    device: str = "auto"
    device_id: int | None = None
    train: bool = True
    image_size: int | tuple[int, int] = 224
    seed: int = 0
    max_labels: int = 32
    num_threads: int = 2
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    drop_last: bool | None = None
    shuffle_buffer: int = 1024
    keys: bool = False
    captions: bool = False
    num_classes: int | None = None
    expected_samples: int | None = None
    label_member: str | None = None
    multiscale: MultiScale | None = None


class DaliLoader:
    """Batches of one rank from packed shards; see the module docstring. Build with ``make_loader``
    (or give the shard paths and a :class:`LoaderOptions`).

    Iterating yields the rest of the current epoch: dicts with ``image`` (B, 3, H, W) float32,
    ``labels`` (B, max_labels) int64 padded with -1, ``label_counts`` (B,) int64, ``valid`` (B,)
    bool, and ``key`` (list of B sample keys) when asked for."""

    def __init__(self, paths: list[Path], options: LoaderOptions) -> None:
        o = self.options = replace(
            options,
            drop_last=options.train if options.drop_last is None else options.drop_last,
            label_member=options.label_member or "lbl",
        )
        batch_size, rank, world_size, max_labels = o.batch_size, o.rank, o.world_size, o.max_labels
        multiscale, drop_last, label_member = o.multiscale, o.drop_last, o.label_member
        if multiscale is not None and not (o.train and drop_last):
            raise ValueError("multi-scale batches are for training (train=True, drop_last=True) only")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or max_labels < 1:
            raise ValueError("batch_size and max_labels must be >= 1")
        device, device_id = pick_decode_device(o.device, o.device_id)
        size = (o.image_size, o.image_size) if isinstance(o.image_size, int) else tuple(o.image_size)
        self.spec = PipelineSpec(
            paths=tuple(str(p) for p in paths),
            index_paths=(tuple(idx) if (idx := index_files(paths)) else None),
            decode_device=device,
            train=o.train,
            size=(int(size[0]), int(size[1])),
            scale=(float(o.scale[0]), float(o.scale[1])),
            ratio=(float(o.ratio[0]), float(o.ratio[1])),
            mean=tuple(255.0 * float(m) for m in o.mean),
            std=tuple(255.0 * float(s) for s in o.std),
            max_labels=max_labels,
            shard_id=rank,
            num_shards=world_size,
            shuffle_buffer=o.shuffle_buffer,
            keys=o.keys,
            captions=o.captions,
            label_ext=label_member,
            multiscale=multiscale is not None,
        )
        self.multiscale = multiscale  # None: every batch is batch_size at image_size
        # the epoch cut into the drawn batches (one fixed-size batch per iteration without multiscale)
        self._plan = ChunkPlan(multiscale or MultiScale((Scale(*self.spec.size, batch_size),), seed=0))
        self._chunk = self._plan.chunk  # samples per pipeline iteration (batch_size when fixed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.num_threads, self.drop_last = o.seed, o.num_threads, drop_last
        self.num_classes = o.num_classes  # labels outside [0, num_classes) stop the run, naming the sample
        self.device = device
        # DALI device_id None = a CPU-only pipeline; images then come out on the CPU.
        self._device_id = device_id if device == "mixed" else None
        self._image_device = torch.device("cuda", device_id) if device == "mixed" else torch.device("cpu")
        # Per-rank seed: augmentations and the shuffle buffer differ between ranks.
        self._pipe_seed = int(np.random.SeedSequence([o.seed, rank]).generate_state(1)[0] & 0x7FFFFFFF)
        self._epoch = 0  # the reader's epoch (its pipeline began at range spec.shard_id)
        self._pos = 0  # pipeline iterations (chunks) taken in this epoch (yielded or dropped)
        self._batches = 0  # batches yielded over the run: the index of the next scale draw
        self._epoch_first = 0  # self._batches when this epoch began
        self._batch_start = 0  # the chunk the batch being assembled began at (== _pos between batches)
        self.invalid_samples = 0  # real samples that failed the guard (zero image, valid=False)
        self.failed_batches = 0  # batches DALI raised on (replayed as all-placeholder)
        self.lost_samples = 0  # real samples in those batches
        self.truncated_labels = 0  # real samples with more than max_labels labels
        self._len_cache: tuple[int, int] = (-1, 0)  # (epoch_first, batches in that epoch)
        try:
            self._pipe = self._build(checkpoint=None, skip_batches=0)
        except RuntimeError as err:
            named = _index_error(err, label_member)
            if named is None:
                raise
            raise named from None
        self.samples = int(self._pipe.reader_meta("Reader")["epoch_size"])  # N, all ranks
        if self.samples == 0:
            raise ValueError(f"no samples with an image and a .{label_member} in {len(paths)} shard(s)")
        self.missing_members = self._missing(o.expected_samples)
        shard_max = math.ceil(self.samples / world_size)
        self._plan.reader_chunks = math.ceil(shard_max / self._chunk)  # what DALI produces per epoch
        full = (self.samples // world_size) // self._chunk
        self._plan.full_chunks = full if drop_last else self._plan.reader_chunks
        largest = max(s.batch for s in self._plan.scales.table)
        if full * self._chunk < largest and drop_last:
            raise ValueError(
                f"{self.samples} samples over {world_size} rank(s) make no full batch of {largest}: "
                "lower batch_size or set drop_last=False"
            )
        # The size source was made before the reader counted the epoch: its plan reads the counts
        # when DALI first calls it (at the first run, not at build).
        self._checkpoint: bytes = self._pipe.checkpoint()

    def _build(self, checkpoint: bytes | None, skip_batches: int, lead: int = 0) -> Any:
        """A pipeline that continues at the current position (its size source too); ``lead``
        iterations before it (read to be skipped) come at the smallest size."""
        sizes = None
        if self.multiscale is not None:
            plan = self._plan.sizes(self._batch_start, self._batches)
            for _ in range(self._pos - self._batch_start):  # a rebuild in the middle of a batch
                next(plan)
            smallest = self._plan.scales.smallest
            plan = itertools.chain(itertools.repeat((smallest.height, smallest.width), lead), plan)
            chunk = self._chunk

            def sizes() -> np.ndarray:
                return np.tile(np.asarray(next(plan), dtype=np.float32), (chunk, 1))  # (chunk, 2)

        return make_pipeline(
            self.spec,
            batch_size=self._chunk,
            num_threads=self.num_threads,
            seed=self._pipe_seed,
            device_id=self._device_id,
            checkpoint=checkpoint,
            skip_batches=skip_batches,
            size_source=sizes,
        )

    def _fits(self) -> bool:
        """Whether the next batch (the draw at ``_batches``) still fits in this epoch."""
        return self._plan.fits(self._pos, self._batches)

    # -------------------------------------------------------------------------------- iteration
    def __len__(self) -> int:
        """Batches in the current epoch for this rank (the same on every rank; with multi-scale
        it depends on the epoch's draws)."""
        if self.multiscale is None:
            return self._plan.full_chunks
        if self._len_cache[0] != self._epoch_first:
            self._len_cache = (self._epoch_first, sum(1 for _ in self._plan.fitting(0, self._epoch_first)))
        return self._len_cache[1]

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (an epoch whose batches were all yielded is done)."""
        return self._epoch + (not self._fits())

    def _real_in_chunk(self) -> int:
        """Real (not padding) samples in the iteration at ``self._pos`` of this rank's current range."""
        shard = (self.rank + self._epoch) % self.world_size  # DALI moves ranks one range per epoch
        n, w = self.samples, self.world_size
        shard_size = n * (shard + 1) // w - n * shard // w
        return max(0, min(self._chunk, shard_size - self._pos * self._chunk))

    def _run(self) -> tuple[Any, bool]:
        """The next pipeline outputs, recovering from a DALI error by replaying that batch as
        placeholders; returns (outputs, whether the batch was replayed)."""
        for attempt in range(MAX_CONSECUTIVE_FAILURES + 1):
            try:
                outputs = self._pipe.run()
                self._checkpoint = self._pipe.checkpoint()
                return outputs, attempt > 0
            except RuntimeError as err:
                if attempt == MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"DALI failed {attempt + 1} times in a row at epoch {self._epoch}, batch "
                        f"{self._pos} (rank {self.rank}): not a bad sample; see the error above"
                    ) from err
                self.failed_batches += 1
                log.warning(
                    "DALI raised on epoch %d batch %d (rank %d); the batch is replayed as "
                    "placeholders (valid=False) and training goes on. DALI said: %s",
                    self._epoch,
                    self._pos,
                    self.rank,
                    _error_summary(err),
                )
                self._pipe = None  # a failed DALI pipeline is no longer valid; free it first
                self._pipe = self._build(checkpoint=self._checkpoint, skip_batches=1)
        raise AssertionError("unreachable")

    def _missing(self, expected_samples: int | None) -> int:
        """Samples DALI skips for a missing member (``missing_component_behavior="skip"``): the
        count dataset.json lists less what the reader found; said once, kept in the counters."""
        missing = max(0, (expected_samples or 0) - self.samples)
        if missing and self.rank == 0:
            log.warning(
                "%d of the %d samples dataset.json lists lack an image or a .%s member and are skipped",
                missing,
                expected_samples,
                self.spec.label_ext,
            )
        return missing

    def _check_labels(self, labels: torch.Tensor, is_real: torch.Tensor, source_info: Any) -> None:
        """Host-side (labels stay on the CPU until the step): an id outside the vocabulary, or one
        listed twice, names its shard and sample, instead of failing later inside the loss."""
        bad = ((labels >= self.num_classes) | (labels < -1)) & is_real.view(-1, 1)
        ordered = labels.sort(dim=1).values  # (B, L)
        twice = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0) & is_real.view(-1, 1)
        if bool(twice.any()) and not bool(bad.any()):
            row = int(twice.any(dim=1).nonzero()[0])
            where = bytes(np.array(source_info[row])).decode("utf-8", "replace").rsplit(":", 2)
            what = "class" if self.spec.label_ext == "cls" else "label id"
            raise DataError(
                f"{where[0]}: sample {where[-1].split('.', 1)[0]} lists {what} {int(ordered[row, 1:][twice[row]][0])} "
                f"twice: its .{self.spec.label_ext} member is corrupt (`catlip pack` writes each id once, "
                "sorted); re-pack the shard"
            )
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0])
            where = bytes(np.array(source_info[row])).decode("utf-8", "replace").rsplit(":", 2)
            sample, label = where[-1].split(".", 1)[0], int(labels[row][bad[row]][0])
            if self.spec.label_ext == "cls":
                raise DataError(
                    f"{where[0]}: sample {sample} has class {label}, outside the {self.num_classes} "
                    "classes of the pack's CLASSES.json: the .cls member is corrupt, or the shards are "
                    "of another class set"
                )
            raise DataError(
                f"{where[0]}: sample {sample} has label id {label}, "
                f"outside the vocabulary of {self.num_classes} synsets: these shards were packed with "
                "another vocabulary, or the .lbl member is corrupt"
            )

    def _next_batch(self) -> dict[str, Any]:
        """The batch at the next draw: ``batch / chunk`` pipeline iterations put together."""
        k = self._plan.chunks(self._batches)
        self._batch_start = self._pos
        parts = [self._next_chunk() for _ in range(k)]
        self._batches += 1
        self._batch_start = self._pos
        if k == 1:
            return parts[0]
        batch = {}
        for name, first in parts[0].items():
            if isinstance(first, torch.Tensor):
                batch[name] = torch.cat([p[name] for p in parts])
            else:  # key, caption: lists of strings
                batch[name] = [x for p in parts for x in p[name]]
        return batch

    def _next_chunk(self) -> dict[str, Any]:
        outputs, replayed = self._run()
        real = self._real_in_chunk()
        self._pos += 1
        image, labels, count, valid, source_info = outputs[:5]
        if replayed:
            log.warning(
                "the replayed batch held: %s", ", ".join(_sample_key(np.array(s)) for s in source_info)
            )
        cpu = torch.device("cpu")
        batch: dict[str, Any] = {
            "image": to_torch(image, torch.float32, self._image_device),  # (B, 3, H, W)
            "labels": to_torch(labels, torch.int32, cpu).long(),  # (B, max_labels), -1 padded
        }
        raw_count = to_torch(count, torch.int64, cpu)  # (B,)
        valid_t = to_torch(valid, torch.bool, cpu)  # (B,)
        is_real = torch.arange(self._chunk) < real  # (B,)
        if replayed:
            self.lost_samples += real
        else:
            self.invalid_samples += int((~valid_t & is_real).sum())
        self.truncated_labels += int(((raw_count > self.spec.max_labels) & is_real).sum())
        valid_t &= is_real
        if not bool(valid_t.all()):  # placeholders and padding come out as zero images
            invalid = ~valid_t.to(self._image_device, non_blocking=True)
            batch["image"].masked_fill_(invalid.view(-1, 1, 1, 1), 0.0)  # no host sync on a GPU
        if self.num_classes is not None:
            self._check_labels(batch["labels"], is_real, source_info)
        batch["label_counts"] = raw_count.clamp(max=self.spec.max_labels)  # (B,) entries in labels
        batch["valid"] = valid_t  # (B,)
        if self.spec.keys:
            batch["key"] = [_sample_key(np.array(s)) for s in source_info]
        if self.spec.captions:
            text = to_torch(outputs[5], torch.uint8, cpu).numpy()  # (B, MAX_CAPTION_BYTES)
            lengths = to_torch(outputs[6], torch.int64, cpu).clamp(max=MAX_CAPTION_BYTES).tolist()
            batch["caption"] = [
                bytes(row[:n]).decode("utf-8", "replace") for row, n in zip(text, lengths, strict=True)
            ]
        return batch

    def _finish_epoch(self) -> None:
        """Take the padded batches ``drop_last`` does not yield (and, with multi-scale, the chunks
        too few for the next draw), and move to the next epoch."""
        while self._pos < self._plan.reader_chunks:
            self._run()
            self._pos += 1
        self._epoch, self._pos = self._epoch + 1, 0
        self._epoch_first = self._batch_start = self._batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._fits():
            self._finish_epoch()
        while self._fits():
            yield self._next_batch()

    # ----------------------------------------------------------------------------------- resume
    def _identity(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "train": self.spec.train,
            "drop_last": self.drop_last,
            "multiscale": None if self.multiscale is None else self.multiscale.identity(),
        }

    def state_dict(self) -> dict[str, Any]:
        """This rank's data position: DALI's pipeline checkpoint (base64), epoch, batch, counters."""
        return {
            "version": STATE_VERSION,
            **self._identity(),
            "epoch": self._epoch,
            "position": self._pos,
            "batches": self._batches,
            "epoch_first": self._epoch_first,
            "dali_checkpoint": base64.b64encode(self._checkpoint).decode("ascii"),
            "counters": self.counters(),
            "first_shard": self.spec.shard_id,  # the range the pipeline began at (rank, or a reshard's)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same shards, batch size, seed and rank)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"data state version {state.get('version')} is not {STATE_VERSION}: saved by another version of "
                "the loader's pipeline (continue with the engine that wrote it, or start a new run)"
            )
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if mismatched:
            shown = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"the data state was saved by a different loader setup ({shown})")
        checkpoint = base64.b64decode(state["dali_checkpoint"])
        self.spec = replace(self.spec, shard_id=int(state.get("first_shard", self.rank)))
        self._epoch, self._pos = int(state["epoch"]), int(state["position"])
        self._batches = int(state.get("batches", 0))  # states from before multi-scale: fixed size
        self._epoch_first = int(state.get("epoch_first", 0))
        self._batch_start = self._pos
        self._pipe = None
        self._pipe = self._build(checkpoint=checkpoint, skip_batches=0)
        self._checkpoint = checkpoint
        for name, value in state.get("counters", {}).items():
            setattr(self, name, int(value))

    def load_resharded(self, states: list[dict[str, Any]]) -> Reshard:
        """Continue the epoch that ``len(states)`` ranks were in (their states, in rank order) on
        this loader's world size, from the fraction of it they consumed (see the module
        docstring); returns what that repeats and skips. The counters of the old ranks add up on
        rank 0."""
        old = states[0]
        for state in states:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"data state version {state.get('version')} is not {STATE_VERSION}")
        ours = self._identity()
        mismatched = {
            k: (old.get(k), v)
            for k, v in ours.items()
            if k not in ("rank", "world_size", "batch_size", "multiscale") and old.get(k) != v
        }
        if (old.get("multiscale") is None) != (self.multiscale is None):
            mismatched["multiscale"] = (old.get("multiscale"), ours["multiscale"])
        if mismatched:
            shown = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"the data state was saved by a different loader setup ({shown})")
        if len({(s["epoch"], s["position"]) for s in states}) != 1 or len(states) != old["world_size"]:
            raise ValueError("the data states of the old ranks are not at one position of one epoch")
        old_world, old_batches = len(states), int(old.get("batches", 0))
        batches = old_batches  # the index of the next draw
        if self.multiscale is None:
            old_scales = MultiScale((Scale(*self.spec.size, int(old["batch_size"])),), seed=0)
        else:  # one draw per optimizer step: the draws regrouped for this run's accumulation
            old_scales, scales = resharded(
                old["multiscale"], old_world, int(old["batch_size"]), self.multiscale, self.world_size,
                self.batch_size,
            )  # fmt: skip
            if old_batches % old_scales.group:
                raise ValueError(
                    f"the data states were saved after {old_batches} batches, inside an optimizer step of "
                    f"{old_scales.group}"
                )
            batches = old_batches // old_scales.group * scales.group
            self.multiscale = self._plan.scales = scales
            self.options = replace(self.options, multiscale=scales)
        old_plan = ChunkPlan(old_scales)  # what the old ranks would have trained of the epoch
        old_plan.full_chunks = (self.samples // old_world) // old_plan.chunk
        position = int(old["position"])
        report = Reshard.plan(
            samples=self.samples, epoch=int(old["epoch"]), old_world=old_world, old_position=position,
            old_chunk=old_plan.chunk, new_world=self.world_size, new_chunk=self._chunk,
            new_chunks=self._plan.full_chunks, shuffle_buffer=self.spec.shuffle_buffer,
            old_end=old_plan.end(position, old_batches), new_end=lambda skip: self._plan.end(skip, batches),
        )  # fmt: skip
        epoch, skip = report.resume_epoch, report.resume_chunk
        self.spec = replace(self.spec, shard_id=(self.rank + epoch) % self.world_size)
        self._epoch, self._pos, self._batch_start = epoch, skip, skip
        self._batches = self._epoch_first = batches
        self._len_cache = (-1, 0)
        self._pipe = None
        self._pipe = self._build(checkpoint=None, skip_batches=skip, lead=skip)
        for _ in range(skip):  # read, not decoded: the skip route gives placeholders
            self._pipe.run()
        self._checkpoint = self._pipe.checkpoint()
        if self.rank == 0:
            for name in ("invalid_samples", "failed_batches", "lost_samples", "truncated_labels"):
                setattr(self, name, sum(int(s.get("counters", {}).get(name, 0)) for s in states))
        return report

    def counters(self) -> dict[str, int]:
        """Samples that were not trained on as they should have been, by cause."""
        return {
            "invalid_samples": self.invalid_samples,
            "failed_batches": self.failed_batches,
            "lost_samples": self.lost_samples,
            "truncated_labels": self.truncated_labels,
            "missing_members": self.missing_members,
        }


def _index_error(err: RuntimeError, label_member: str = "lbl") -> DataError | None:
    """DALI's start-up check of an index line ("component size and dtype incompatible": a .lbl
    or .cls whose length is not a multiple of 4) as a message naming the shard and the sample."""
    import re

    found = re.search(r'index file at "([^"]+)" line (\d+) - component size and dtype incompatible', str(err))
    if not found:
        return None
    idx, line = Path(found.group(1)), int(found.group(2))
    try:
        fields = idx.read_text().splitlines()[line].split()  # DALI counts the header as line 0
    except (OSError, IndexError):
        fields = []
    members = dict(zip(fields[3::4], fields[2::4], strict=False))  # member name -> size
    lbl = next((name for name in members if name.endswith(f".{label_member}")), "?")
    return DataError(
        f"{idx.with_suffix('.tar')}: sample {lbl.split('.', 1)[0]}: its .{label_member} has "
        f"{members.get(lbl, '?')} bytes, not a multiple of 4 (int32 label ids): the shard is corrupt; re-pack it"
    )


def _error_summary(err: BaseException) -> str:
    """The informative lines of a DALI error: the operator and what it encountered."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept, after = [], False
    for ln in lines:
        if ln.startswith("Error in"):
            kept.append(ln.rstrip(","))
        elif ln.startswith("encountered"):
            after = True
        elif after and not ln.startswith(("Current pipeline", "Critical error")):
            kept.append(ln)
    return " ".join(dict.fromkeys(kept))[:500] or " ".join(lines)[:500]


def _sample_key(source_info: np.ndarray) -> str:
    """``/path/shard-000000.tar:OFFSET:KEY.jpg`` -> ``KEY``."""
    name = bytes(source_info).decode("utf-8", "replace").rsplit(":", 1)[-1]
    return name.split(".", 1)[0]


def make_loader(shards: str | Path | Sequence[str | Path], batch_size: int, **options: Any) -> DaliLoader:
    """A DALI loader over packed shards (a folder with ``dataset.json``, or tar paths) for one rank;
    ``options`` are :class:`LoaderOptions`' (``label_member`` None: the folder's dataset.json
    ``label_member``, else "lbl")."""
    o = LoaderOptions(batch_size, **options)
    label_member = o.label_member
    if label_member is None:
        label_member = "lbl"
        if isinstance(shards, (str, Path)) and (Path(shards) / "dataset.json").is_file():
            meta = load_json(Path(shards) / "dataset.json", DataError)
            label_member = meta.get("label_member", "lbl") if isinstance(meta, dict) else "lbl"
    if label_member not in LABEL_MEMBERS:
        raise ValueError(f"label_member must be one of {', '.join(LABEL_MEMBERS)}, got {label_member!r}")
    return DaliLoader(resolve_shards(shards), replace(o, label_member=label_member))
