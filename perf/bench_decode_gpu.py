"""JPEG decode + resize throughput on a GPU (torchvision/nvJPEG) against PIL on the CPU.

DALI's wheel is too large to travel to the lent GPU machine, so its "mixed" decoder cannot be timed
there; torchvision.io.decode_jpeg on CUDA uses the same nvJPEG library and stands in for it. Both
providers decode the same JPEG bytes and resize to 224x224; images/s is the median of 5 passes
after a warm-up. Images: --images DIR (default: ../shared/data/coco_photos, or .gpu_data/coco_photos
carried beside the checkout). Appends to <out>/decode_gpu.csv.

    python perf/bench_decode_gpu.py [--images DIR] [--out perf/results] [--batch 64]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the perf package sits at the root
from perf.common import commit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_decode_gpu: no CUDA device; nothing to measure (perf/bench_data.py covers the CPU)")
        return 0
    import torchvision
    from PIL import Image
    from torchvision.io import decode_jpeg

    candidates = [args.images, ROOT.parent / "shared/data/coco_photos", ROOT / ".gpu_data/coco_photos"]
    folder = next((p for p in candidates if p and p.is_dir()), None)
    if folder is None:
        print("bench_decode_gpu: no images found (give --images DIR); skipped")
        return 0
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def gpu_pass() -> None:
        for i in range(0, len(datas), args.batch):
            images = decode_jpeg(datas[i : i + args.batch], device="cuda")
            for im in images:
                torch.nn.functional.interpolate(
                    im[None].float(), size=(224, 224), mode="bilinear", antialias=True
                )
        torch.cuda.synchronize()

    def pil_pass() -> None:
        for b in blobs:
            Image.open(io.BytesIO(b)).convert("RGB").resize((224, 224), Image.BILINEAR)

    rows = []
    for name, fn in (("torchvision-nvjpeg-cuda", gpu_pass), ("pil-cpu-1-thread", pil_pass)):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rate = len(blobs) / statistics.median(times)
        rows.append((name, rate))
        print(f"{name:<26} {rate:>10,.0f} images/s ({len(blobs)} COCO JPEGs, resize to 224)")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "decode_gpu.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "commit", "device", "torchvision", "provider", "images", "images_per_s"])
        for name, rate in rows:
            w.writerow(
                [
                    stamp,
                    commit(),
                    torch.cuda.get_device_name(),
                    torchvision.__version__,
                    name,
                    len(blobs),
                    round(rate),
                ]
            )
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
