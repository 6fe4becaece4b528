"""Pack image-caption pairs into WebDataset tar shards with CatLIP labels, ready for DALI.

Each sample of a shard is three members with one key: ``KEY.jpg`` (the original image bytes;
``.png`` or ``.webp`` for those formats), ``KEY.txt`` (the caption, UTF-8) and ``KEY.lbl`` (the
caption's sorted unique label indices into the vocabulary, little-endian int32, possibly empty).
Labels are computed here, once, with :class:`catlip.labels.LabelEncoder`, so NLTK never runs in the
training loop. Beside each ``shard-NNNNNN.tar`` goes ``shard-NNNNNN.idx``, the index
``fn.readers.webdataset(index_paths=...)`` reads, byte for byte what DALI's ``wds2idx`` writes
(without it DALI would scan every tar at start-up). ``dataset.json`` records the counts, the
vocabulary and the shard names; ``rejects.tsv`` lists every sample that was left out, and why.

Every image is decoded in full with PIL before it is written: DALI has no skip-on-error, and one
undecodable image stops a training pipeline (``engine/data.py`` guards against what still gets
through). A JPEG with bytes after its end marker is trimmed to end at the marker, as the loader's
in-pipeline guard requires; a JPEG with no end marker is rejected as truncated.

Sources: COCO caption JSON + image folder, ``file<TAB>caption`` TSV + image folder, or
img2dataset shards (``NNNNNNNNN.jpg`` + ``.txt`` + ``.json``). COCO and TSV samples are shuffled
with a fixed seed before packing: DALI's shuffle buffer is local (``initial_fill`` samples), and
in source order the five captions of a COCO image would land in one batch.

With ``holdout_fraction`` > 0 images are split by a hash of their bytes, so every caption of an
image (and every copy of the same image) falls on the same side; ``train/`` and ``val/`` each get
their own shards and ``dataset.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARD_PATTERN = "shard-{:06d}.tar"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # what the loader's reader accepts, in this order
_PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")  # DALI splits a member name at its first dot
MAX_MESSAGES = 50  # reject messages printed per reason; rejects.tsv has all of them


# ------------------------------------------------------------------------------------------ sources
@dataclass
class RawSample:
    """One image-caption pair as a source yields it, before validation.

    ``data`` holds the image bytes for sources that have them in memory (tars); otherwise the
    image is read from ``path``. ``problem`` rejects the sample before any decode (e.g. no image
    member in the tar); ``image`` names the image in messages."""

    key: str
    image: str
    caption: object
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None


def sanitize_key(key: str) -> str:
    """A tar member stem DALI reads back as one sample: ASCII letters, digits, ``_``, ``-`` only.

    Dots would split the key (DALI takes the extension from the first dot); other characters
    would need PAX headers, which ``wds2idx`` and DALI's reader count as members."""
    clean = _KEY_BAD.sub("_", key)
    if len(clean) > 80:  # ustar names are at most 100 bytes with the extension
        clean = clean[:60] + "_" + hashlib.sha1(key.encode()).hexdigest()[:16]
    return clean


class _FolderSource:
    """Captions naming image files in a folder: keys ``<image stem>_<caption ordinal>``, samples
    shuffled with a fixed seed (see the module docstring), sized and re-iterable."""

    def __init__(self, images: Path | str, rows: Iterable[tuple[str, str]], shuffle_seed: int | None) -> None:
        self.images = Path(images)
        seen: Counter[str] = Counter()
        self.items: list[RawSample] = []
        for name, caption in rows:  # (file name relative to the folder, caption)
            stem = Path(name).with_suffix("").as_posix()
            key = sanitize_key(f"{stem}_{seen[stem]}")
            seen[stem] += 1
            self.items.append(RawSample(key, name, caption, path=self.images / name))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawSample]:
        return iter(self.items)


class CocoSource(_FolderSource):
    """COCO ``captions_*.json`` + image folder: one sample per caption annotation.

    The image of an annotation is the ``file_name`` the JSON's ``images`` list gives its
    ``image_id``, else ``f"{image_id:012d}.jpg"``. Keys are ``<image stem>_<caption ordinal>``."""

    def __init__(self, json_path: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, load_coco

        self.json_path = path = Path(json_path)
        if not path.is_file():
            raise CaptionFileError(f"{path}: no such file")
        data, annotations = load_coco(path)
        files = {img.get("id"): img["file_name"] for img in data.get("images") or [] if "file_name" in img}

        def rows() -> Iterator[tuple[str, str]]:
            for i, ann in enumerate(annotations):
                if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
                    raise CaptionFileError(
                        f"{path}: annotations[{i}] lacks 'image_id' or 'caption': {ann!r:.80}"
                    )
                ident = ann["image_id"]
                yield (
                    files.get(ident) or (f"{ident:012d}.jpg" if isinstance(ident, int) else f"{ident}.jpg"),
                    ann["caption"],
                )

        super().__init__(images, rows(), shuffle_seed)


class TsvSource(_FolderSource):
    """``file<TAB>caption`` TSV + image folder; ``file`` is relative to the folder."""

    def __init__(self, tsv: Path | str, images: Path | str, *, shuffle_seed: int | None = 0) -> None:
        from catlip.captions import CaptionFileError, iter_tsv_rows

        self.tsv = Path(tsv)
        if not self.tsv.is_file():
            raise CaptionFileError(f"{self.tsv}: no such file")
        super().__init__(images, iter_tsv_rows(self.tsv), shuffle_seed)


class Img2DatasetSource:
    """img2dataset output: tars of ``KEY.jpg`` (or png/webp) + ``KEY.txt`` + ``KEY.json``.

    ``paths`` is a folder (its ``*.tar``, sorted) or tar files. Members of a sample are contiguous
    in a WebDataset tar, so the tars are streamed, never extracted; source order is kept."""

    def __init__(self, paths: Path | str | Iterable[Path | str]) -> None:
        from catlip.captions import CaptionFileError

        if isinstance(paths, (str, Path)):
            paths = [paths]
        tars: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                tars += sorted(p.glob("*.tar"))
            elif p.is_file():
                tars.append(p)
            else:
                raise CaptionFileError(f"{p}: no such file or folder")
        if not tars:
            raise CaptionFileError(f"no .tar shards in {', '.join(map(str, paths))}")
        self.tars = tars

    def __iter__(self) -> Iterator[RawSample]:
        from catlip.captions import CaptionFileError

        for tar_path in self.tars:
            try:
                with tarfile.open(tar_path, mode="r|*") as tar:
                    group: dict[str, bytes] = {}
                    last = None
                    for member in tar:
                        if not member.isfile():
                            continue
                        dot = member.name.find(".", member.name.rfind("/") + 1)  # as DALI splits it
                        if dot <= member.name.rfind("/") + 1:
                            continue  # no extension, or a hidden file
                        key, ext = member.name[:dot], member.name[dot + 1 :]
                        if key != last and last is not None:
                            yield self._sample(tar_path, last, group)
                            group = {}
                        last = key
                        group[ext.lower()] = tar.extractfile(member).read()
                    if last is not None:
                        yield self._sample(tar_path, last, group)
            except (tarfile.TarError, EOFError, OSError) as err:
                raise CaptionFileError(f"{tar_path}: unreadable tar shard ({err})") from err

    @staticmethod
    def _sample(tar_path: Path, key: str, group: dict[str, bytes]) -> RawSample:
        name = f"{tar_path.name}:{key}"
        ext = next((e for e in IMAGE_EXTS if e in group), None)
        problem = None
        caption: object = None
        if "txt" not in group:
            problem = "missing caption"
        else:
            try:
                caption = group["txt"].decode("utf-8")
            except UnicodeDecodeError:
                problem = "caption not UTF-8"
        if ext is None:
            problem = "missing image"
        data = group.get(ext) if ext else None
        return RawSample(sanitize_key(key), name, caption, data=data, problem=problem)


# ---------------------------------------------------------------------------------------- validation
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _has_image_magic(data: bytes) -> bool:
    """Whether ``data`` starts like an image file (so a parse failure means corrupt, not foreign)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def check_image(data: bytes) -> tuple[str | None, bytes, str | None]:
    """Decode ``data`` in full with PIL: ``(extension, bytes to store, None)`` for a good image,
    ``(None, data, reason)`` otherwise. A JPEG is trimmed to end at its last end marker."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, data, "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()  # structure and checksums (PNG CRCs); the image is unusable after this
        ext = _PIL_FORMATS.get(fmt or "")
        if ext is None:
            return None, data, f"unsupported format {fmt}"
        if ext == "jpg" and not data.endswith(b"\xff\xd9"):
            end = data.rfind(b"\xff\xd9")
            if end < 0:
                return None, data, "truncated"
            data = data[: end + 2]
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: truncated or corrupt scans fail here
            if img.width < 1 or img.height < 1:
                return None, data, "corrupt"
        return ext, data, None
    except UnidentifiedImageError:  # PIL found no format whose header parses
        return None, data, "corrupt" if _has_image_magic(data) else "not an image"
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for bad data
        return None, data, "truncated" if "truncated" in str(err).lower() else "corrupt"
    except Image.DecompressionBombError:
        return None, data, "too large"


# -------------------------------------------------------------------------------------------- shards
class ShardWriter:
    """Writes samples into ``shard-NNNNNN.tar`` of ``shard_size`` samples, each with its DALI index.

    Tars are ustar with fixed owner, mode and mtime, so the same input gives the same bytes. The
    index (``v1.2 N`` then one line per sample of ``ext offset size name`` per member) is the one
    ``wds2idx`` writes; offsets are of the data, one 512-byte header after the member's start."""

    def __init__(self, out: Path, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out, self.shard_size = out, shard_size
        out.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.counts: list[int] = []
        self._tar: tarfile.TarFile | None = None
        self._index: list[str] = []

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if self._tar is None or len(self._index) >= self.shard_size:
            self._close_shard()
            name = SHARD_PATTERN.format(len(self.names))
            self.names.append(name)
            self._tar = tarfile.open(self.out / (name + ".tmp"), "w", format=tarfile.USTAR_FORMAT)
        line = []
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            line.append(f"{ext} {self._tar.offset - padded} {len(data)} {info.name}")
        self._index.append(" ".join(line))

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name = self.names[-1]
        idx = self.out / (name[: -len(".tar")] + ".idx")
        idx.write_text(f"v1.2 {len(self._index)}\n" + "".join(f"{line}\n" for line in self._index))
        (self.out / (name + ".tmp")).replace(self.out / name)
        self.counts.append(len(self._index))
        self._tar, self._index = None, []

    def close(self) -> None:
        self._close_shard()


# ----------------------------------------------------------------------------------------- the pack
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
            lines.append(
                f"{where}{s.samples:,} samples ({len(s.images):,} images) in {len(s.shard_names)} "
                f"shard(s) of <= {self.shard_size:,} in {s.out}; labels per sample: mean "
                f"{s.labels_mean:.2f}, {100 * s.no_label_share:.1f}% with none"
                + (
                    f"; {s.trimmed_jpegs:,} JPEG(s) stored without bytes after their end"
                    if s.trimmed_jpegs
                    else ""
                )
            )
        total = sum(self.rejects.values())
        lines.append(f"rejected: {total:,} sample(s)" + (":" if total else ""))
        lines += [f"  {reason}: {n:,}" for reason, n in self.rejects.most_common()]
        lines.append(f"{self.samples / max(self.seconds, 1e-9):,.0f} samples/s over {self.seconds:.1f} s")
        return "\n".join(lines)


def _split_of(digest: bytes, holdout_fraction: float) -> str:
    """``val`` for a ``holdout_fraction`` of images, by the first 8 bytes of their SHA-1."""
    return "val" if int.from_bytes(digest[:8], "big") < holdout_fraction * 2**64 else "train"


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
    names = ["train", "val"] if holdout_fraction > 0 else ["all"]
    dirs = {n: out / n if holdout_fraction > 0 else out for n in names}
    for d in dirs.values():
        for stale in (*d.glob("shard-*.tar"), *d.glob("shard-*.idx"), *d.glob("shard-*.tar.tmp")):
            stale.unlink()  # a re-pack must not leave a longer earlier run's shards behind
    writers = {n: ShardWriter(dirs[n], shard_size) for n in names}
    stats = {n: SplitStats(dirs[n]) for n in names}
    rejects: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    cache: dict[Path, tuple[str | None, str | None, bytes]] = {}  # path -> (ext, reason, digest)
    out.mkdir(parents=True, exist_ok=True)
    reject_log = open(out / "rejects.tsv", "w", newline="")
    reject_rows = csv.writer(reject_log, delimiter="\t", lineterminator="\n")
    reject_rows.writerow(("key", "image", "reason"))
    total = len(source) if hasattr(source, "__len__") else None
    start = time.perf_counter()
    bar = tqdm(source, total=total, unit="sample", desc="packing", disable=not progress, smoothing=0.1)

    def reject(sample: RawSample, reason: str, *, first: bool = True) -> None:
        rejects[reason] += 1
        reject_rows.writerow((sample.key, sample.image, reason))
        if first and shown[reason] < MAX_MESSAGES:  # one message per image, not per caption
            shown[reason] += 1
            more = (
                " (further ones are counted, and listed in rejects.tsv)"
                if shown[reason] == MAX_MESSAGES
                else ""
            )
            tqdm.write(f"skipped {sample.image}: {reason}{more}")

    try:
        for sample in bar:
            if sample.problem:
                reject(sample, sample.problem)
                continue
            data, first = sample.data, True
            if data is None:
                if sample.path in cache and cache[sample.path][1] is not None:
                    reject(sample, cache[sample.path][1], first=False)
                    continue
                try:
                    data = sample.path.read_bytes()
                except FileNotFoundError:
                    cache[sample.path] = (None, "missing file", b"")
                    reject(sample, "missing file")
                    continue
                except OSError as err:
                    cache[sample.path] = (None, "unreadable file", b"")
                    tqdm.write(f"cannot read {sample.path}: {err}")
                    reject(sample, "unreadable file")
                    continue
            if sample.path is not None and sample.path in cache:
                ext, reason, digest = cache[sample.path]
                first, size = False, len(data)
                if ext == "jpg" and not data.endswith(b"\xff\xd9"):
                    data = data[: data.rfind(b"\xff\xd9") + 2]
            else:
                size = len(data)
                ext, data, reason = check_image(data)
                digest = hashlib.sha1(data).digest()
                if sample.path is not None:
                    cache[sample.path] = (ext, reason, digest)
            if reason is not None:
                reject(sample, reason, first=first)
                continue
            caption = sample.caption if isinstance(sample.caption, str) else ""
            labels = encoder(caption)
            split = _split_of(digest, holdout_fraction) if holdout_fraction > 0 else "all"
            writers[split].write(
                sample.key,
                [(ext, data), ("txt", caption.encode("utf-8")), ("lbl", np.asarray(labels, "<i4").tobytes())],
            )
            s = stats[split]
            s.samples += 1
            s.images.add(digest.hex())
            s.label_total += len(labels)
            s.no_label += not labels
            s.trimmed_jpegs += len(data) != size
    finally:
        bar.close()
        reject_log.close()
        for w in writers.values():
            w.close()
    seconds = time.perf_counter() - start
    for n in names:
        stats[n].shard_names, stats[n].shard_counts = writers[n].names, writers[n].counts
    result = PackStats(stats, rejects, seconds, shard_size)
    settings = {
        "vocab": str(vocab.resolve()),
        "vocab_size": len(encoder.vocab),
        "pos_filter": pos_filter and not official,
        "official": official,
        "shard_size": shard_size,
        "holdout_fraction": holdout_fraction,
        "rejects": dict(rejects.most_common()),
        "rejected_samples": sum(rejects.values()),
    }
    for n in names:
        s = stats[n]
        meta = {
            "split": n,
            "samples": s.samples,
            "shards": len(s.shard_names),
            "images": len(s.images),
            "captions": s.samples,
            "labels_per_sample_mean": round(s.labels_mean, 4),
            "no_label_share": round(s.no_label_share, 4),
            "trimmed_jpegs": s.trimmed_jpegs,
            **settings,
            "shard_names": s.shard_names,
            "shard_samples": s.shard_counts,
        }
        (s.out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if holdout_fraction > 0:
        top = {
            "splits": {
                n: {"dir": n, "samples": stats[n].samples, "images": len(stats[n].images)} for n in names
            },
            **settings,
        }
        (out / "dataset.json").write_text(json.dumps(top, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------- CLI
PACK_EPILOG = """examples:
  catlip pack --coco captions_val2017.json --images val2017/ --vocab vocab.tsv --out shards/coco
  catlip pack --tsv photos/captions.tsv --images photos/ --vocab vocab.tsv --out shards/photos \\
      --shard-size 500 --holdout-fraction 0.05
  catlip pack --img2dataset laion_part/ --vocab vocab.tsv --out shards/laion

Each sample is KEY.jpg|png|webp (original bytes), KEY.txt (caption) and KEY.lbl (sorted label
indices, int32 little-endian); each shard-NNNNNN.tar has a DALI index shard-NNNNNN.idx. Images
are decoded in full while packing; bad ones are skipped with a message, counted by reason in
dataset.json, and listed in rejects.tsv.
"""


def add_pack_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pack`` command to a CLI's subparsers; it runs :func:`cmd_pack`."""
    from engine.cli import _add_labeler_options

    p = subparsers.add_parser(
        "pack",
        help="pack images + captions into labelled WebDataset shards for the DALI loader",
        description="Turn image-caption pairs into WebDataset tar shards with CatLIP labels\n"
        "(computed once here, so NLTK never runs while training) and DALI index files.\n"
        "Give one source: --coco JSON --images DIR, --tsv FILE --images DIR,\n"
        "or --img2dataset DIR_OR_TARS.",
        epilog=PACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (exactly one of --coco, --tsv, --img2dataset)")
    src.add_argument("--coco", type=Path, metavar="JSON", help="COCO caption JSON: one sample per caption")
    src.add_argument(
        "--tsv", type=Path, metavar="FILE", help="file<TAB>caption TSV, files relative to --images"
    )
    src.add_argument("--images", type=Path, metavar="DIR", help="image folder for --coco and --tsv")
    src.add_argument(
        "--img2dataset",
        type=Path,
        nargs="+",
        metavar="DIR_OR_TARS",
        help="img2dataset output: a folder of .tar shards, or the tars (NNNNNNNNN.jpg/.txt/.json)",
    )
    src.add_argument(
        "--keep-order",
        action="store_true",
        help="pack --coco/--tsv samples in source order (default: shuffled with a fixed seed, so "
        "the captions of one image do not sit together in a shard)",
    )
    p.add_argument("--vocab", type=Path, required=True, help="vocabulary TSV from `catlip vocab`")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and dataset.json")
    p.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)"
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of images (by a hash of their bytes, so all captions of an "
        "image are on one side) into OUT/val; the rest go to OUT/train (default 0: no split)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_labeler_options(p)
    p.set_defaults(func=cmd_pack)
    return p


def source_from_args(args: argparse.Namespace) -> Iterable[RawSample]:
    """The source the ``pack`` arguments name; SystemExit with what to do when they do not."""
    given = [name for name in ("coco", "tsv", "img2dataset") if getattr(args, name)]
    if len(given) != 1:
        raise SystemExit(
            "catlip pack: give exactly one of --coco JSON, --tsv FILE, --img2dataset DIR_OR_TARS"
        )
    seed = None if args.keep_order else 0
    if args.img2dataset:
        return Img2DatasetSource(args.img2dataset)
    if args.images is None or not args.images.is_dir():
        raise SystemExit(
            f"catlip pack: --{given[0]} needs --images DIR, an existing folder (got {args.images})"
        )
    if args.coco:
        return CocoSource(args.coco, args.images, shuffle_seed=seed)
    return TsvSource(args.tsv, args.images, shuffle_seed=seed)


def cmd_pack(args: argparse.Namespace) -> int:
    """``catlip pack``: build the source, pack it, print the summary."""
    from engine.cli import _require_nltk

    source = source_from_args(args)
    if not args.vocab.is_file():
        raise SystemExit(f"catlip pack: {args.vocab}: no such vocabulary (build one with `catlip vocab`)")
    _require_nltk(args)
    stats = pack(
        source,
        args.out,
        args.vocab,
        shard_size=args.shard_size,
        holdout_fraction=args.holdout_fraction,
        pos_filter=args.pos_filter,
        official=args.official,
        progress=not args.quiet,
    )
    print(stats.summary())
    print(f"wrote {args.out}/dataset.json and {args.out}/rejects.tsv")
    return 0
