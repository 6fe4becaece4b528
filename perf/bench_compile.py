"""``parallel.compile`` on and off, side by side: CPU step time of the main job's model and shards.

    python perf/bench_compile.py --shards runs/main/shards [--steps 60] [--world 2]

Runs ``engine.train`` (``engine.launch`` over ``--world`` gloo ranks, one thread each, as the main job
does) twice on the same shards and config, once with ``parallel.compile=false`` and once with
``true``, and reports the median step time over the steps after ``--warmup`` (compilation happens
in the first steps and is reported separately as the extra time of the first ``--warmup`` steps).
Rows go to ``perf/results/compile_cpu.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.common import ROOT, append_rows, commit, cpu_name  # noqa: E402

FIELDS = [
    "date", "commit", "device", "world", "model", "batch_per_rank", "compile", "steps",
    "median_step_ms", "warmup_s", "total_s",
]  # fmt: skip


def run(shards: Path, compile_: bool, steps: int, world: int, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "engine.launch", f"--nproc_per_node={world}",
        "-m", "engine.train", "--config", str(ROOT / "configs/coco_tiny_cpu.yaml"),
        "--set", f"data.train={shards / 'train'}", "--set", "data.val=null",
        "--set", f"run.out_dir={out}", "--set", f"run.steps={steps}", "--set", "run.log_every=1",
        "--set", "checkpoint.every=0", "--set", f"parallel.compile={str(compile_).lower()}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL
    )
    total = time.perf_counter() - start
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"times": [e["step_time"] for e in logs], "total_s": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, default=ROOT / "runs/main/shards", help="`catlip pack` output")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compile_ in (False, True):
            r = run(args.shards, compile_, args.steps, args.world, Path(tmp) / str(compile_))
            steady = statistics.median(r["times"][args.warmup :])
            rows.append(
                {
                    "date": datetime.date.today().isoformat(),
                    "commit": commit(),
                    "device": cpu_name(),
                    "world": args.world,
                    "model": "vit_tiny",
                    "batch_per_rank": 32,
                    "compile": compile_,
                    "steps": args.steps,
                    "median_step_ms": round(1e3 * steady, 1),
                    "warmup_s": round(sum(r["times"][: args.warmup]) - args.warmup * steady, 1),
                    "total_s": round(r["total_s"], 1),
                }
            )
            print(rows[-1])
    append_rows(ROOT / "perf/results/compile_cpu.csv", FIELDS, rows)
    eager, compiled = rows
    print(f"compiled / eager step time: {compiled['median_step_ms'] / eager['median_step_ms']:.2f}x")


if __name__ == "__main__":
    main()
