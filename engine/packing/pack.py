"""Pack image-caption pairs into WebDataset tar shards with CatLIP labels, ready for DALI.

Each sample of a shard is three members with one key: ``KEY.jpg`` (the original image bytes;
``.png`` or ``.webp`` for those formats; with ``resize_shorter``, images larger than that on their
shorter side are stored as a resized JPEG instead), ``KEY.txt`` (the caption, UTF-8) and ``KEY.lbl`` (the
caption's sorted unique label indices into the vocabulary, little-endian int32, possibly empty).
Labels are computed here, once, so NLTK never runs in the training loop. ``dataset.json`` records
the counts, the vocabulary and the shard names; ``rejects.tsv`` lists every sample that was left
out, and why.

A class-labelled source (``classsets.py``: ImageFolder, COCO instances, YOLO labels) gives two
members instead: the image and ``KEY.cls`` (its sorted class indices into ``CLASSES.json``,
little-endian int32, possibly empty). Its ``dataset.json`` says ``"label_member": "cls"``,
``num_classes``, ``multi_label``, ``classes`` (path, SHA-256 and names of ``CLASSES.json``), the
class map's ``vocab_sha256``, the samples per class and the most classes of one sample.

:func:`pack` in steps:

1. plan: the source cut into tasks, one per output shard (``sources.py``); the plan (inputs,
   vocabulary hash, settings) is written to ``OUT.partial/plan.json``;
2. build beside the target: tasks run on an executor (this process, local processes or Ray;
   ``engine/executor.py``) and write ``OUT.partial/shard-k.tar`` and a done marker each
   (``worker.py``). A re-run of the same command finds the staging folder, keeps the shards marked
   done and runs only the others; a staging folder of other inputs or settings is discarded;
3. merge the task results in task order: counts, ``rejects.tsv``, ``dataset.json``;
4. publish: the finished folder is renamed to ``OUT``. An existing ``OUT`` is replaced only with
   ``overwrite``, only now, and only if it is an earlier pack or empty (``target.py``, checked
   before step 2 with the rule that ``OUT`` is apart from every input); a failed pack leaves it
   untouched.

The output is the same, byte for byte, whatever ran the tasks. With ``holdout_fraction`` > 0
images are split by a hash of their bytes, so every caption of an image (and every copy of the
same image) falls on the same side; ``train/`` and ``val/`` each get their own shards (task ``k``
writes ``shard-k.tar`` in each split that got a sample) and ``dataset.json``.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catlip.captions import MAX_CAPTION_CHARS
from catlip.labels import (
    LabelerMismatch,
    LabelerSpec,
    VocabularyError,
    load_senses,
    senses_path,
    vocab_labeler,
)
from catlip.progress import progress as progress_bar
from catlip.progress import say as _say
from catlip.vocab import LabelSettings, worker_labeler
from engine.packing.sources import RawSample, chunk_tasks
from engine.packing.target import PACK_FORMAT, check_target, source_inputs
from engine.packing.worker import (
    PackSettings,
    PackTask,
    ShardResult,
    marker_path,
    pack_task,
    split_dir,
    split_names,
)

MAX_MESSAGES = 50  # reject messages printed per reason; rejects.tsv has all of them
PLAN_VERSION = 1
DIGESTS_COUNTED = 200_000_000  # samples up to which distinct images are counted (8 bytes each)


class PackError(RuntimeError):
    """A pack that cannot start or did not finish, saying what to do."""


@dataclass
class SplitStats:
    """Counts of one output folder (the whole dataset, or its train or val split)."""

    out: Path
    samples: int = 0
    images: int = 0  # distinct image contents (-1: not counted, past DIGESTS_COUNTED samples)
    label_total: int = 0
    no_label: int = 0
    trimmed_jpegs: int = 0  # JPEGs with bytes after the end marker, stored without them
    resized: int = 0  # samples whose image is stored resized (resize_shorter)
    cut_captions: int = 0  # captions stored and labelled cut to their first MAX_CAPTION_CHARS
    labelled_here: int = 0  # with --labels: captions the labels file lacked, labelled in the pack
    shard_names: list[str] = field(default_factory=list)
    shard_counts: list[int] = field(default_factory=list)
    max_labels: int = 0
    class_samples: list[int] | None = None  # a class pack: samples per class

    @property
    def labels_mean(self) -> float:
        return self.label_total / self.samples if self.samples else 0.0

    @property
    def no_label_share(self) -> float:
        return self.no_label / self.samples if self.samples else 0.0

    def metadata(self, split: str) -> dict:
        if self.class_samples is not None:  # one sample per image, classes instead of captions
            return {
                "split": split,
                "samples": self.samples,
                "shards": len(self.shard_names),
                "images": self.images,
                "labels_per_sample_mean": round(self.labels_mean, 4),
                "no_label_share": round(self.no_label_share, 4),
                "max_labels_per_sample": self.max_labels,
                "class_samples": self.class_samples,
                "trimmed_jpegs": self.trimmed_jpegs,
                "resized": self.resized,
            }
        return {
            "split": split,
            "samples": self.samples,
            "shards": len(self.shard_names),
            "images": self.images,
            "captions": self.samples,
            "labels_per_sample_mean": round(self.labels_mean, 4),
            "no_label_share": round(self.no_label_share, 4),
            "trimmed_jpegs": self.trimmed_jpegs,
            "resized": self.resized,
            "captions_cut": self.cut_captions,
            "captions_labelled_here": self.labelled_here,
        }


@dataclass
class PackStats:
    """What :func:`pack` did: per-split counts and rejects by reason."""

    splits: dict[str, SplitStats]
    rejects: Counter[str]
    seconds: float
    shard_size: int
    shards_skipped: int = 0  # done in an earlier, interrupted run of the same pack
    samples_packed: int = 0  # samples (kept or rejected) this run read
    where: str = "1 process"
    resize_shorter: int = 0

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits.values())

    def summary(self) -> str:
        lines = []
        for name, s in self.splits.items():
            where = f"{name} " if len(self.splits) > 1 else ""
            trimmed = (
                f"; {s.trimmed_jpegs:,} JPEG(s) stored without bytes after their end"
                if s.trimmed_jpegs
                else ""
            )
            if s.resized:
                trimmed += f"; {s.resized:,} stored resized to shorter side {self.resize_shorter}"
            if s.labelled_here:
                trimmed += f"; {s.labelled_here:,} caption(s) not in --labels, labelled here"
            if s.cut_captions:
                trimmed += (
                    f"; {s.cut_captions:,} caption(s) cut to their first {MAX_CAPTION_CHARS:,} characters"
                )
            what = "classes" if s.class_samples is not None else "labels"
            lines.append(
                f"{where}{s.samples:,} samples ({s.images:,} images) in {len(s.shard_names)} "
                f"shard(s) of <= {self.shard_size:,} in {s.out}; {what} per sample: mean "
                f"{s.labels_mean:.2f}, {100 * s.no_label_share:.1f}% with none{trimmed}"
            )
        total = sum(self.rejects.values())
        lines.append(f"rejected: {total:,} sample(s)" + (":" if total else ""))
        lines += [f"  {reason}: {n:,}" for reason, n in self.rejects.most_common()]
        if self.shards_skipped:
            lines.append(
                f"resumed: {self.shards_skipped:,} shard(s) were done before; this run packed the rest"
            )
        rate = self.samples_packed / max(self.seconds, 1e-9)
        lines.append(f"{rate:,.0f} samples/s over {self.seconds:.1f} s on {self.where}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- staging
class _Staging:
    """``OUT.partial``: where a pack is built, locked against a second pack, resumable."""

    def __init__(self, out: Path, plan: dict, splits: list[str], *, log) -> None:
        self.out, self.path = out, out.with_name(out.name + ".partial")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise PackError(f"another catlip pack is writing {self.path}; wait for it to end") from err
        plan_file = self.path / "plan.json"
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            log(f"discarding {self.path}: it was started with other inputs or settings")
            self._clear()
        for name in splits:
            split_dir(self.path, name).mkdir(exist_ok=True)
        (self.path / "done").mkdir(exist_ok=True)
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def done(self, tasks: list[PackTask]) -> dict[int, ShardResult]:
        """The results of the tasks marked done, for the same input, whose shards are in place."""
        results = {}
        for task in tasks:
            marker = marker_path(self.path, task.index)
            if not marker.is_file():
                continue
            result = ShardResult.from_json(marker.read_text())
            shards = [split_dir(self.path, n) / p.shard for n, p in result.parts.items() if p.shard]
            if result.identity == task.identity and all(path.is_file() for path in shards):
                results[task.index] = result
        return results

    def publish(self) -> None:
        """Move the finished folder into place (an existing ``OUT`` is replaced only now)."""
        for leftover in (self.path / "done", self.path / "plan.json"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        for tmp in self.path.rglob("*.tmp"):
            tmp.unlink()
        (self.path / ".lock").unlink()
        old = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
        if self.out.exists():
            self.out.rename(old)
        self.path.rename(self.out)
        if old.exists():
            shutil.rmtree(old)
        self._lock.close()

    def close(self) -> None:
        self._lock.close()


# ------------------------------------------------------------------------------------------ merge
class _Merge:
    """Task results, merged in task order once all are in; reject messages as they come."""

    def __init__(self, splits: list[str], num_classes: int | None = None) -> None:
        self.splits = splits
        self.num_classes = num_classes  # a class pack
        self.results: dict[int, ShardResult] = {}
        self._shown: Counter[str] = Counter()
        self._named: set[str] = set()  # images already named in a message

    def add(self, result: ShardResult, *, quiet: bool = False) -> None:
        self.results[result.index] = result
        for _key, image, reason, first in result.rejects if not quiet else ():
            if first and image not in self._named and self._shown[reason] < MAX_MESSAGES:
                self._named.add(image)
                self._shown[reason] += 1
                more = (
                    " (further ones are counted, and listed in rejects.tsv)"
                    if self._shown[reason] == MAX_MESSAGES
                    else ""
                )
                _say(f"skipped {image}: {reason}{more}")

    def write(self, root: Path, out: Path, settings: dict) -> tuple[dict[str, SplitStats], Counter[str]]:
        """``rejects.tsv`` and each split's ``dataset.json`` under ``root`` (to be moved to ``out``);
        the merged counts."""
        stats = {n: SplitStats(split_dir(out, n)) for n in self.splits}
        if self.num_classes is not None:
            for s in stats.values():
                s.class_samples = [0] * self.num_classes
        digests: dict[str, list[bytes]] = {n: [] for n in self.splits}
        rejects: Counter[str] = Counter()
        with open(root / "rejects.tsv", "w", newline="") as f:
            rows = csv.writer(f, delimiter="\t", lineterminator="\n")
            rows.writerow(("key", "image", "reason"))
            for index in sorted(self.results):
                result = self.results[index]
                for key, image, reason, _first in result.rejects:
                    rows.writerow((key, image, reason))
                    rejects[reason] += 1
                for name, part in result.parts.items():
                    s = stats[name]
                    s.samples += part.samples
                    s.label_total += part.label_total
                    s.no_label += part.no_label
                    s.trimmed_jpegs += part.trimmed_jpegs
                    s.resized += part.resized
                    s.cut_captions += part.cut_captions
                    s.labelled_here += part.labelled_here
                    s.max_labels = max(s.max_labels, part.max_labels)
                    if s.class_samples is not None:
                        s.class_samples = [
                            a + b for a, b in zip(s.class_samples, part.class_samples, strict=True)
                        ]
                    if part.shard:
                        s.shard_names.append(part.shard)
                        s.shard_counts.append(part.samples)
                    digests[name].append(part.digests)
        for name, s in stats.items():
            s.images = _distinct(digests[name], s.samples)
        counts = {"rejects": dict(rejects.most_common()), "rejected_samples": sum(rejects.values())}
        _write_metadata(root, stats, {**settings, **counts})
        return stats, rejects


def _distinct(digests: list[bytes], samples: int) -> int:
    if samples > DIGESTS_COUNTED:
        return -1
    return len(np.unique(np.frombuffer(b"".join(digests), "<u8"))) if samples else 0


def _write_metadata(root: Path, stats: dict[str, SplitStats], settings: dict) -> None:
    """``dataset.json`` per split (and, with a holdout, one above listing the splits)."""
    for name, s in stats.items():
        meta = {**s.metadata(name), **settings, "shard_names": s.shard_names, "shard_samples": s.shard_counts}
        (split_dir(root, name) / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if "all" not in stats:
        splits = {n: {"dir": n, "samples": s.samples, "images": s.images} for n, s in stats.items()}
        (root / "dataset.json").write_text(json.dumps({"splits": splits, **settings}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- pack
def _tasks(source: Iterable[RawSample], shard_size: int, settings: PackSettings) -> list[PackTask]:
    payloads = source.tasks(shard_size) if hasattr(source, "tasks") else chunk_tasks(source, shard_size)
    tasks = []
    for i, payload in enumerate(payloads):
        if isinstance(payload, str):  # an input tar
            stat = os.stat(payload)
            tasks.append(PackTask(i, settings, tar=payload, identity=f"{stat.st_size}:{stat.st_mtime_ns}"))
        else:
            digest = hashlib.sha256(repr([_sample_identity(s) for s in payload]).encode())
            tasks.append(PackTask(i, settings, samples=payload, identity=digest.hexdigest()))
    return tasks


def _sample_identity(s: RawSample) -> tuple:
    row = (s.key, s.image, s.caption, str(s.path))
    return row if s.classes is None else (*row, s.classes)


def _plan(source: Any, tasks: list[PackTask], settings: dict) -> dict:
    """What a resumed pack must share with the interrupted one (each task's input is checked
    against its done marker separately, so a fixed input tar re-packs only its own shard)."""
    inputs = source.describe() if hasattr(source, "describe") else {"kind": "samples"}
    return {"version": PLAN_VERSION, "inputs": inputs, "tasks": len(tasks), **settings}


def _run(executor: Any, todo: list[PackTask], merge: _Merge, bar: Any) -> list[str]:
    """Run the tasks; the messages of those that failed (each names its input). ``bar.samples``
    counts what the workers reported, shown or not."""
    from engine.executor import LocalExecutor

    def progress(n: int) -> None:
        bar.samples += n
        bar.update(n)

    failed = []
    bar.samples = 0
    for index, result in (executor or LocalExecutor(1)).map_unordered(pack_task, todo, progress):
        if hasattr(result, "error"):  # a TaskFailure
            task = todo[index]
            where = task.tar or f"shard {task.index} ({task.samples[0].image} ...)"
            text = str(result.error)
            failed.append(text if task.tar and task.tar in text else f"{where}: {text}")
        else:
            merge.add(result)
    return failed


def _labeler_of(vocab: Path, named: LabelerSpec | str | None) -> tuple[LabelerSpec, Path | None]:
    """The labeler ``vocab`` was built with (its sidecar) and its sense table's path, checked
    against ``named``; a vocabulary without a sidecar is labelled by ``named`` (default catlip-2:
    then its sense table must be beside it)."""
    if isinstance(named, str):
        named = LabelerSpec.parse(named)
    try:
        spec = vocab_labeler(vocab)
    except VocabularyError:
        if named is None:
            raise
        spec = named
    else:
        if named is not None and (named.name, named.pos_filter) != (spec.name, spec.pos_filter):
            raise PackError(
                f"{vocab} was built with labeler {spec.id}, but this pack was asked to label with {named.id}: "
                "labels of different labelers do not mix (leave the labeler out to use the vocabulary's)"
            )
    table = senses_path(vocab) if spec.name == "catlip-2" else None
    try:
        senses = load_senses(spec, table)
    except VocabularyError as err:
        raise PackError(str(err)) from None
    if senses is not None and spec.senses_sha256 is None:
        spec = LabelerSpec(spec.name, spec.pos_filter, senses.sha256)
    return spec, table


def pack(
    source: Iterable[RawSample],
    out: Path | str,
    vocab: Path | str | None = None,
    *,
    shard_size: int = 1000,
    holdout_fraction: float = 0.0,
    labeler: LabelerSpec | str | None = None,
    labels: Path | str | None = None,
    progress: bool = True,
    executor: Any = None,
    overwrite: bool = False,
    nltk_data: tuple[str, ...] = (),
    resize_shorter: int = 0,
) -> PackStats:
    """Validate, label and write ``source`` into shards under ``out`` (``out/train`` and
    ``out/val`` with a holdout); see the module docstring. Captions are labelled with ``vocab``,
    by the labeler it was built with (``labeler``, when given, must be that one), or taken from
    ``labels`` (``catlip vocab --labels-out`` of the same vocabulary); a class source (``classsets.py``) brings its classes and takes no ``vocab``. ``executor`` runs
    the tasks (default: this process). Rejected samples are reported and counted, never silently
    dropped. Raises :class:`PackError` when ``out`` exists (without ``overwrite``) or a task failed."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if resize_shorter < 0:
        raise ValueError(f"resize_shorter must be >= 0 (0: images as they are), got {resize_shorter}")
    out = Path(out).absolute()
    staging_dir = str(out.with_name(out.name + ".partial"))
    classes = getattr(source, "classes", None) if getattr(source, "label_member", "lbl") == "cls" else None
    inputs = source_inputs(source, vocab)
    if labels is not None:
        inputs.append(("the labels file", Path(labels)))
    if vocab is not None:
        inputs.append(("the sense table", senses_path(vocab)))
    refused = check_target(out, inputs, overwrite=overwrite)  # before anything is read or written
    if refused:
        raise PackError(refused)
    if classes is not None:
        if vocab is not None or labels is not None:
            raise ValueError(
                "a class source is labelled by its class set (CLASSES.json): give no vocab or labels"
            )
        meta = {
            "format": PACK_FORMAT,
            "label_member": "cls",
            "num_classes": len(classes),
            "multi_label": source.multi_label,
            "classes": classes.metadata(),
            "vocab": classes.vocab.get("path"),
            "vocab_sha256": classes.vocab["sha256"],  # the class map's vocabulary, checked downstream
            "holdout_fraction": holdout_fraction,
            "shard_size": shard_size,
            "resize_shorter": resize_shorter,
            "source": source.describe(),
        }
        settings = PackSettings(
            staging_dir,
            "",
            meta["vocab_sha256"],
            holdout_fraction,
            label_member="cls",
            num_classes=len(classes),
            resize_shorter=resize_shorter,
        )
    else:
        if vocab is None:
            raise ValueError("captions are labelled with a vocabulary: give vocab (from `catlip vocab`)")
        vocab = Path(vocab).resolve()
        spec, senses = _labeler_of(vocab, labeler)
        if labels is not None:
            from catlip.vocab import LabelsFile

            labels = Path(labels).resolve()
            try:
                of_labels, _ = LabelsFile.read(labels)
            except VocabularyError as err:
                raise PackError(str(err)) from None
            try:
                spec.check_same(of_labels, f"the vocabulary {vocab}", f"--labels {labels}")
            except LabelerMismatch as err:
                raise PackError(str(err)) from None
        meta = {
            "format": PACK_FORMAT,
            "vocab": str(vocab),
            "vocab_size": _vocab_size(vocab),
            "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),  # checked by training
            "labeler": spec.record(),  # checked by training, like the vocabulary
            "labels": str(labels) if labels is not None else None,
            "holdout_fraction": holdout_fraction,
            "shard_size": shard_size,
            "resize_shorter": resize_shorter,
        }
        settings = PackSettings(
            staging_dir, str(vocab), meta["vocab_sha256"], holdout_fraction, spec,
            str(senses) if senses is not None else None, str(labels) if labels is not None else None,
            tuple(nltk_data), resize_shorter=resize_shorter,
        )  # fmt: skip
    splits = split_names(holdout_fraction)
    tasks = _tasks(source, shard_size, settings)
    if getattr(executor, "forks", False) and classes is None:  # made once, inherited by the workers
        worker_labeler(LabelSettings(settings.labeler, settings.senses, tuple(nltk_data)))
    staging = _Staging(out, _plan(source, tasks, meta), splits, log=_say)
    try:
        merge = _Merge(splits, len(classes) if classes is not None else None)
        done = staging.done(tasks)
        for result in done.values():
            merge.add(result, quiet=True)
        todo = [t for t in tasks if t.index not in done]
        if done:
            _say(
                f"resuming {staging.path}: {len(done):,} of {len(tasks):,} shard(s) done before, packing {len(todo):,}"
            )
        total = sum(len(t.samples) for t in todo) if all(t.tar is None for t in todo) else None
        start = time.perf_counter()
        bar = progress_bar(total, unit="sample", desc="packing", enabled=progress, smoothing=0.1)
        try:
            failed = _run(executor, todo, merge, bar)
        finally:
            bar.close()
        if failed:
            raise PackError(
                f"{len(failed)} of {len(tasks)} shard(s) failed: " + "; ".join(failed)
                + f". The {len(merge.results):,} finished shard(s) are kept in {staging.path}; {out} is untouched."
                " Fix or remove the input(s), then run the same command again: it packs only what is missing"
            )  # fmt: skip
        stats, rejects = merge.write(staging.path, out, meta)
        staging.publish()
    finally:
        staging.close()
    return PackStats(
        stats, rejects, time.perf_counter() - start, shard_size, len(done),
        bar.samples, getattr(executor, "where", "1 process"), resize_shorter,
    )  # fmt: skip


def _vocab_size(vocab: Path) -> int:
    from catlip.labels import Vocabulary

    return len(Vocabulary.load(vocab))
