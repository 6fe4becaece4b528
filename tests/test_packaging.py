"""Packaging a user can adopt: the wheel built from this checkout (its files, its metadata), the wheel
installed (not editable) into a fresh virtualenv, the shipped configs, the version in checkpoints and
exports, and the LICENSE, CITATION.cff and CHANGELOG.md beside them."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from catlip import __version__

ROOT = Path(__file__).resolve().parents[1]
# the packages a wheel ships: every top-level package of the checkout but the tests and benchmarks
FIRST_PARTY = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "perf"}
# import name -> distribution, where the two differ and importlib.metadata cannot tell (nvidia is a
# namespace many wheels share)
DISTRIBUTION_OF = {"nvidia": "nvidia-dali-cuda130", "PIL": "pillow", "yaml": "pyyaml"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _checkout_files() -> list[str]:
    """The files a clean clone of this working tree holds (tracked, and new files git does not ignore)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of this working tree (so no build/ or egg-info lands in the checkout and
    nothing stale from an earlier build gets in), built offline with this venv's setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in _checkout_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = (tmp / "dist").glob("catlip_engine-*.whl")
    return path


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_string(z.read(name).decode())


def test_the_wheel_holds_the_packages_and_configs_only(wheel: Path) -> None:
    assert wheel.name == f"catlip_engine-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = {n.split("/")[0] for n in names}
        assert tops == FIRST_PARTY | {f"catlip_engine-{__version__}.dist-info"}, tops
        for folder in ("tests/", "perf/", "runs/", "scripts/", "docs/", "configs/", "bin/"):
            assert not any(n.startswith(folder) for n in names), folder
        assert not any("__pycache__" in n for n in names)
        shipped = {Path(n).name: z.read(n) for n in names if n.startswith("engine/configs/")}
        assert shipped == {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
        packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("*/**/__init__.py")}
        packages = {p for p in packages if p.split("/")[0] in FIRST_PARTY}
        assert {str(Path(n).parent) for n in names if n.endswith("/__init__.py")} == packages
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "catlip = engine.cli:main" in entry_points


def _third_party_imports() -> set[str]:
    """Top-level names of every non-stdlib module imported anywhere in catlip/, engine/, kernels/."""
    found = set()
    for package in FIRST_PARTY:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def test_the_metadata_declares_every_runtime_dependency(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == "catlip-engine" and meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0" and meta["Requires-Python"] == ">=3.10"
    assert meta["Summary"] and meta["Author"] and "# catlip-engine" in meta.get_payload()
    required, extras = set(), {}
    for line in meta.get_all("Requires-Dist"):
        name = _normal(re.match(r"[A-Za-z0-9_.-]+", line).group(0))
        extra = re.search(r"extra == \"(\w+)\"", line)
        if extra:
            extras.setdefault(extra.group(1), set()).add(name)
        else:
            required.add(name)
    assert {"interop", "ray", "dev"} <= set(meta.get_all("Provides-Extra"))
    installed = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_third_party_imports()):
        dists = {_normal(DISTRIBUTION_OF.get(module) or d) for d in installed.get(module, [module])}
        if module == "ray":  # data preparation on Ray: an extra
            assert dists & extras["ray"], extras
        elif not dists & required:
            missing.append(f"{module} ({', '.join(sorted(dists))})")
    assert not missing, f"imported but not in the wheel's dependencies: {missing}"
    for name in ("safetensors", "regex", "tensorboard", "deepspeed", "nvidia-dali-cuda130", "torch", "nltk"):
        assert name in required, name
    assert "open-clip-torch" in extras["interop"] and "timm" in extras["interop"]
    assert {"pytest", "ruff"} <= extras["dev"]


def test_setup_py_holds_no_second_copy_of_the_metadata() -> None:
    setup = (ROOT / "setup.py").read_text()
    for field in ("name=", "version=", "install_requires", "extras_require", "entry_points", "description="):
        assert field not in setup, field
    project = (ROOT / "pyproject.toml").read_text()
    assert "[project]" in project and 'version = { attr = "catlip.__version__" }' in project


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A new virtualenv that sees the pinned venv's packages (a .pth adds its site-packages, so
    nothing is downloaded) and holds the wheel, installed with pip --no-deps (not editable)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("pytest does not run in a virtualenv")
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pinned = sysconfig.get_path("purelib")
    Path(site, "pinned_venv.pth").write_text(f"import site; site.addsitedir({pinned!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CATLIP_CHECKOUT", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        [str(venv / "bin")] + [p for p in env["PATH"].split(os.pathsep) if p != str(ROOT / "bin")]
    )
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        env=env,
        cwd=venv,
        capture_output=True,
    )
    return venv, env


def _run(venv_env: tuple[Path, dict[str, str]], *cmd: str) -> str:
    venv, env = venv_env
    proc = subprocess.run(cmd, cwd=venv.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_installed_wheel_runs_without_the_checkout(fresh_venv) -> None:
    venv, _ = fresh_venv
    site = next((venv / "lib").glob("python3*/site-packages"))
    version = _run(fresh_venv, str(venv / "bin" / "catlip"), "--version")
    assert version.strip() == f"catlip-engine {__version__} ({site})"  # the installed copy, not ROOT
    helptext = _run(fresh_venv, "catlip", "--help")
    for command in ("vocab", "pack", "train", "export", "classes", "predict", "evaluate", "config"):
        assert f"    {command}" in helptext, command
    train_help = _run(fresh_venv, str(venv / "bin" / "python"), "-m", "engine.train", "--help")
    assert "--config" in train_help and "--set" in train_help
    listed = _run(fresh_venv, "catlip", "config", "list")
    assert "catlip_vit_b16" in listed and str(site / "engine" / "configs") in listed
    shown = _run(fresh_venv, "catlip", "config", "show", "catlip_vit_b16")
    assert shown == (ROOT / "configs" / "catlip_vit_b16.yaml").read_text()
    where = _run(
        fresh_venv,
        str(venv / "bin" / "python"),
        "-c",
        "import engine.train, kernels; print(engine.train.__file__, kernels.__file__)",
    )
    assert all(str(site) in p for p in where.split()), where


def test_config_commands_read_the_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main
    from engine.config_files import find_config, list_configs

    names = [c.name for c in list_configs()]
    assert names == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert find_config("coco_tiny_cpu.yaml") == find_config("coco_tiny_cpu")
    assert all(c.summary for c in list_configs())
    assert main(["config", "list"]) == 0
    assert "catlip_vit_b16  " in capsys.readouterr().out
    assert main(["config", "show", "coco_tiny_cpu"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "coco_tiny_cpu.yaml").read_text()
    assert main(["config", "show", "coco_tiny_cpu", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(ROOT / "configs" / "coco_tiny_cpu.yaml")
    assert main(["config", "show", "vit_b16"]) == 2
    assert "no shipped config named 'vit_b16'; there are: catlip_vit_b16" in capsys.readouterr().err


def test_license_citation_and_changelog() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text.splitlines()) > 190
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == __version__
    assert citation["license"] == "Apache-2.0" and citation["type"] == "software"
    (paper,) = citation["references"]
    assert "CatLIP" in paper["title"] and paper["year"] == 2024
    assert paper["authors"][0] == {"family-names": "Mehta", "given-names": "Sachin"}
    assert any("2404.15653" in i["value"] for i in paper["identifiers"])
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?([0-9][^\]\s]*)", changelog, flags=re.M)
    assert versions and versions[0] == __version__, versions


# -------------------------------------------------------------- the version in checkpoints and exports
def _save_and_export(rank: int, tmp: str) -> dict:
    from safetensors import safe_open
    from test_train import rank_loader, tiny_cfg, tiny_model

    from engine.checkpoint import export_fp32
    from engine.train import Trainer

    tmp = Path(tmp)
    t = Trainer(
        tiny_cfg(tmp / "run", 2, steps=2, ckpt_every=2),
        model_fn=tiny_model,
        train_loader=rank_loader(rank, 1, 2),
    )
    t.fit()
    t.close()
    tag = tmp / "run" / "checkpoints" / "step_00000002"
    with safe_open(str(export_fp32(tag, tmp / "model.safetensors")), "pt") as f:
        meta = f.metadata()
    return {"complete": json.loads((tag / "complete.json").read_text()), "export": meta}


@pytest.mark.distributed
def test_checkpoints_and_exports_record_the_version(tmp_path: Path) -> None:
    from dist_utils import run_ranks

    (r,) = run_ranks(_save_and_export, world=1, tmp=str(tmp_path))
    assert r["complete"]["catlip_version"] == __version__
    assert r["export"]["catlip_version"] == __version__
    assert r["export"]["checkpoint_catlip_version"] == __version__
