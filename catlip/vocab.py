"""Build the CatLIP vocabulary: count each caption's noun synsets once, prune by frequency.

The captions are cut into tasks: a WebDataset tar is one task that its worker reads itself, and
captions from a COCO JSON, a TSV or a Python list travel in chunks of :data:`CHUNK`. An executor
(``engine.executor``: local processes or Ray; by default this process) runs :func:`label_task` on
each; every worker keeps its own labeler and token cache. Results are merged in task order, so the
vocabulary does not depend on where or how the tasks ran: the TSV is byte for byte the same.

For the summary, each caption's synsets are kept as compact ids (about 13 bytes a caption) for
the first :data:`RECORD_LIMIT` captions, so the share of captions left without a label after
pruning is exact up to there (and measured on that prefix beyond).
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catlip.captions import MAX_CAPTION_CHARS
from catlip.labels import CaptionLabeler, Vocabulary

CHUNK = 512  # captions per task: large enough to amortise the transfer, small for a smooth bar
RECORD_LIMIT = 200_000_000  # captions whose synsets are kept for the no-label share (~2.6 GB)


@dataclass(frozen=True)
class LabelSettings:
    """How captions are labelled, as a task carries it to a worker."""

    pos_filter: bool = True
    official: bool = False
    nltk_data: tuple[str, ...] = ()  # extra NLTK data folders (``--nltk-data``), for the workers


@dataclass(frozen=True)
class VocabTask:
    """A chunk of captions, or a WebDataset tar the worker reads (``path``)."""

    settings: LabelSettings
    captions: tuple[object, ...] = ()
    path: str | None = None


@dataclass
class ChunkCounts:
    """One task's result: each caption's synsets as ids into ``wnids`` (``lengths`` per caption)."""

    wnids: list[str]
    names: list[str]
    ids: np.ndarray  # (sum of lengths,) int32
    lengths: np.ndarray  # (captions,) int32
    cut: int = 0  # captions longer than MAX_CAPTION_CHARS, labelled on their first characters


_labelers: dict[tuple[LabelSettings, int], CaptionLabeler] = {}


def worker_labeler(settings: LabelSettings) -> CaptionLabeler:
    """This process's labeler for ``settings``, made once per process (and again after a fork)."""
    key = (settings, os.getpid())
    if key not in _labelers:
        from catlip.nltk_setup import add_to_nltk_path, wordnet

        for directory in settings.nltk_data:
            add_to_nltk_path(directory)
        # A forked worker inherits the parent's open WordNet data files, and with them one shared
        # file offset: concurrent seek+read then return other processes' lines. Reopen them.
        wn = wordnet()
        if hasattr(wn, "_data_file_map"):
            wn._data_file_map = {}
        _labelers.clear()
        _labelers[key] = CaptionLabeler(pos_filter=settings.pos_filter, official=settings.official)
    return _labelers[key]


def label_task(task: VocabTask, report: Callable[[int], None]) -> ChunkCounts:
    """Label one task's captions (a worker's side); ``report`` counts them for the progress bar."""
    from catlip.captions import read_webdataset

    labeler = worker_labeler(task.settings)
    captions: Iterable[object] = task.captions
    if task.path is not None:
        captions = (c for _, c in read_webdataset(Path(task.path)))
    local: dict[str, int] = {}
    ids: list[int] = []
    lengths: list[int] = []
    cut = 0
    for caption in captions:
        cut += isinstance(caption, str) and len(caption) > MAX_CAPTION_CHARS
        keys = labeler.synsets(caption)
        ids += [local.setdefault(k, len(local)) for k in keys]
        lengths.append(len(keys))
        if len(lengths) % CHUNK == 0:
            report(CHUNK)
    report(len(lengths) % CHUNK)
    wnids = list(local)
    return ChunkCounts(
        wnids,
        [labeler.name_of(k) for k in wnids],
        np.asarray(ids, np.int32),
        np.asarray(lengths, np.int32),
        cut,
    )


def caption_tasks(
    captions: Iterable[object] = (), *, files: Iterable[Path] = (), settings: LabelSettings = LabelSettings()
) -> Iterator[VocabTask]:
    """Tasks for ``captions`` (in chunks), then for each of ``files``: a tar is one task, the
    captions of other formats are read here and chunked."""
    from catlip.captions import caption_format, iter_captions

    def chunks(items: Iterable[object]) -> Iterator[VocabTask]:
        it = iter(items)
        while chunk := tuple(itertools.islice(it, CHUNK)):
            yield VocabTask(settings, captions=chunk)

    yield from chunks(captions)
    for path in files:
        if caption_format(path) == "webdataset":
            yield VocabTask(settings, path=str(path))
        else:
            yield from chunks(c for _, c in iter_captions(path))


@dataclass
class VocabStats:
    captions: int
    seconds: float
    workers: int
    synsets_seen: int  # distinct synsets before pruning
    vocab_size: int
    no_synset: int  # captions with no noun synset at all
    no_label: int  # captions with no synset in the pruned vocabulary (of the recorded ones)
    recorded: int = -1  # captions the no-label count is over (all, unless past RECORD_LIMIT)
    where: str = ""
    cut: int = 0  # captions longer than MAX_CAPTION_CHARS, labelled on their first characters

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        n = max(self.captions, 1)
        recorded = self.captions if self.recorded < 0 else self.recorded
        of = "" if recorded == self.captions else f" of the first {recorded:,}"
        return (
            f"captions: {self.captions:,} in {self.seconds:.1f} s "
            f"({self.captions_per_s:,.0f} captions/s over {self.where or f'{self.workers} process(es)'}, "
            f"{self.captions_per_s / self.workers:,.0f} per worker)\n"
            f"synsets seen: {self.synsets_seen:,}; vocabulary: {self.vocab_size:,}\n"
            f"captions with no noun synset: {self.no_synset:,} ({100 * self.no_synset / n:.2f}%); "
            f"with no label in the vocabulary: {self.no_label:,}{of} "
            f"({100 * self.no_label / max(recorded, 1):.2f}%)"
            + (
                f"\ncaptions cut to their first {MAX_CAPTION_CHARS:,} characters: {self.cut:,}"
                if self.cut
                else ""
            )
        )


class TaskError(RuntimeError):
    """Tasks that failed (each message names its file); the others finished."""


@dataclass
class _Merger:
    """Adds task results in task order: synset counts, names, and the per-caption record."""

    counts: Counter[str] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # wnid -> compact id, for the record
    flat: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    captions: int = 0
    no_synset: int = 0
    recorded: int = 0
    cut: int = 0

    def add(self, chunk: ChunkCounts) -> None:
        self.names.update(zip(chunk.wnids, chunk.names, strict=True))
        local = np.asarray([self.ids.setdefault(k, len(self.ids)) for k in chunk.wnids], np.int32)
        per_id = np.bincount(chunk.ids, minlength=len(chunk.wnids)) if chunk.ids.size else ()
        for key, n in zip(chunk.wnids, per_id, strict=True):
            self.counts[key] += int(n)
        self.captions += len(chunk.lengths)
        self.cut += chunk.cut
        self.no_synset += int((chunk.lengths == 0).sum())
        if self.recorded < RECORD_LIMIT:
            self.flat.append(local[chunk.ids] if chunk.ids.size else chunk.ids)
            self.lengths.append(chunk.lengths)
            self.recorded += len(chunk.lengths)

    def no_label(self, vocab: Vocabulary) -> int:
        """Recorded captions none of whose synsets made it into ``vocab``."""
        per_caption = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        kept = np.zeros(len(self.ids), bool)
        kept[[self.ids[k] for k in vocab.wnids]] = True
        all_ids = np.concatenate(self.flat) if self.flat else np.zeros(0, np.int32)
        starts = np.concatenate([[0], np.cumsum(per_caption)[:-1]]).astype(np.int64)
        has_label = np.zeros(len(per_caption), bool)
        nonempty = per_caption > 0
        if all_ids.size:
            has_label[nonempty] = np.add.reduceat(kept[all_ids].astype(np.int32), starts[nonempty]) > 0
        return int((~has_label).sum())


def _in_this_process(fn: Callable, tasks: Iterable[Any], progress: Callable[[int], None]) -> Iterator:
    for i, task in enumerate(tasks):
        yield i, fn(task, progress)


def build_vocabulary(
    captions: Iterable[object] = (),
    *,
    files: Iterable[Path] = (),
    min_count: int = 1,
    top_k: int | None = None,
    executor: Any = None,
    pos_filter: bool = True,
    official: bool = False,
    nltk_data: tuple[str, ...] = (),
    total: int | None = None,
    progress: bool = True,
) -> tuple[Vocabulary, VocabStats]:
    """Count synsets once per caption of ``captions`` and ``files`` and keep the frequent ones.

    ``executor`` runs the tasks (``engine.executor.LocalExecutor`` or ``RayExecutor``; default:
    this process). A task that fails (a corrupt tar) does not stop the others; then
    :class:`TaskError` names every failed file, and no vocabulary is returned."""
    from tqdm import tqdm

    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    settings = LabelSettings(pos_filter, official, tuple(nltk_data))
    if executor is None or getattr(executor, "forks", False):
        worker_labeler(settings)  # here, or once before the fork instead of in every worker
    tasks = caption_tasks(captions, files=files, settings=settings)
    run = executor.map_unordered if executor is not None else _in_this_process
    merger, pending, failures, next_index = _Merger(), [], [], 0
    start = time.perf_counter()
    bar = tqdm(total=total, unit="caption", disable=not progress, desc="labelling", smoothing=0.1)
    try:
        for index, result in run(label_task, tasks, bar.update):
            if hasattr(result, "error"):  # a TaskFailure
                failures.append(result)
                result = None
            heapq.heappush(pending, (index, result))
            while pending and pending[0][0] == next_index:  # merge in task order
                chunk = heapq.heappop(pending)[1]
                if chunk is not None:
                    merger.add(chunk)
                next_index += 1
    finally:
        bar.close()
    if failures:
        raise TaskError("; ".join(str(f.error) for f in sorted(failures, key=lambda f: f.index)))
    vocab = Vocabulary.from_counts(merger.counts, merger.names, min_count=min_count, top_k=top_k)
    stats = VocabStats(
        captions=merger.captions,
        seconds=time.perf_counter() - start,
        workers=getattr(executor, "workers", 1),
        synsets_seen=len(merger.counts),
        vocab_size=len(vocab),
        no_synset=merger.no_synset,
        no_label=merger.no_label(vocab),
        recorded=merger.recorded,
        where=getattr(executor, "where", "1 process"),
        cut=merger.cut,
    )
    return vocab, stats
