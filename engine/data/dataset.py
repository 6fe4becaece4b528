"""Packed datasets: the shards a folder holds, its ``dataset.json``, and the checks that a train
and a val pack agree (kind, vocabulary or class set, labeler) before any pipeline is built.

A folder made by ``catlip pack`` holds ``dataset.json`` (``shard_names``, ``samples``,
``label_member``, ``vocab_size``/``vocab_sha256`` or ``num_classes``/``classes``, the labeler
record), the ``.tar`` shards and DALI's ``.idx`` index beside each.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catlip.readers import load_json

_PACK_KIND = {"lbl": "caption pack", "cls": "class pack"}
LABEL_MEMBERS = ("lbl", "cls")  # caption labels (vocabulary rows); class indices (CLASSES.json)


class DataError(ValueError):
    """Shards whose content cannot be trained on as they are (e.g. labels of another vocabulary)."""


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Tar paths from a packed folder (its ``dataset.json``, else its ``*.tar``), a tar, or a list."""
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        if path.is_dir():
            meta_path = path / "dataset.json"
            if meta_path.is_file():
                meta = load_json(meta_path, DataError)
                if not isinstance(meta, dict):
                    raise DataError(f"{meta_path}: not a dataset.json of `catlip pack` (not an object)")
                if "shard_names" not in meta:
                    splits = ", ".join(str(path / s) for s in meta.get("splits", {}))
                    raise ValueError(f"{path} holds the splits {splits}: give one of them")
                paths = [path / name for name in meta["shard_names"]]
            else:
                paths = sorted(path.glob("*.tar"))
        else:
            paths = [path]
    else:
        paths = [Path(p) for p in shards]
    if not paths:
        raise ValueError(f"no .tar shards in {shards}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shards not found: {', '.join(missing[:5])}")
    return paths


def index_files(paths: list[Path]) -> list[str] | None:
    """The ``.idx`` beside each tar, or None (DALI then scans every tar: slow) if any is missing."""
    idx = [p.with_suffix(".idx") for p in paths]
    if all(p.is_file() for p in idx):
        return [str(p) for p in idx]
    warnings.warn(
        "some shards have no .idx beside them; DALI will scan the tars at start-up (re-pack with "
        "`catlip pack`, or run DALI's wds2idx)",
        stacklevel=3,
    )
    return None


def read_dataset_meta(folder: str | Path, option: str) -> dict[str, Any]:
    """``dataset.json`` of a ``catlip pack`` output folder, or a ConfigError naming the option."""
    from engine.errors import ConfigError

    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise ConfigError(
            f"{option}: {folder} has no dataset.json (point it at a folder made by `catlip pack`)"
        )
    try:
        meta = load_json(path)
    except ValueError as err:
        raise ConfigError(f"{option}: {err}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{option}: {path} is not a dataset.json of `catlip pack` (not a JSON object)")
    return meta


def _check_labelers(meta: dict, val_meta: dict, d: Any) -> None:
    """Train and val shards labelled by one labeler (a dataset.json without a record was packed
    before labelers had names: catlip-1 or corenet, by its settings)."""
    from catlip.labels import LabelerMismatch, LabelerSpec
    from engine.errors import ConfigError

    try:
        LabelerSpec.of_meta(meta, where=f"{d.train}/dataset.json").check_same(
            LabelerSpec.of_meta(val_meta, where=f"{d.val}/dataset.json"),
            f"data.train ({d.train})",
            f"data.val ({d.val})",
        )
    except (LabelerMismatch, ValueError) as err:
        raise ConfigError(str(err)) from None


def check_train_val(meta: dict, val_meta: dict, d: Any) -> None:
    """``data.train`` and ``data.val`` (their dataset.json ``meta`` and ``val_meta``; ``d`` the
    data config) are packs of one kind, over one vocabulary (its size and, where recorded, its
    SHA-256) or one ``CLASSES.json``, and, for caption packs, labelled by one labeler: a mismatch
    is a ConfigError naming both folders."""
    from engine.errors import ConfigError

    label_member = meta.get("label_member", "lbl")
    val_member = val_meta.get("label_member", "lbl")
    if val_member != label_member:
        raise ConfigError(
            f"data.train ({d.train}) is a {_PACK_KIND[label_member]} but data.val ({d.val}) is a "
            f"{_PACK_KIND[val_member]}: give two packs of the same kind"
        )
    keys = ("vocab_size", "vocab_sha256") + (("classes",) if label_member == "cls" else ())
    for key in keys:
        a, b = meta.get(key), val_meta.get(key)
        if key == "classes":
            key, a, b = "CLASSES.json sha256", (a or {}).get("sha256"), (b or {}).get("sha256")
        if a is not None and b is not None and a != b:
            what = "class sets" if key.startswith("CLASSES") else "vocabularies"
            raise ConfigError(
                f"data.train ({d.train}) and data.val ({d.val}) were packed with different {what} "
                f"({key} {a} vs {b}): pack both with the same "
                + ("CLASSES.json" if what == "class sets" else "vocab.tsv")
            )
    if label_member == "lbl":
        _check_labelers(meta, val_meta, d)
