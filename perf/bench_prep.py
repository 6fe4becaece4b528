"""Data preparation per core: captions/s for `catlip vocab`, samples/s for `catlip pack`, at 1 and 2
workers, the image checks side by side, and what 1.3B captions on 64 cores would take.

Measured in one run, on the same inputs:
  vocab   the COCO val2017 captions (25,014) through build_vocabulary on LocalExecutor(1) and (2)
  pack    the 255 COCO photos 4 times over as img2dataset tars of 64 (every sample its own image
          bytes, one caption: the DataComp case, re-labelled without re-encoding), and the photos'
          TSV (1,275 captions, 5 per image, each image checked once per worker), on
          LocalExecutor(1) and (2), 64 samples per shard
  check   the image checks on the same photos: PIL full decode (what packing did before), PIL draft
          (1/8-scale DCT decode), DALI's CPU decoder on the whole image, and the check packing uses
          (DALI on an 8x8 corner for single-scan JPEGs, the whole image otherwise); and on damaged
          copies of them, which files each lets through that DALI's decoder rejects

Per-core rates are items / CPU seconds of the driver and its worker processes together
(``getrusage``), so they hold on a machine other jobs share; wall-clock rates are printed too. Rows
append to perf/results/prep.csv with the CPU, commit and date; the arithmetic goes to
perf/results/prep.json.

    python perf/bench_prep.py [--captions FILE] [--photos DIR]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import random
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the perf package sits at the root
from perf.common import append_rows, commit, cpu_name  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TARGET_CAPTIONS, TARGET_CORES, TARGET_HOURS = 1.3e9, 64, 3.0


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``fn()``."""
    c, w = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - c, time.perf_counter() - w


# ------------------------------------------------------------------------------------------ vocab
def bench_vocab(captions_file: Path) -> list[dict]:
    from catlip.captions import iter_captions
    from catlip.vocab import LabelSettings, build_vocabulary, worker_labeler
    from engine.executor import LocalExecutor

    captions = [c for _, c in iter_captions(captions_file)]
    worker_labeler(LabelSettings())  # loaded once here; forked workers inherit WordNet and the tagger
    rows = []
    for workers in (1, 2):
        with LocalExecutor(workers) as executor:
            cpu, wall = timed(
                lambda ex=executor: build_vocabulary(captions, min_count=5, executor=ex, progress=False)
            )
        rows.append(
            _row("vocab", f"coco-val-captions {workers} worker(s)", workers, len(captions), cpu, wall)
        )
    return rows


# ------------------------------------------------------------------------------------------- pack
def write_img2dataset(folder: Path, photos: list[Path], per_tar: int) -> int:
    """The photos as img2dataset tars (key, .jpg, .txt, .json), one caption each."""
    folder.mkdir(parents=True)
    for t in range(0, len(photos), per_tar):
        with tarfile.open(folder / f"{t // per_tar:05d}.tar", "w") as tar:
            for i, photo in enumerate(photos[t : t + per_tar]):
                key = f"{t + i:09d}"
                members = {"jpg": photo.read_bytes(), "txt": b"a photo of a dog on a bench", "json": b"{}"}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return len(photos)


def bench_pack(photos_dir: Path, work: Path) -> list[dict]:
    from catlip.captions import iter_captions
    from catlip.vocab import build_vocabulary
    from engine.executor import LocalExecutor
    from engine.packing import Img2DatasetSource, TsvSource, pack

    tsv = photos_dir / "captions.tsv"
    vocab, _ = build_vocabulary([c for _, c in iter_captions(tsv)], min_count=2, progress=False)
    vocab.save(work / "vocab.tsv")
    photos = sorted(photos_dir.glob("*.jpg")) * 4  # 1,020 samples, so worker start-up weighs little
    n_i2d = write_img2dataset(work / "i2d", photos, per_tar=64)
    rows = []
    for name, make, n in (
        ("img2dataset (1 caption/image)", lambda: Img2DatasetSource(work / "i2d"), n_i2d),
        ("tsv (5 captions/image)", lambda: TsvSource(tsv, photos_dir), len(make_tsv(tsv))),
    ):
        outputs = []
        for workers in (1, 2):
            out = work / f"out-{len(rows)}"
            with LocalExecutor(workers) as executor:
                cpu, wall = timed(
                    lambda ex=executor, o=out, m=make: pack(
                        m(), o, work / "vocab.tsv", shard_size=64, executor=ex, progress=False
                    )
                )
            outputs.append(_tree(out))
            rows.append(_row("pack", f"{name} {workers} worker(s)", workers, n, cpu, wall))
        rows[-1]["identical_to_1_worker"] = outputs[0] == outputs[1]
        rows[-2]["identical_to_1_worker"] = True
    return rows


def make_tsv(tsv: Path) -> list[str]:
    return [line for line in tsv.read_text().splitlines() if line.strip()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ check
def damaged(photos: list[Path], seed: int = 0) -> list[tuple[str, bytes]]:
    """Damaged copies of JPEG photos: header bytes, header cuts, scan bytes, scan cuts."""
    rng = random.Random(seed)
    out = []
    for photo in photos:
        good = photo.read_bytes()
        sos = good.find(b"\xff\xda")
        d = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            d[rng.randint(2, sos + 10)] = rng.randint(0, 255)
        out.append(("header bytes", bytes(d)))
        cut = rng.randint(2, sos)
        out.append(("header cut", good[:cut] + good[cut + rng.randint(1, 30) :]))
        d = bytearray(good)
        for _ in range(rng.randint(1, 20)):
            d[rng.randint(sos + 20, len(d) - 3)] = rng.randint(0, 255)
        out.append(("scan bytes", bytes(d)))
        out.append(("scan cut + end marker", good[: rng.randint(sos + 20, len(good) - 3)] + b"\xff\xd9"))
    return out


def checks() -> dict:
    """name -> fn(bytes) -> True if the image is kept."""
    import numpy as np
    import nvidia.dali.experimental.dynamic as ndd
    from PIL import Image

    from engine.packing.shards import check_image

    ndd.set_num_threads(1)

    def pil_full(data: bytes) -> bool:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            return True
        except Exception:  # noqa: BLE001 - any PIL failure rejects the file
            return False

    def pil_draft(data: bytes) -> bool:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            return True
        except Exception:  # noqa: BLE001
            return False

    def dali_full(data: bytes) -> bool:
        try:
            np.asarray(ndd.decoders.image(np.frombuffer(data, np.uint8), device="cpu"))
            return True
        except RuntimeError:
            return False

    return {
        "pil-full": pil_full,
        "pil-draft": pil_draft,
        "dali-cpu-full": dali_full,
        "catlip (dali corner/full)": lambda data: check_image(data)[2] is None,
    }


def bench_checks(photos_dir: Path) -> list[dict]:
    photos = sorted(photos_dir.glob("*.jpg"))
    images = [p.read_bytes() for p in photos]
    bad = damaged(photos)
    methods = checks()
    reference = [methods["dali-cpu-full"](data) for _, data in bad]
    rows = []
    for name, keep in methods.items():
        for data in images[:16]:
            keep(data)  # warm-up
        start = time.process_time()
        for data in images:
            keep(data)
        seconds = time.process_time() - start
        kept = [keep(data) for _, data in bad]
        row = _row("check", name, 1, len(images), seconds, seconds)
        row["damaged"] = len(bad)
        row["lets_through_dali_failures"] = sum(k and not r for k, r in zip(kept, reference, strict=True))
        row["rejects_dali_decodable"] = sum(r and not k for k, r in zip(kept, reference, strict=True))
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------- reporting
def _row(stage: str, what: str, workers: int, items: int, cpu: float, wall: float) -> dict:
    return {
        "stage": stage,
        "what": what,
        "workers": workers,
        "items": items,
        "per_s_wall": round(items / wall, 1),
        "per_s_per_core": round(items / cpu, 1),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
    }


def arithmetic(rows: list[dict]) -> dict:
    """Hours for 1.3B captions on 64 cores at the measured per-core rates (the 2-worker rows)."""

    def rate(stage: str, what: str) -> float:
        return next(r["per_s_per_core"] for r in rows if r["stage"] == stage and what in r["what"])

    vocab, pack = rate("vocab", "2 worker"), rate("pack", "img2dataset (1 caption/image) 2 worker")
    hours = {k: TARGET_CAPTIONS / (v * TARGET_CORES) / 3600 for k, v in (("vocab", vocab), ("pack", pack))}
    need = {k: TARGET_CAPTIONS / (v * TARGET_HOURS * 3600) for k, v in (("vocab", vocab), ("pack", pack))}
    return {
        "captions": TARGET_CAPTIONS,
        "cores": TARGET_CORES,
        "goal_hours": TARGET_HOURS,
        "per_core": {"vocab_captions_per_s": vocab, "pack_samples_per_s": pack},
        "hours_on_64_cores": {k: round(v, 2) for k, v in hours.items()},
        "hours_on_64_cores_total": round(sum(hours.values()), 2),
        "cores_for_goal": {k: round(v) for k, v in need.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", type=Path, default=SHARED / "coco_captions_val2017.json")
    parser.add_argument("--photos", type=Path, default=SHARED / "coco_photos")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "prep.csv")
    args = parser.parse_args()

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
        rows = bench_checks(args.photos) + bench_vocab(args.captions) + bench_pack(args.photos, Path(tmp))
    print(f"CPU: {cpu_name()}")
    print(f"{'stage':<6} {'what':<44} {'/s per core':>11} {'/s wall':>9}  notes")
    for r in rows:
        notes = " ".join(
            f"{k}={r[k]}"
            for k in ("identical_to_1_worker", "lets_through_dali_failures", "rejects_dali_decodable")
            if k in r
        )
        print(
            f"{r['stage']:<6} {r['what']:<44} {r['per_s_per_core']:>11,.0f} {r['per_s_wall']:>9,.0f}  {notes}"
        )
    plan = arithmetic(rows)
    print(
        f"1.3B captions on 64 cores: vocab {plan['hours_on_64_cores']['vocab']} h + pack "
        f"{plan['hours_on_64_cores']['pack']} h = {plan['hours_on_64_cores_total']} h (goal < 3 h); "
        f"cores for 3 h: vocab {plan['cores_for_goal']['vocab']}, pack {plan['cores_for_goal']['pack']}"
    )
    fields = ["date", "commit", "device", "stage", "what", "workers", "items", "per_s_per_core", "per_s_wall"]
    fields += ["cpu_s", "wall_s", "identical_to_1_worker", "damaged", "lets_through_dali_failures"]
    fields += ["rejects_dali_decodable"]
    append_rows(
        args.out, fields, [{"date": stamp, "commit": commit(), "device": cpu_name(), **r} for r in rows]
    )
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps({"date": stamp, "commit": commit(), **plan}, indent=2) + "\n")
    print(f"appended to {args.out}; wrote {json_path}")


if __name__ == "__main__":
    main()
