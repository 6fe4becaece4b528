"""Pack image-caption pairs into WebDataset tar shards with CatLIP labels, ready for DALI.

Each sample of a shard is three members with one key: ``KEY.jpg`` (the original image bytes;
``.png`` or ``.webp`` for those formats), ``KEY.txt`` (the caption, UTF-8) and ``KEY.lbl`` (the
caption's sorted unique label indices into the vocabulary, little-endian int32, possibly empty).
Labels are computed here, once, with :class:`catlip.labels.LabelEncoder`, so NLTK never runs in the
training loop. ``dataset.json`` records the counts, the vocabulary and the shard names;
``rejects.tsv`` lists every sample that was left out, and why.

:func:`pack` is four steps: open the outputs (:class:`_Outputs`), read and validate each image
(:class:`_ImageReader`, which decodes each file once however many captions name it), label and
write the sample to its split, then write each split's ``dataset.json``.

With ``holdout_fraction`` > 0 images are split by a hash of their bytes, so every caption of an
image (and every copy of the same image) falls on the same side; ``train/`` and ``val/`` each get
their own shards and ``dataset.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.packing.shards import ShardWriter, check_image
from engine.packing.sources import RawSample

MAX_MESSAGES = 50  # reject messages printed per reason; rejects.tsv has all of them


@dataclass
class SplitStats:
    """Counts of one output folder (the whole dataset, or its train or val split)."""

    out: Path
    samples: int = 0
    images: set[str] = field(default_factory=set, repr=False)  # content hashes
    label_total: int = 0
    no_label: int = 0
    trimmed_jpegs: int = 0  # JPEGs with bytes after the end marker, stored without them
    shard_names: list[str] = field(default_factory=list)
    shard_counts: list[int] = field(default_factory=list)

    @property
    def labels_mean(self) -> float:
        return self.label_total / self.samples if self.samples else 0.0

    @property
    def no_label_share(self) -> float:
        return self.no_label / self.samples if self.samples else 0.0

    def metadata(self, split: str) -> dict:
        return {
            "split": split,
            "samples": self.samples,
            "shards": len(self.shard_names),
            "images": len(self.images),
            "captions": self.samples,
            "labels_per_sample_mean": round(self.labels_mean, 4),
            "no_label_share": round(self.no_label_share, 4),
            "trimmed_jpegs": self.trimmed_jpegs,
        }


@dataclass
class PackStats:
    """What :func:`pack` did: per-split counts and rejects by reason."""

    splits: dict[str, SplitStats]
    rejects: Counter[str]
    seconds: float
    shard_size: int

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
            lines.append(
                f"{where}{s.samples:,} samples ({len(s.images):,} images) in {len(s.shard_names)} "
                f"shard(s) of <= {self.shard_size:,} in {s.out}; labels per sample: mean "
                f"{s.labels_mean:.2f}, {100 * s.no_label_share:.1f}% with none{trimmed}"
            )
        total = sum(self.rejects.values())
        lines.append(f"rejected: {total:,} sample(s)" + (":" if total else ""))
        lines += [f"  {reason}: {n:,}" for reason, n in self.rejects.most_common()]
        lines.append(f"{self.samples / max(self.seconds, 1e-9):,.0f} samples/s over {self.seconds:.1f} s")
        return "\n".join(lines)


def _split_of(digest: bytes, holdout_fraction: float) -> str:
    """``val`` for a ``holdout_fraction`` of images, by the first 8 bytes of their SHA-1."""
    return "val" if int.from_bytes(digest[:8], "big") < holdout_fraction * 2**64 else "train"


class _Rejects:
    """Counts rejected samples by reason, lists each in ``rejects.tsv`` and prints the first ones."""

    def __init__(self, path: Path) -> None:
        self.counts: Counter[str] = Counter()
        self._shown: Counter[str] = Counter()
        self._file = open(path, "w", newline="")
        self._rows = csv.writer(self._file, delimiter="\t", lineterminator="\n")
        self._rows.writerow(("key", "image", "reason"))

    def __call__(self, sample: RawSample, reason: str, *, first: bool = True) -> None:
        from tqdm import tqdm

        self.counts[reason] += 1
        self._rows.writerow((sample.key, sample.image, reason))
        if first and self._shown[reason] < MAX_MESSAGES:  # one message per image, not per caption
            self._shown[reason] += 1
            more = (
                " (further ones are counted, and listed in rejects.tsv)"
                if self._shown[reason] == MAX_MESSAGES
                else ""
            )
            tqdm.write(f"skipped {sample.image}: {reason}{more}")

    def close(self) -> None:
        self._file.close()


@dataclass
class _Image:
    ext: str
    data: bytes  # the bytes to store (a JPEG ends at its end marker)
    digest: bytes  # SHA-1 of ``data``: the holdout split and the image count
    trimmed: bool


class _ImageReader:
    """Reads and validates a sample's image; a file named by several captions is decoded once."""

    def __init__(self, reject: _Rejects) -> None:
        self.reject = reject
        self._cache: dict[Path, tuple[str | None, str | None, bytes]] = {}  # path -> (ext, reason, digest)

    def __call__(self, sample: RawSample) -> _Image | None:
        """The validated image, or None after rejecting the sample."""
        data = sample.data if sample.data is not None else self._read(sample)
        if data is None:
            return None
        size = len(data)
        if sample.path is not None and sample.path in self._cache:  # seen: only redo the trim
            ext, reason, digest = self._cache[sample.path]
            if ext == "jpg" and not data.endswith(b"\xff\xd9"):
                data = data[: data.rfind(b"\xff\xd9") + 2]
            first = False
        else:
            ext, data, reason = check_image(data)
            digest = hashlib.sha1(data).digest()
            if sample.path is not None:
                self._cache[sample.path] = (ext, reason, digest)
            first = True
        if reason is not None:
            self.reject(sample, reason, first=first)
            return None
        return _Image(ext, data, digest, trimmed=len(data) != size)

    def _read(self, sample: RawSample) -> bytes | None:
        from tqdm import tqdm

        cached = self._cache.get(sample.path)
        if cached is not None and cached[1] is not None:  # known bad: count it, no message
            self.reject(sample, cached[1], first=False)
            return None
        try:
            return sample.path.read_bytes()
        except FileNotFoundError:
            reason = "missing file"
        except OSError as err:
            tqdm.write(f"cannot read {sample.path}: {err}")
            reason = "unreadable file"
        self._cache[sample.path] = (None, reason, b"")
        self.reject(sample, reason)
        return None


class _Outputs:
    """The output folders (``out`` alone, or ``out/train`` and ``out/val``), their shard writers and
    counts. Opening removes a previous run's shards so a shorter re-pack leaves none behind."""

    def __init__(self, out: Path, shard_size: int, holdout_fraction: float) -> None:
        self.out, self.holdout_fraction = out, holdout_fraction
        names = ["train", "val"] if holdout_fraction > 0 else ["all"]
        self.dirs = {n: out / n if holdout_fraction > 0 else out for n in names}
        for d in self.dirs.values():
            for stale in (*d.glob("shard-*.tar"), *d.glob("shard-*.idx"), *d.glob("shard-*.tar.tmp")):
                stale.unlink()
        self.writers = {n: ShardWriter(d, shard_size) for n, d in self.dirs.items()}
        self.stats = {n: SplitStats(d) for n, d in self.dirs.items()}
        out.mkdir(parents=True, exist_ok=True)

    def write(self, key: str, image: _Image, caption: str, labels: list[int]) -> None:
        split = _split_of(image.digest, self.holdout_fraction) if self.holdout_fraction > 0 else "all"
        lbl = np.asarray(labels, "<i4").tobytes()
        self.writers[split].write(
            key, [(image.ext, image.data), ("txt", caption.encode("utf-8")), ("lbl", lbl)]
        )
        s = self.stats[split]
        s.samples += 1
        s.images.add(image.digest.hex())
        s.label_total += len(labels)
        s.no_label += not labels
        s.trimmed_jpegs += image.trimmed

    def close(self) -> None:
        for n, w in self.writers.items():
            w.close()
            self.stats[n].shard_names, self.stats[n].shard_counts = w.names, w.counts

    def write_metadata(self, settings: dict) -> None:
        """``dataset.json`` per split (and, with a holdout, one above listing the splits)."""
        for n, s in self.stats.items():
            meta = {
                **s.metadata(n),
                **settings,
                "shard_names": s.shard_names,
                "shard_samples": s.shard_counts,
            }
            (s.out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.holdout_fraction > 0:
            splits = {
                n: {"dir": n, "samples": s.samples, "images": len(s.images)} for n, s in self.stats.items()
            }
            (self.out / "dataset.json").write_text(
                json.dumps({"splits": splits, **settings}, indent=2) + "\n"
            )


def pack(
    source: Iterable[RawSample],
    out: Path | str,
    vocab: Path | str,
    *,
    shard_size: int = 1000,
    holdout_fraction: float = 0.0,
    pos_filter: bool = True,
    official: bool = False,
    progress: bool = True,
) -> PackStats:
    """Validate, label and write ``source`` into shards under ``out`` (``out/train`` and
    ``out/val`` with a holdout). Rejected samples are reported and counted, never silently
    dropped. Returns the counts; ``dataset.json`` in each output folder records them."""
    from tqdm import tqdm

    from catlip.labels import LabelEncoder

    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    out, vocab = Path(out), Path(vocab)
    encoder = LabelEncoder(vocab, pos_filter=pos_filter, official=official)
    outputs = _Outputs(out, shard_size, holdout_fraction)
    reject = _Rejects(out / "rejects.tsv")
    read_image = _ImageReader(reject)
    total = len(source) if hasattr(source, "__len__") else None
    start = time.perf_counter()
    bar = tqdm(source, total=total, unit="sample", desc="packing", disable=not progress, smoothing=0.1)
    try:
        for sample in bar:
            if sample.problem:
                reject(sample, sample.problem)
                continue
            image = read_image(sample)
            if image is not None:
                caption = sample.caption if isinstance(sample.caption, str) else ""
                outputs.write(sample.key, image, caption, encoder(caption))
    finally:
        bar.close()
        reject.close()
        outputs.close()
    outputs.write_metadata(
        {
            "vocab": str(vocab.resolve()),
            "vocab_size": len(encoder.vocab),
            "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),  # checked by training
            "pos_filter": pos_filter and not official,
            "official": official,
            "shard_size": shard_size,
            "holdout_fraction": holdout_fraction,
            "rejects": dict(reject.counts.most_common()),
            "rejected_samples": sum(reject.counts.values()),
        }
    )
    return PackStats(outputs.stats, reject.counts, time.perf_counter() - start, shard_size)
