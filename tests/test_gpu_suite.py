"""perf/gpu_suite.sh, the one GPU run, checked where there is no GPU.

* Nothing on the suite's path imports a package the GPU machine lacks (ftfy, NLTK, DeepSpeed,
  DALI): a fresh interpreter imports the benchmarks and models and runs a CatLIP step of the step
  benchmark, then looks at sys.modules.
* The suite's shape: benchmarks before tests, stage limits within 6 minutes.
* `perf/gpu_suite.sh --dry-run` passes: every stage on the CPU in the Triton 3.6 environment
  (scripts/env_triton36.sh), benchmarks at tiny shapes through the same entry points and
  arguments, test stages collected with the GPU run's selection (~2 min, `slow`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "perf" / "gpu_suite.sh"
ABSENT_THERE = ("ftfy", "nltk", "deepspeed", "nvidia.dali")

_CHILD = """
import sys
sys.argv = ["bench"]
import catlip.models, catlip.clip, catlip.contrastive, catlip.tokenizer
import perf.bench_linear_bce, perf.bench_attention, perf.bench_step, perf.compile_kernels
from types import SimpleNamespace
import torch
from perf import bench_step
args = SimpleNamespace(model="vit_tiny", image_size=32, vocab=50, loss_impl="torch")
runner = bench_step.Runner("catlip", args, torch.device("cpu"), 1)
runner.step(bench_step.make_batches(1, 2, 32, 50, 0)[0])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {ABSENT} or m.startswith("nvidia.dali"))
assert not loaded, f"the GPU suite's path imports {{loaded[:5]}}"
print("clean")
"""


def test_suite_path_imports_nothing_the_gpu_machine_lacks() -> None:
    code = _CHILD.format(ABSENT=repr({m.split(".")[0] for m in ABSENT_THERE} - {"nvidia"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "clean" in res.stdout, res.stdout + res.stderr[-3000:]


def _stages() -> list[tuple[str, int, int]]:
    """(name, limit in seconds, line) of each stage/tests call in the suite, in order."""
    out = []
    for i, line in enumerate(SUITE.read_text().splitlines()):
        m = re.match(r"^(?:stage|tests) (\w+) (\d+) ", line)
        if m:
            out.append((m.group(1), int(m.group(2)), i))
    return out


def test_suite_runs_benchmarks_first_within_six_minutes() -> None:
    stages = _stages()
    names = [n for n, _, _ in stages]
    assert names[:2] == ["bench_linear_bce", "bench_attention"], names
    first_test = next(i for i, n in enumerate(names) if n.startswith("test_"))
    assert all(n.startswith("bench_") for n in names[:first_test])
    assert all(n.startswith("test_") for n in names[first_test:])
    assert sum(s for _, s, _ in stages) <= 360, stages
    # one stage per kernel/model test file, each run with -m "not slow"
    assert {n for n in names if n.startswith("test_")} >= {
        "test_linear_bce",
        "test_flash_attention",
        "test_models",
    }
    assert '-m "not slow"' in SUITE.read_text() and "--durations" in SUITE.read_text()


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OUT"] = str(tmp_path)
    res = subprocess.run(
        ["bash", str(SUITE), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    log = (tmp_path / "suite.log").read_text() if (tmp_path / "suite.log").exists() else ""
    assert res.returncode == 0, f"{log}\n{res.stdout[-6000:]}\n{res.stderr[-2000:]}"
    ran = re.findall(r"=== (\w+): exit (\d+)", log)
    assert [n for n, _ in ran] == [n for n, _, _ in _stages()] and all(rc == "0" for _, rc in ran), log
    for name in ("linear_bce_dryrun.csv", "attention_dryrun.csv", "step_cpu.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
