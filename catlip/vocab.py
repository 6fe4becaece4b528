"""Build the CatLIP vocabulary: count each caption's noun synsets once, prune by frequency.

The counting runs over worker processes, each with its own NLTK and token cache; captions travel
to them in chunks and per-chunk counts come back. For the summary, each caption's synsets are
kept as compact ids (about 13 bytes a caption), so the share of captions left without a label
after pruning is exact.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from catlip.labels import CaptionLabeler, Vocabulary

CHUNK = 512  # captions per task: large enough to amortise the pickling, small for a smooth bar


@dataclass
class VocabStats:
    captions: int
    seconds: float
    workers: int
    synsets_seen: int  # distinct synsets before pruning
    vocab_size: int
    no_synset: int  # captions with no noun synset at all
    no_label: int  # captions with no synset in the pruned vocabulary

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        n = max(self.captions, 1)
        return (
            f"captions: {self.captions:,} in {self.seconds:.1f} s "
            f"({self.captions_per_s:,.0f} captions/s over {self.workers} process(es), "
            f"{self.captions_per_s / self.workers:,.0f} per process)\n"
            f"synsets seen: {self.synsets_seen:,}; vocabulary: {self.vocab_size:,}\n"
            f"captions with no noun synset: {self.no_synset:,} ({100 * self.no_synset / n:.2f}%); "
            f"with no label in the vocabulary: {self.no_label:,} ({100 * self.no_label / n:.2f}%)"
        )


_worker_labeler: CaptionLabeler | None = None


def _init_worker(pos_filter: bool, official: bool) -> None:
    global _worker_labeler
    from nltk.corpus import wordnet

    # A forked worker inherits the parent's open WordNet data files, and with them one shared file
    # offset: concurrent seek+read then return other processes' lines. Reopen them per process.
    if hasattr(wordnet, "_data_file_map"):
        wordnet._data_file_map = {}
    _worker_labeler = CaptionLabeler(pos_filter=pos_filter, official=official)


def _label_chunk(captions: list[object]) -> tuple[list[list[str]], dict[str, str]]:
    labeler = _worker_labeler
    keys = [labeler.synsets(c) for c in captions]
    names = {k: labeler.name_of(k) for ks in keys for k in ks}
    return keys, names


def _chunks(items: Iterable[object], size: int) -> Iterator[list[object]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def build_vocabulary(
    captions: Iterable[object],
    *,
    min_count: int = 1,
    top_k: int | None = None,
    workers: int | None = None,
    pos_filter: bool = True,
    official: bool = False,
    total: int | None = None,
    progress: bool = True,
) -> tuple[Vocabulary, VocabStats]:
    """Count synsets once per caption over ``workers`` processes and keep the frequent ones."""
    from tqdm import tqdm

    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    workers = workers or len(os.sched_getaffinity(0))
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    ids: dict[str, int] = {}  # wnid -> compact id, for the per-caption record
    flat: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    start = time.perf_counter()
    bar = tqdm(total=total, unit="caption", disable=not progress, desc="labelling", smoothing=0.1)
    if workers == 1:
        _init_worker(pos_filter, official)
        results: Iterable = map(_label_chunk, _chunks(captions, CHUNK))
        pool = None
    else:
        # fork: workers inherit the loaded NLTK data instead of re-reading it.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(pos_filter, official))
        results = pool.imap(_label_chunk, _chunks(captions, CHUNK))
    try:
        for keys, chunk_names in results:
            names.update(chunk_names)
            for ks in keys:
                counts.update(ks)
            flat.append(np.fromiter((ids.setdefault(k, len(ids)) for ks in keys for k in ks), np.int32))
            lengths.append(np.fromiter((len(ks) for ks in keys), np.int32, count=len(keys)))
            bar.update(len(keys))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - start
    vocab = Vocabulary.from_counts(counts, names, min_count=min_count, top_k=top_k)

    per_caption = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    id_kept = np.zeros(len(ids), bool)
    for key in vocab.wnids:
        id_kept[ids[key]] = True
    all_ids = np.concatenate(flat) if flat else np.zeros(0, np.int32)
    starts = np.concatenate([[0], np.cumsum(per_caption)[:-1]]).astype(np.int64)
    has_label = np.zeros(len(per_caption), bool)
    nonempty = per_caption > 0
    if all_ids.size:
        has_label[nonempty] = np.add.reduceat(id_kept[all_ids].astype(np.int32), starts[nonempty]) > 0
    stats = VocabStats(
        captions=len(per_caption),
        seconds=seconds,
        workers=workers,
        synsets_seen=len(counts),
        vocab_size=len(vocab),
        no_synset=int((~nonempty).sum()),
        no_label=int((~has_label).sum()),
    )
    return vocab, stats
