"""Every Triton kernel compiled for Hopper (sm_90a) and Ampere (sm_80) without a GPU, under the pinned
Triton and under Triton 3.6 (the lent GPU machine's): no configuration the kernels can choose
spills registers or takes more shared memory than the target allows, and the committed table
perf/results/compiled_kernels.csv is what these builds give (regenerate it with
`python perf/compile_kernels.py --out perf/results/compiled_kernels.csv` under each Triton, see
perf/results/README.md).

Both builds run at once in child processes (they must not see TRITON_INTERPRET): the pinned one in
this interpreter's environment, 3.6 in scripts/env_triton36.sh's (created on first use, ~1.5 min,
then cached). A cold run compiles ~150 variants (~3 min on 2 cores); Triton's cache makes later
runs take seconds until a kernel changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "perf" / "results" / "compiled_kernels.csv"


def _start(cmd: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        ["bash", "-c", cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_kernels_compile_without_spills_under_both_tritons() -> None:
    check = f"perf/compile_kernels.py --quiet --check {TABLE}"
    jobs = {
        "pinned Triton": _start(f"{sys.executable} {check}"),
        "Triton 3.6": _start(f"source scripts/env_triton36.sh >/dev/null && python {check}"),
    }
    failures = []
    for name, proc in jobs.items():
        out, _ = proc.communicate(timeout=1500)
        if proc.returncode != 0:
            failures.append(f"--- {name} (exit {proc.returncode}):\n{out[-4000:]}")
    assert not failures, "\n".join(failures)
