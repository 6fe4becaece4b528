"""The README and docs/ say what the code does, where that is cheap to check: every command line in
their code blocks parses with the parser that would run it (`catlip`, `python -m engine.train`,
the launchers in front of it), every `catlip` command and option named in their text exists, every
linked file and heading exists, and every repository path they name is there."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from engine.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"^(?:catlip|engine|kernels|configs|perf|scripts|tests|docs|bin|\.ci)/[\w./*-]*$")


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def _command_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            lines.append(line)
    return lines


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _train_parser() -> argparse.ArgumentParser:
    from engine.config import add_train_arguments

    parser = argparse.ArgumentParser(prog="python -m engine.train")
    add_train_arguments(parser)
    return parser


def _parse(parser: argparse.ArgumentParser, args: list[str], line: str) -> argparse.Namespace | None:
    try:
        return parser.parse_args(args)
    except SystemExit as err:  # argparse's usage error (status 2), or --help / --version (0)
        if err.code != 0:
            raise AssertionError(f"does not parse: {line}") from err
        return None


def _check_train_args(args: list[str], line: str) -> None:
    """``engine.train``'s arguments; a config under configs/ must exist."""
    ns = _parse(_train_parser(), args, line)
    if ns.config is not None and str(ns.config).startswith("configs/"):
        assert (ROOT / ns.config).is_file(), f"{line}: no {ns.config}"


def _check_line(line: str) -> None:
    words = shlex.split(line)
    while words and re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 ...
        words = words[1:]
    if not words:
        return
    if words[0] == "catlip":
        _parse(build_parser(), words[1:], line)
    elif words[:3] == ["python", "-m", "engine.train"]:
        _check_train_args(words[3:], line)
    elif words[:3] == ["python", "-m", "engine.launch"] or words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        start = 3 if words[0] == "python" else 1
        ns = _parse(get_args_parser(), words[start:], line)
        assert ns.module and ns.training_script == "engine.train", line
        _check_train_args(ns.training_script_args, line)
    elif words[0] == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        ns = parse_args(words[1:])
        assert ns.module and ns.user_script == "engine.train", line
        _check_train_args(ns.user_args, line)
    elif words[0] == "bash":
        assert (ROOT / words[1]).is_file(), line
    elif words[0] == "make":
        assert re.search(rf"^{re.escape(words[1])}:", (ROOT / "Makefile").read_text(), flags=re.M), line


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "bash scripts/run_main.sh" in text and "bash scripts/run_tests.sh" in text
    assert "bash scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
    for page in (
        "labels",
        "data",
        "training",
        "kernels",
        "transfer",
        "guarantees",
        "results",
        "main_job",
        "development",
    ):
        assert f"(docs/{page}.md)" in text, page
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), (
        "dated measurements belong in docs/ and perf/results/"
    )


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_command_lines_parse(page: Path) -> None:
    blocks = _code_blocks(page.read_text(), "bash")
    for block in blocks:
        for line in _command_lines(block):
            _check_line(line)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_catlip_commands_and_options_named_in_the_text_exist(page: Path) -> None:
    commands = _subparsers(build_parser())
    for code in re.findall(r"`(catlip [^`]+)`", page.read_text()):
        words = shlex.split(code)
        if len(words) < 2 or words[1].startswith(("-", "<")):  # catlip --help, catlip <command>
            continue
        assert words[1] in commands, f"{page.name}: no command catlip {words[1]} ({code})"
        parser = commands[words[1]]
        if words[1] == "config" and len(words) > 2:
            parser = _subparsers(parser)[words[2]]
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert option in parser._option_string_actions, f"{page.name}: catlip {words[1]} has no {option}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_and_paths_exist(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        assert where.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", where.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}: no such heading"
    for code in re.findall(r"`([^`\s]+)`", text):
        if REPO_PATH.match(code):
            found = list(ROOT.glob(code.rstrip("/"))) if "*" in code else [ROOT / code]
            assert any(p.exists() for p in found), f"{page.name}: `{code}` does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_python_snippets_import_what_exists(page: Path) -> None:
    for block in _code_blocks(page.read_text(), "python"):
        for module, names in re.findall(r"^from ([\w.]+) import (.+)$", block, flags=re.M):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(imported, name), f"{page.name}: {module} has no {name}"


def test_the_readme_names_what_python_users_reach_for() -> None:
    text = (ROOT / "README.md").read_text()
    for dotted in re.findall(r"`((?:catlip|engine)\.[\w.]+\.\w+)`", text):
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted
