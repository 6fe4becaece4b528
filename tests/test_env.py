"""scripts/env.sh, sourced for real: each checkout runs its own code from the one shared virtualenv,
and the caller's shell options are left as they were."""

from __future__ import annotations

import os
import re
import shutil
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


def _clone(dest: Path, version: str) -> Path:
    """A git clone of this checkout with its working tree's files, and its own ``__version__``."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    init = dest / "catlip" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "([^"]+)"', rf'__version__ = "\1+{version}"', init.read_text()))
    return dest


@pytest.mark.slow
def test_two_clones_each_run_their_own_code(tmp_path: Path) -> None:
    a, b = _clone(tmp_path / "a", "clone-a"), _clone(tmp_path / "b", "clone-b")
    # A's shell sources env.sh; another terminal sources B's (in a subshell), then A's commands run
    script = f"""
        cd {a} && source scripts/env.sh >/dev/null 2>&1 || echo A-failed
        (cd {b} && source scripts/env.sh >/dev/null 2>&1 && echo "B catlip: $(catlip --version)")
        cd /
        echo "A catlip: $(catlip --version)"
        echo "A module: $(python -m engine --version)"
        echo "A torchrun worker: $(python -m engine.launch --nproc_per_node 1 -m engine --version 2>/dev/null)"
        echo "A deepspeed worker: $(deepspeed --num_gpus 1 --module engine --version 2>/dev/null | grep ^catlip-engine)"
        rm -rf {b}
        echo "A after B is deleted: $(catlip --version 2>&1)"
    """
    out = _bash(script, env={**_env(), "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    from catlip import __version__

    assert lines.get("B catlip") == f"catlip-engine {__version__}+clone-b ({b})", out
    for what in ("A catlip", "A module", "A torchrun worker", "A deepspeed worker", "A after B is deleted"):
        assert lines.get(what) == f"catlip-engine {__version__}+clone-a ({a})", f"{what}:\n{out}"
