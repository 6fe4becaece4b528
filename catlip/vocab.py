"""Build the CatLIP vocabulary: count each caption's noun synsets once, prune by frequency.

The captions are cut into tasks: a WebDataset tar is one task that its worker reads itself, and
captions from a COCO JSON, a TSV or a Python list travel in chunks of :data:`CHUNK`. An executor
(``engine.executor``: local processes or Ray; by default this process) runs :func:`label_task` on
each; every worker keeps its own labeler and token cache. Results are merged in task order, so the
vocabulary does not depend on where or how the tasks ran: the TSV is byte for byte the same.

The catlip-2 labeler is fitted on the captions first (:func:`fit_task` on the same tasks, one more
pass: its corpus sense table, :class:`catlip.senses.SenseTable`), then labels them with the table;
:func:`write_vocabulary` saves the table beside the vocabulary and names it in ``vocab.tsv.json``.
With ``labels_out``, each caption's synsets are written once (:class:`LabelsFile`) for
``catlip pack --labels``. :func:`make_vocabulary` is what ``catlip vocab`` runs: build, check that
the vocabulary is not empty, write.

For the summary, each caption's synsets are kept as compact ids (about 13 bytes a caption) for
the first :data:`RECORD_LIMIT` captions, so the share of captions left without a label after
pruning is exact up to there (and measured on that prefix beyond).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catlip.captions import MAX_CAPTION_CHARS
from catlip.labels import (
    DEFAULT_LABELER,
    LabelerSpec,
    Vocabulary,
    VocabularyError,
    load_senses,
    make_labeler,
    senses_path,
    vocab_meta_path,
)

CHUNK = 512  # captions per task: large enough to amortise the transfer, small for a smooth bar
RECORD_LIMIT = 200_000_000  # captions whose synsets are kept for the no-label share (~2.6 GB)


@dataclass(frozen=True)
class LabelSettings:
    """How captions are labelled, as a task carries it to a worker: the labeler, the path of its
    sense table (catlip-2; the workers read it there and check its digest), NLTK data folders."""

    labeler: LabelerSpec = LabelerSpec()
    senses: str | None = None
    nltk_data: tuple[str, ...] = ()  # extra NLTK data folders (``--nltk-data``), for the workers
    hashes: bool = False  # return each caption's digest, for a labels file


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
    hashes: list[str] | None = None  # caption_digest of each caption, with settings.hashes


_labelers: dict[tuple[LabelSettings, int], Any] = {}


def worker_labeler(settings: LabelSettings) -> Any:
    """This process's labeler for ``settings``, made once per process (and again after a fork)."""
    key = (settings, os.getpid())
    if key not in _labelers:
        from catlip.nltk_resources import add_to_nltk_path, wordnet

        for directory in settings.nltk_data:
            add_to_nltk_path(directory)
        # A forked worker inherits the parent's open WordNet data files, and with them one shared
        # file offset: concurrent seek+read then return other processes' lines. Reopen them.
        wn = wordnet()
        if hasattr(wn, "_data_file_map"):
            wn._data_file_map = {}
        _labelers.clear()
        fitted = settings.labeler.senses_sha256 is not None
        senses = load_senses(settings.labeler, settings.senses) if fitted else None
        _labelers[key] = make_labeler(settings.labeler, senses)
    return _labelers[key]


def caption_digest(labeler: Any, caption: object) -> str:
    """The key of a caption in a labels file: SHA-1 (16 hex digits) of the text ``labeler`` reads
    of it (cut and cleaned: its labels depend on nothing else, so "A dog. " and "a dog." share one)."""
    return hashlib.sha1(labeler.clean(caption).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _task_captions(task: VocabTask) -> Iterable[object]:
    from catlip.captions import read_webdataset

    if task.path is not None:
        return (c for _, c in read_webdataset(Path(task.path)))
    return task.captions


def fit_task(task: VocabTask, report: Callable[[int], None]) -> Any:
    """catlip-2's corpus statistics of one task's captions (a worker's side)."""
    counts = worker_labeler(task.settings).fit_counts(_task_captions(task))
    report(counts.captions)
    return counts


def label_task(task: VocabTask, report: Callable[[int], None]) -> ChunkCounts:
    """Label one task's captions (a worker's side); ``report`` counts them for the progress bar."""
    labeler = worker_labeler(task.settings)
    local: dict[str, int] = {}
    ids: list[int] = []
    lengths: list[int] = []
    hashes: list[str] | None = [] if task.settings.hashes else None
    cut = 0
    for caption in _task_captions(task):
        cut += isinstance(caption, str) and len(caption) > MAX_CAPTION_CHARS
        if hashes is not None:
            hashes.append(caption_digest(labeler, caption))
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
        hashes,
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
    labeler: LabelerSpec = LabelerSpec()
    senses: Any = None  # catlip-2's fitted SenseTable
    fit_seconds: float = 0.0

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        n = max(self.captions, 1)
        recorded = self.captions if self.recorded < 0 else self.recorded
        of = "" if recorded == self.captions else f" of the first {recorded:,}"
        fit = f" (+ {self.fit_seconds:.1f} s fitting the sense table)" if self.senses is not None else ""
        return (
            f"labeler: {self.labeler.describe()}\n"
            f"captions: {self.captions:,} in {self.seconds:.1f} s{fit} "
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


class LabelsFile:
    """Each caption's synsets, written once by ``catlip vocab --labels-out`` for ``catlip pack
    --labels``: a header line ``# catlip-labels/1 {"labeler": ...}`` (the labeler's record), then
    one line per caption, ``digest<TAB>wnid wnid ...`` (:func:`caption_digest`), in input order."""

    FORMAT = "catlip-labels/1"

    def __init__(self, path: Path | str, labeler: LabelerSpec) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.partial, "w", encoding="utf-8")
        self._f.write(f"# {self.FORMAT} {json.dumps({'labeler': labeler.record()}, sort_keys=True)}\n")
        self.lines = 0

    def add(self, chunk: ChunkCounts) -> None:
        ends = np.cumsum(chunk.lengths)
        for digest, end, n in zip(chunk.hashes or (), ends, chunk.lengths, strict=True):
            keys = " ".join(chunk.wnids[i] for i in chunk.ids[end - n : end])
            self._f.write(f"{digest}\t{keys}\n")
        self.lines += len(chunk.lengths)

    def close(self, ok: bool) -> None:
        self._f.close()
        if ok:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)

    @classmethod
    def read(cls, path: Path | str) -> tuple[LabelerSpec, dict[str, list[str]]]:
        """(the labeler, caption digest -> wnids) of a labels file; errors name the file and line."""
        path = Path(path)
        out: dict[str, list[str]] = {}
        try:
            with open(path, encoding="utf-8") as f:
                head = f.readline()
                prefix = f"# {cls.FORMAT} "
                if not head.startswith(prefix):
                    raise VocabularyError(
                        f"{path}:1: not a catlip labels file (write one with `catlip vocab --labels-out`)"
                    )
                try:
                    spec = LabelerSpec.from_record(
                        json.loads(head[len(prefix) :])["labeler"], where=f"{path}:1"
                    )
                except (ValueError, KeyError, TypeError) as err:
                    raise VocabularyError(f"{path}:1: malformed header ({err})") from None
                for lineno, line in enumerate(f, start=2):
                    digest, tab, keys = line.rstrip("\n").partition("\t")
                    if not tab or len(digest) != 16:
                        raise VocabularyError(
                            f"{path}:{lineno}: expected digest<TAB>wnids, got {line[:80]!r}"
                        )
                    out[digest] = keys.split()
        except (OSError, UnicodeDecodeError) as err:
            raise VocabularyError(f"{path}: cannot read the labels file ({err})") from None
        return spec, out


def _run_tasks(
    fn: Callable, tasks: Iterable[VocabTask], executor: Any, bar: Any, add: Callable[[Any], None]
) -> None:
    """Run ``fn`` on ``tasks`` and ``add`` the results in task order; TaskError names failures."""
    run = executor.map_unordered if executor is not None else _in_this_process
    pending: list = []
    failures: list = []
    next_index = 0
    for index, result in run(fn, tasks, bar.update):
        if hasattr(result, "error"):  # a TaskFailure
            failures.append(result)
            result = None
        heapq.heappush(pending, (index, result))
        while pending and pending[0][0] == next_index:  # merge in task order
            done = heapq.heappop(pending)[1]
            if done is not None:
                add(done)
            next_index += 1
    if failures:
        raise TaskError("; ".join(str(f.error) for f in sorted(failures, key=lambda f: f.index)))


def build_vocabulary(
    captions: Iterable[object] = (),
    *,
    files: Iterable[Path] = (),
    min_count: int = 1,
    top_k: int | None = None,
    executor: Any = None,
    labeler: LabelerSpec | str = DEFAULT_LABELER,
    senses_out: Path | str | None = None,
    labels_out: Path | str | None = None,
    nltk_data: tuple[str, ...] = (),
    total: int | None = None,
    progress: bool = True,
) -> tuple[Vocabulary, VocabStats]:
    """Count synsets once per caption of ``captions`` and ``files`` and keep the frequent ones.

    ``executor`` runs the tasks (``engine.executor.LocalExecutor`` or ``RayExecutor``; default:
    this process). ``labeler``: catlip-2 (the default) is fitted on the captions first; its table
    is written to ``senses_out`` (a temporary file when None; either way ``stats.senses``), where
    the workers read it. ``labels_out``: write each caption's synsets there (:class:`LabelsFile`).
    A task that fails (a corrupt tar) does not stop the others; then :class:`TaskError` names every
    failed file, and no vocabulary is returned."""
    from catlip.progress import progress as progress_bar

    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    spec = LabelerSpec.parse(labeler) if isinstance(labeler, str) else labeler
    fits = spec.name == "catlip-2" and spec.senses_sha256 is None
    if fits and not isinstance(captions, list | tuple):
        captions = list(captions)  # read twice: the fit, then the labels
    fresh = LabelSettings(spec, None, tuple(nltk_data))
    forks = executor is None or getattr(executor, "forks", False)
    table, fit_seconds, tmpdir = None, 0.0, None
    try:
        if fits:
            start = time.perf_counter()
            if forks:
                worker_labeler(fresh)  # here, or once before the fork instead of in every worker
            from catlip.senses import FitCounts

            fitted = FitCounts()
            bar = progress_bar(total, unit="caption", enabled=progress, desc="fitting senses", smoothing=0.1)
            try:
                _run_tasks(
                    fit_task,
                    caption_tasks(captions, files=files, settings=fresh),
                    executor,
                    bar,
                    fitted.merge,
                )
            finally:
                bar.close()
            table = fitted.table()
            if senses_out is None:
                tmpdir = tempfile.mkdtemp(prefix="catlip-senses-")
                senses_out = Path(tmpdir) / "senses.json"
            table.save(senses_out)
            spec = LabelerSpec(spec.name, spec.pos_filter, table.sha256)
            fit_seconds = time.perf_counter() - start
        settings = LabelSettings(
            spec, None if senses_out is None else str(senses_out), tuple(nltk_data), labels_out is not None
        )
        if forks:
            worker_labeler(settings)
        merger = _Merger()
        writer = LabelsFile(labels_out, spec) if labels_out is not None else None

        def add(chunk: ChunkCounts) -> None:
            merger.add(chunk)
            if writer is not None:
                writer.add(chunk)

        start = time.perf_counter()
        bar = progress_bar(total, unit="caption", enabled=progress, desc="labelling", smoothing=0.1)
        ok = False
        try:
            _run_tasks(
                label_task, caption_tasks(captions, files=files, settings=settings), executor, bar, add
            )
            ok = True
        finally:
            bar.close()
            if writer is not None:
                writer.close(ok)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
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
        labeler=spec,
        senses=table,
        fit_seconds=fit_seconds,
    )
    return vocab, stats


def write_vocabulary(
    out: Path | str, vocab: Vocabulary, stats: VocabStats, meta: dict[str, Any] | None = None
) -> None:
    """Save the vocabulary TSV, its sense table (catlip-2: ``vocab.tsv.senses.json``) and its
    sidecar ``vocab.tsv.json`` (``meta``, the labeler's record and the counts)."""
    out = Path(out)
    vocab.save(out)
    if stats.senses is not None:
        stats.senses.save(senses_path(out))
    record = {
        **(meta or {}),
        "labeler": stats.labeler.record(),
        "captions": stats.captions,
        "synsets_seen": stats.synsets_seen,
        "vocab_size": stats.vocab_size,
        "captions_no_label": stats.no_label,
    }
    if stats.senses is not None:
        record["senses"] = senses_path(out).name
    tmp = vocab_meta_path(out).with_name(vocab_meta_path(out).name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(vocab_meta_path(out))


class EmptyVocabulary(ValueError):
    """Captions that give no synset frequent enough: no vocabulary is written."""


def make_vocabulary(
    files: Iterable[Path],
    out: Path | str,
    *,
    min_count: int = 1,
    top_k: int | None = None,
    executor: Any = None,
    labeler: LabelerSpec | str = DEFAULT_LABELER,
    labels_out: Path | str | None = None,
    nltk_data: tuple[str, ...] = (),
    progress: bool = True,
) -> tuple[Vocabulary, VocabStats]:
    """What ``catlip vocab`` does: :func:`build_vocabulary` over caption ``files``, then
    :func:`write_vocabulary` to ``out`` with the sources and settings in its sidecar.

    catlip-2's sense table is fitted into ``<out>.senses.json.partial`` (removed whatever happens;
    the table is saved under its own name with the vocabulary). :class:`EmptyVocabulary` when no
    synset is in ``min_count`` captions; :class:`TaskError` (or the executor's error) when a task
    failed. Either way nothing is written but ``labels_out``."""
    files = [Path(f) for f in files]
    out = Path(out)
    spec = LabelerSpec.parse(labeler) if isinstance(labeler, str) else labeler
    partial = senses_path(out).with_name(senses_path(out).name + ".partial")
    try:
        vocab, stats = build_vocabulary(
            files=files,
            min_count=min_count,
            top_k=top_k,
            executor=executor,
            labeler=spec,
            senses_out=partial if spec.name == "catlip-2" else None,
            labels_out=labels_out,
            nltk_data=nltk_data,
            progress=progress,
        )
    finally:
        partial.unlink(missing_ok=True)
    if len(vocab) == 0:
        why = "no captions in them" if stats.captions == 0 else f"no synset in >= {min_count} captions"
        raise EmptyVocabulary(f"{', '.join(map(str, files))}: {why}, so the vocabulary would be empty")
    meta = {
        "sources": [str(p) for p in files],
        "min_count": min_count,
        "top_k": top_k,
        "captions_cut": stats.cut,
    }
    write_vocabulary(out, vocab, stats, meta)
    return vocab, stats
