"""Training-data throughput: the DALI pipeline vs a PIL + torch DataLoader, side by side in one run.

Providers (the same packed shards, the same training transform: RandomResizedCrop to
--image-size with scale 0.08-1 and ratio 3/4-4/3, horizontal flip, CLIP normalisation to float
CHW, labels padded to 32):
  dali-cpu     engine.data.make_loader(device="cpu"), --workers DALI threads
  pil          PIL decode + the same transform in numpy, torch DataLoader with --workers worker
               processes reading samples through the shards' DALI index files (torchvision-free;
               torchvision's RandomResizedCrop parameter draw, PIL bilinear resize)
  dali-mixed   decode on the GPU (nvJPEG); only where a GPU is visible, else skipped

Each provider runs --epochs full epochs after one warm-up batch; images/s is wall-clock, and
"per core" divides by the CPU-seconds the process and its workers used (user + system), so it
is comparable across machines with different core counts. Rows are appended to
perf/results/data.csv with the device, commit and date.

    python perf/bench_data.py [--shards DIR] [--workers 2] [--batch-size 64] [--epochs 1]

Without --shards the 255 COCO photos of ../shared/data/coco_photos are packed (5 captions each,
1,275 samples) into a temporary folder first (~10 s, not timed).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the perf package sits at the root
from perf.common import append_rows, commit, cpu_name  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "coco_photos"
OUT = ROOT / "perf" / "results" / "data.csv"
FIELDS = [
    "date",
    "commit",
    "device",
    "provider",
    "workers",
    "batch_size",
    "image_size",
    "images",
    "seconds",
    "images_per_s",
    "cpu_seconds",
    "images_per_s_per_core",
]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --------------------------------------------------------------------------------- the PIL loader
class PilShards:
    """Map-style dataset over packed shards: each sample is read at its offset from the DALI
    index, decoded with PIL and transformed like the DALI training pipeline (numpy only)."""

    def __init__(
        self,
        shards: list[Path],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_labels: int = 32,
    ) -> None:
        import numpy as np

        self.items: list[tuple[str, int, int, int, int]] = []  # (tar, img offset, size, lbl offset, size)
        for tar in shards:
            lines = tar.with_suffix(".idx").read_text().splitlines()[1:]
            for line in lines:
                f = line.split()
                parts = {f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)}
                image = next(parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts)
                self.items.append((str(tar), *image, *parts["lbl"]))
        self.size, self.max_labels = image_size, max_labels
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        import io

        import numpy as np
        import torch
        from PIL import Image

        tar, off, size, loff, lsize = self.items[i]
        with open(tar, "rb") as f:
            f.seek(off)
            data = f.read(size)
            f.seek(loff)
            lbl = np.frombuffer(f.read(lsize), "<i4")
        img = Image.open(io.BytesIO(data)).convert("RGB")
        left, top, w, h = rrc_params(img.width, img.height)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(img, np.float32) * (1 / 255)
        x = (x - self.mean) / self.std  # (H, W, 3)
        labels = np.full(self.max_labels, -1, np.int64)
        labels[: min(len(lbl), self.max_labels)] = lbl[: self.max_labels]
        return {"image": torch.from_numpy(x.transpose(2, 0, 1).copy()), "labels": torch.from_numpy(labels)}


def rrc_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, width - w), random.randint(0, height - h), w, h
    in_ratio = width / height  # fallback: centre crop at the nearest allowed ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _seed_worker(worker_id: int) -> None:
    import torch

    random.seed(torch.initial_seed() % 2**32)


# ------------------------------------------------------------------------------------------ timing
def time_provider(make: Callable[[], Iterable[dict]], epochs: int, sync: Callable[[], None]) -> dict:
    """Wall and CPU seconds for ``epochs`` epochs of ``make()``, after one warm-up batch."""
    loader = make()
    warm = iter(loader)
    next(warm)  # warm-up: DALI build and thread start, or worker start-up
    del warm  # a DataLoader's warm-up workers exit here, so their CPU time is not counted below
    gc.collect()
    images, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for batch in loader:
            images += batch["image"].shape[0]
        sync()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    del loader
    return {"images": images, "seconds": seconds, "cpu_seconds": cpu}


def pack_photos(work: Path) -> Path:
    """Pack the COCO photos into ``work/shards`` with a min-count-2 vocabulary of their captions."""
    from catlip.captions import iter_captions
    from catlip.vocab import build_vocabulary
    from engine.packing import TsvSource, pack

    vocab, _ = build_vocabulary(
        [c for _, c in iter_captions(PHOTOS / "captions.tsv")], min_count=2, workers=1, progress=False
    )
    vocab.save(work / "vocab.tsv")
    pack(TsvSource(PHOTOS / "captions.tsv", PHOTOS), work / "shards", work / "vocab.tsv", progress=False)
    return work / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shards", type=Path, help="a folder made by `catlip pack` (default: pack the COCO photos)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DALI threads / DataLoader workers (default: all cores)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per provider")
    parser.add_argument(
        "--providers", nargs="+", default=["dali-cpu", "pil", "dali-mixed"], help="which to run"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="CSV to append to")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    args = parser.parse_args()

    import torch

    from engine.data import CLIP_MEAN, CLIP_STD, cuda_device_count, make_loader, resolve_shards

    tmp = None
    if args.shards is None:
        if not (PHOTOS / "captions.tsv").is_file():
            raise SystemExit(f"no --shards given and no photos at {PHOTOS}")
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        t = time.perf_counter()
        args.shards = pack_photos(Path(tmp.name))
        print(f"packed the COCO photos in {time.perf_counter() - t:.1f} s")
    shards = resolve_shards(args.shards)
    n = json.loads((args.shards / "dataset.json").read_text())["samples"] if args.shards.is_dir() else None
    gpu = cuda_device_count() > 0
    print(
        f"{n or '?'} samples, batch {args.batch_size}, {args.image_size}px, {args.workers} worker(s), "
        f"{args.epochs} epoch(s); CPU: {cpu_name()}"
        + (f"; GPU: {torch.cuda.get_device_name()}" if gpu else "")
    )

    def dali(device: str) -> Callable[[], Iterable[dict]]:
        return lambda: make_loader(
            shards,
            args.batch_size,
            device=device,
            num_threads=args.workers,
            image_size=args.image_size,
            seed=0,
        )

    def pil() -> Iterable[dict]:
        return torch.utils.data.DataLoader(
            PilShards(shards, args.image_size, CLIP_MEAN, CLIP_STD),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            worker_init_fn=_seed_worker,
        )

    providers = {"dali-cpu": (dali("cpu"), lambda: None), "pil": (pil, lambda: None)}
    if gpu:
        providers["dali-mixed"] = (dali("mixed"), torch.cuda.synchronize)
    rows = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"{'provider':<11} {'images/s':>9} {'images/s/core':>14} {'cpu-s':>7} {'wall-s':>7}")
    for name in args.providers:
        if name not in providers:
            print(
                f"{name:<11} skipped: " + ("no GPU visible" if name == "dali-mixed" else "unknown provider")
            )
            continue
        make, sync = providers[name]
        r = time_provider(make, args.epochs, sync)
        rate, per_core = r["images"] / r["seconds"], r["images"] / max(r["cpu_seconds"], 1e-9)
        print(f"{name:<11} {rate:>9,.0f} {per_core:>14,.0f} {r['cpu_seconds']:>7.1f} {r['seconds']:>7.1f}")
        device = cpu_name() if name != "dali-mixed" else f"{torch.cuda.get_device_name()} + {cpu_name()}"
        rows.append(
            {
                "date": stamp,
                "commit": commit(),
                "device": device,
                "provider": name,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "images": r["images"],
                "seconds": round(r["seconds"], 3),
                "images_per_s": round(rate, 1),
                "cpu_seconds": round(r["cpu_seconds"], 3),
                "images_per_s_per_core": round(per_core, 1),
            }
        )
    if tmp is not None:
        tmp.cleanup()
    if args.no_csv or not rows:
        return
    append_rows(args.out, FIELDS, rows)
    print(f"appended {len(rows)} row(s) to {args.out}")


if __name__ == "__main__":
    main()
