"""scripts/env.sh, sourced for real: the caller's shell options are left as they were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This session's environment, env.sh's venv the one pytest runs in (nothing is built), no
    checkout of ours on the paths yet."""
    if not (Path(sys.prefix) / ".complete").is_file():
        pytest.skip(f"pytest does not run in a virtualenv built by scripts/env.sh ({sys.prefix})")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CATLIP_CHECKOUT")}
    env["CATLIP_VENV"] = sys.prefix
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(ROOT / "bin"))
    return env


def _bash(script: str, *, env: dict[str, str], cwd: Path = ROOT, timeout: int = 300) -> str:
    """``script`` in an interactive-like bash (no rc files); its stdout and stderr."""
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-i", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.stdout + proc.stderr


_OPTIONS = "set -o | grep -E '^(errexit|nounset|pipefail) ' | tr -s ' \\t' ' '"


@pytest.mark.parametrize(
    ("caller", "after"),
    [
        ("set +e +u +o pipefail", {"errexit off", "nounset off", "pipefail off"}),
        ("set +e -u -o pipefail", {"errexit off", "nounset on", "pipefail on"}),
    ],
    ids=["options_off", "nounset_pipefail_on"],
)
def test_sourcing_env_sh_keeps_the_callers_shell_options(caller: str, after: set[str]) -> None:
    out = _bash(
        f"{caller}; source scripts/env.sh >/dev/null 2>&1; echo rc=$?; {_OPTIONS}; false; echo still-open",
        env=_env(),
    )
    assert "rc=0" in out, out
    assert after <= set(out.splitlines()), out
    assert "still-open" in out, f"a failing command closed the shell after `source scripts/env.sh`:\n{out}"


def test_a_failing_env_sh_returns_1_and_leaves_the_shell_open(tmp_path: Path) -> None:
    env = {**_env(), "CATLIP_VENV": str(tmp_path / "venv"), "CATLIP_PYTHON": str(tmp_path / "no-python")}
    out = _bash(f"source scripts/env.sh; echo rc=$?; {_OPTIONS}; echo still-open", env=env)
    assert "rc=1" in out and "still-open" in out, out
    assert "setting up the virtualenv failed" in out and "errexit off" in out, out
    assert not (tmp_path / "venv").exists()
