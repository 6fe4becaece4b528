"""One packing task, as a worker runs it: read its samples, check their images, label their
captions (class-labelled samples bring their classes), write its output shard (one per split),
and mark it done.

Task ``k`` writes ``shard-k.tar`` (+ ``.idx``) into the staging folder (into ``train/`` and
``val/`` with a holdout) and then ``done/shard-k.json``, by rename, so a shard under its real name
and with its marker is complete. The marker holds what the driver merges: counts, the 64-bit
image digests (for the images count) and the rejects. Nothing here depends on which worker, or
which kind of executor, runs the task, so the shard's bytes do not either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from catlip.captions import cut_caption
from catlip.labels import LabelerSpec
from engine.packing.shards import SHARD_PATTERN, TarShard, check_images, shrink_image
from engine.packing.sources import RawSample, read_img2dataset_tar

BATCH = 64  # samples read, checked and labelled together (also the progress granularity)


@dataclass(frozen=True)
class PackSettings:
    """What every task of one pack shares."""

    staging: str  # the folder the shards are built in
    vocab: str  # "" for a class pack (no captions to label)
    vocab_sha256: str
    holdout_fraction: float = 0.0
    labeler: LabelerSpec = LabelerSpec()
    senses: str | None = None  # catlip-2's sense table (beside the vocabulary)
    labels: str | None = None  # `catlip vocab --labels-out`: captions labelled there, not here
    nltk_data: tuple[str, ...] = ()
    label_member: str = "lbl"  # "lbl": caption labels (KEY.txt + KEY.lbl); "cls": classes (KEY.cls)
    num_classes: int = 0  # a class pack's classes (per-class counts)
    resize_shorter: int = 0  # > 0: images stored at most this many pixels on their shorter side


@dataclass(frozen=True)
class PackTask:
    """Output shard ``index``: from ``samples`` (a folder source's slice) or the tar ``tar``.
    ``identity`` names the input (the samples' hash, or the tar's size and mtime): a done marker
    counts on a re-run only if it was written for the same identity."""

    index: int
    settings: PackSettings
    samples: tuple[RawSample, ...] = ()
    tar: str | None = None
    identity: str = ""


@dataclass
class SplitPart:
    """One split's part of a task: its shard (None when no sample landed there) and counts."""

    shard: str | None = None
    samples: int = 0
    label_total: int = 0
    no_label: int = 0
    trimmed_jpegs: int = 0
    resized: int = 0  # samples whose image is stored resized (resize_shorter)
    cut_captions: int = 0  # captions stored and labelled cut to MAX_CAPTION_CHARS
    labelled_here: int = 0  # with --labels: captions the labels file lacked, labelled here
    digests: bytes = b""  # 8 bytes of each sample's image SHA-1
    max_labels: int = 0  # the most labels (classes) of one sample
    class_samples: list[int] = field(default_factory=list)  # a class pack: samples per class


@dataclass
class ShardResult:
    index: int
    parts: dict[str, SplitPart] = field(default_factory=dict)
    rejects: list[tuple[str, str, str, bool]] = field(default_factory=list)  # key, image, reason, first
    identity: str = ""

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.parts.values())

    def to_json(self) -> str:
        parts = {
            n: {**asdict(p), "digests": base64.b64encode(p.digests).decode()} for n, p in self.parts.items()
        }
        return json.dumps(
            {"index": self.index, "identity": self.identity, "parts": parts, "rejects": self.rejects}
        )

    @classmethod
    def from_json(cls, text: str) -> ShardResult:
        raw = json.loads(text)
        parts = {
            n: SplitPart(**{**p, "digests": base64.b64decode(p["digests"])}) for n, p in raw["parts"].items()
        }
        return cls(raw["index"], parts, [tuple(r) for r in raw["rejects"]], raw["identity"])


def split_names(holdout_fraction: float) -> list[str]:
    return ["train", "val"] if holdout_fraction > 0 else ["all"]


def split_dir(root: Path, split: str) -> Path:
    return root if split == "all" else root / split


def marker_path(staging: Path, index: int) -> Path:
    return staging / "done" / (SHARD_PATTERN.format(index)[: -len(".tar")] + ".json")


def split_of(digest: bytes, holdout_fraction: float) -> str:
    """``val`` for a ``holdout_fraction`` of images, by the first 8 bytes of their SHA-1."""
    if holdout_fraction <= 0:
        return "all"
    return "val" if int.from_bytes(digest[:8], "big") < holdout_fraction * 2**64 else "train"


_encoders: dict[tuple, object] = {}
# (path, size, mtime) -> (ext, reason, digest): a file named by several captions is checked once
_verdicts: dict[tuple[Path, int, int], tuple[str | None, str | None, bytes]] = {}
_VERDICTS_MAX = 100_000  # files remembered per process (a COCO image is named by 5 captions)


def _encoder(settings: PackSettings):
    """This process's label encoder for the settings (made again after a fork)."""
    from catlip.vocab import LabelSettings, worker_labeler

    key = (settings.vocab, settings.vocab_sha256, settings.labeler, settings.labels, os.getpid())
    if key not in _encoders:
        from catlip.labels import LabelEncoder

        labeler = worker_labeler(LabelSettings(settings.labeler, settings.senses, settings.nltk_data))
        _encoders.clear()
        encoder = LabelEncoder(settings.vocab, labeler=labeler)
        _encoders[key] = KnownLabels(encoder, settings.labels) if settings.labels else encoder
    return _encoders[key]


class KnownLabels:
    """Labels from a labels file (``catlip vocab --labels-out``) by caption digest; a caption the
    file lacks is labelled by the encoder's labeler (and counted: ``labelled_here``)."""

    def __init__(self, encoder, path: str) -> None:
        from catlip.vocab import LabelsFile

        self.encoder, self.missed = encoder, 0
        _, self.known = LabelsFile.read(path)

    def __call__(self, caption: object) -> list[int]:
        from catlip.vocab import caption_digest

        keys = self.known.get(caption_digest(self.encoder.labeler, caption))
        if keys is None:
            self.missed += 1
            return self.encoder(caption)
        return self.encoder.vocab.encode_synsets(keys)


def pack_task(task: PackTask, report: Callable[[int], None]) -> ShardResult:
    """Pack one task into its shard(s) and mark it done; ``report`` counts samples for the bar."""
    settings = task.settings
    staging = Path(settings.staging)
    encoder = _encoder(settings) if settings.label_member == "lbl" else None
    parts = {
        n: SplitPart(class_samples=[0] * settings.num_classes) for n in split_names(settings.holdout_fraction)
    }
    result = ShardResult(task.index, parts, identity=task.identity)
    shards: dict[str, TarShard] = {}
    digests: dict[str, list[bytes]] = {n: [] for n in result.parts}
    samples: Iterable[RawSample] = task.samples if task.tar is None else read_img2dataset_tar(task.tar)
    batch: list[RawSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == BATCH:
            _pack_batch(batch, task, encoder, result, shards, digests, staging)
            report(len(batch))
            batch = []
    _pack_batch(batch, task, encoder, result, shards, digests, staging)
    report(len(batch))
    for name, shard in shards.items():
        shard.close()
        part = result.parts[name]
        part.shard, part.digests = shard.path.name, b"".join(digests[name])
    marker = marker_path(staging, task.index)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(result.to_json())
    tmp.replace(marker)
    return result


def _pack_batch(
    batch: list[RawSample],
    task: PackTask,
    encoder,
    result: ShardResult,
    shards: dict[str, TarShard],
    digests: dict[str, list[bytes]],
    staging: Path,
) -> None:
    """Check, label and write a batch of samples (in order) into the task's shards."""
    for sample, image in zip(batch, _images(batch, result, task.settings.resize_shorter), strict=True):
        if image is None:
            continue
        ext, data, digest, trimmed, resized = image
        split = split_of(digest, task.settings.holdout_fraction)
        part = result.parts[split]
        if sample.classes is not None:  # a class pack: KEY.cls, the sorted class indices
            labels = list(sample.classes)
            members = [(ext, data), ("cls", np.asarray(labels, "<i4").tobytes())]
            for c in labels:
                part.class_samples[c] += 1
        else:
            text = sample.caption if isinstance(sample.caption, str) else ""
            caption, cut = cut_caption(text)
            part.cut_captions += cut
            missed = getattr(encoder, "missed", 0)
            labels = encoder(text)  # the labelers cut it too; a labels file knows it by its full text
            part.labelled_here += getattr(encoder, "missed", 0) - missed
            lbl = np.asarray(labels, "<i4").tobytes()
            members = [(ext, data), ("txt", caption.encode("utf-8")), ("lbl", lbl)]
        if split not in shards:
            shards[split] = TarShard(split_dir(staging, split) / SHARD_PATTERN.format(task.index))
        shards[split].write(sample.key, members)
        digests[split].append(digest[:8])
        part.samples += 1
        part.label_total += len(labels)
        part.no_label += not labels
        part.max_labels = max(part.max_labels, len(labels))
        part.trimmed_jpegs += trimmed
        part.resized += resized


# (ext, bytes to store, SHA-1 of the checked image before any resize, trimmed, resized): the
# holdout split and the distinct-image count do not depend on resize_shorter
Image = tuple[str, bytes, bytes, bool, bool]
# file key -> its resized bytes (b"": stored as it is), oldest out first past _SHRUNK_BYTES: the
# captions of one image (COCO: 5) are resized once while they are packed near each other
_shrunk: OrderedDict[tuple, bytes] = OrderedDict()
_shrunk_bytes = 0  # the sum of their lengths
_SHRUNK_BYTES = 256 << 20


def _images(batch: list[RawSample], result: ShardResult, resize_shorter: int = 0) -> list[Image | None]:
    """The checked image of each sample, or None after recording its reject. A file named by
    several samples is checked once per process; later samples only count its reject. With
    ``resize_shorter``, images larger than that on their shorter side are stored resized
    (:func:`~engine.packing.shards.shrink_image`)."""
    out: list[Image | None] = [None] * len(batch)
    todo: list[tuple[int, bytes, tuple | None]] = []
    for i, sample in enumerate(batch):
        if sample.problem:
            result.rejects.append((sample.key, sample.image, sample.problem, True))
            continue
        data, key = (sample.data, None) if sample.data is not None else _read(sample, result)
        if data is None:
            continue
        known = _verdicts.get(key) if key is not None else None
        if known is None:
            todo.append((i, data, key))
        elif known[1] is not None:
            result.rejects.append((sample.key, sample.image, known[1], False))
        else:  # seen and good: only redo the trim (and the resize, unless it is remembered)
            stored = data[: data.rfind(b"\xff\xd9") + 2] if known[0] == "jpg" else data
            out[i] = _resized(known[0], stored, known[2], len(stored) != len(data), key, resize_shorter)
            if out[i] is None:  # not remembered, and DALI's full decode fails (it passed before)
                result.rejects.append((sample.key, sample.image, "corrupt", False))
    for (i, original, key), (ext, data, reason) in zip(
        todo, check_images([d for _, d, _ in todo]), strict=True
    ):
        sample = batch[i]
        digest = hashlib.sha1(data).digest() if reason is None else b""
        if key is not None:
            if len(_verdicts) >= _VERDICTS_MAX:
                _verdicts.clear()
            _verdicts[key] = (ext, reason, digest)
        if reason is None:
            out[i] = _resized(ext, data, digest, len(data) != len(original), key, resize_shorter)
            if out[i] is None:
                reason = "corrupt"
                if key is not None:
                    _verdicts[key] = (ext, reason, digest)
        if reason is not None:
            result.rejects.append((sample.key, sample.image, reason, True))
    return out


def _resized(
    ext: str, data: bytes, digest: bytes, trimmed: bool, key: tuple | None, shorter: int
) -> Image | None:
    """The image to store: resized when its shorter side is larger than ``shorter`` > 0
    (remembered by file ``key``); None if DALI's full decode of it failed."""
    global _shrunk_bytes
    if shorter <= 0:
        return ext, data, digest, trimmed, False
    key = (key, shorter) if key is not None else None
    small = _shrunk.get(key) if key is not None else None
    if small is None:
        small = shrink_image(data, shorter)
        if small is None:
            return None
        small = b"" if small is data else small
        if key is not None:
            _shrunk[key] = small
            _shrunk_bytes += len(small)
            while _shrunk_bytes > _SHRUNK_BYTES:
                _shrunk_bytes -= len(_shrunk.popitem(last=False)[1])
    return ("jpg", small, digest, trimmed, True) if small else (ext, data, digest, trimmed, False)


def _read(sample: RawSample, result: ShardResult) -> tuple[bytes | None, tuple | None]:
    """The file's bytes and its cache key, or (None, None) after recording why it cannot be read."""
    try:
        stat = sample.path.stat()
        key = (sample.path, stat.st_size, stat.st_mtime_ns)
        known = _verdicts.get(key)
        if known is not None and known[1] is not None:  # known bad: no need to read it again
            result.rejects.append((sample.key, sample.image, known[1], False))
            return None, None
        return sample.path.read_bytes(), key
    except FileNotFoundError:
        reason = "missing file"
    except OSError:
        reason = "unreadable file"
    key = (sample.path, -1, -1)
    result.rejects.append((sample.key, sample.image, reason, key not in _verdicts))
    _verdicts[key] = (None, reason, b"")
    return None, None
