"""Where a pack may go: never onto, into or above one of its inputs, and over an existing folder
only when that folder is a finished pack or empty.

``--overwrite`` removes the old ``OUT`` once the new pack is complete, so ``OUT`` must be a folder
whose loss costs nothing but a re-pack: one holding only what ``catlip pack`` writes
(``dataset.json`` written by it, ``rejects.tsv``, ``shard-*.tar``/``.idx``, ``train/``, ``val/``).
``--out imgs`` with ``--images imgs`` (or ``--out .``) would otherwise delete the photos. Both
checks run before anything is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

PACK_FORMAT = "catlip-pack/1"  # dataset.json "format"; packs from before it are known by their keys
_LEGACY_KEYS = {"vocab_sha256", "shard_size", "holdout_fraction"}  # written into every dataset.json
_PACK_FILE = re.compile(r"(dataset\.json|rejects\.tsv|shard-\d{6}\.(tar|idx))")


def source_inputs(source: Any, vocab: Path | str | None) -> list[tuple[str, Path]]:
    """(what, path) of every file and folder a pack of ``source`` reads."""
    found: list[tuple[str, Any]] = [
        ("the caption file", getattr(source, "captions_file", None)),
        ("the image folder", getattr(source, "images", None)),
        ("the vocabulary", vocab),
    ]
    found += [("an input tar", tar) for tar in getattr(source, "tars", ())]
    info = getattr(source, "info", {})
    found += [("the class source", info.get("root")), ("the names file", info.get("names"))]
    found.append(("the instances file", info.get("annotations")))
    classes = getattr(source, "classes", None)
    found.append(("the class set", getattr(classes, "path", None)))
    exclude = getattr(source, "exclude", None)
    found += [("an --exclude list", p) for p in getattr(exclude, "paths", ())]
    return [(what, Path(p)) for what, p in found if p]


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(out: Path, inputs: list[tuple[str, Path]], *, overwrite: bool) -> str | None:
    """Why ``out`` cannot receive the pack (None: it can). ``out`` and its staging folder
    ``OUT.partial`` may be neither an input, nor inside one, nor above one."""
    out = out.resolve()
    clashes = []  # (0: is, 1: is inside, 2: holds; the folder; what; the input)
    for target in (out, out.with_name(out.name + ".partial")):
        for what, path in inputs:
            path = path.resolve()
            if _within(target, path) or _within(path, target):
                clashes.append(
                    (0 if target == path else 1 if _within(target, path) else 2, target, what, path)
                )
    if clashes:
        how, target, what, path = min(clashes, key=lambda c: c[0])
        return (
            f"--out {target} {('is', 'is inside', 'holds')[how]} {what} {path}: a pack goes to a "
            "folder of its own, apart from its inputs (it is replaced whole); choose another --out"
        )
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} exists and is not a folder; choose another --out"
    entries = sorted(out.iterdir())
    if not entries:
        return None
    if not overwrite:
        return (
            f"{out} already exists and is not empty; give --overwrite to replace it (it stays "
            "as it is until the new pack is complete), or choose another --out"
        )
    if not is_pack(out):
        return (
            f"{out} is not a pack made by `catlip pack` (no dataset.json of one): --overwrite replaces "
            "only an earlier pack or an empty folder; choose another --out"
        )
    foreign = [p.name for p in entries if not _pack_entry(p)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (
            f"{out} is a pack but also holds what `catlip pack` did not write ({shown}): --overwrite "
            "would delete it; move it out, or choose another --out"
        )
    return None


def is_pack(folder: Path) -> bool:
    """Whether ``folder/dataset.json`` was written by ``catlip pack`` (its format, or the keys
    every pack's has)."""
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and (meta.get("format") == PACK_FORMAT or _LEGACY_KEYS <= meta.keys())


def _pack_entry(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink() and path.name in ("train", "val"):
        return all(p.is_file() and _PACK_FILE.fullmatch(p.name) for p in path.iterdir())
    return path.is_file() and _PACK_FILE.fullmatch(path.name) is not None
