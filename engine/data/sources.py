"""Where a run's loaders come from: ``data.train``/``data.val`` of a run config (caption or class
packs, checked against each other), and a class pack on its own (zero-shot evaluation, probes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.dataset import check_train_val, read_dataset_meta, resolve_shards
from engine.data.loader import DaliLoader, make_loader


def class_pack_loader(
    folder: str | Path,
    batch_size: int,
    *,
    image_size: int | tuple[int, int] = 224,
    device: str = "auto",
    device_id: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_threads: int = 2,
    keys: bool = True,
    train: bool = False,
    seed: int = 0,
) -> tuple[DaliLoader, dict[str, Any]]:
    """A loader over a class pack (``catlip pack --imagefolder/--coco-instances/--yolo``: one split
    folder with its ``dataset.json``), with the eval transform unless ``train``, and that
    ``dataset.json`` (``num_classes``, ``multi_label``, ``classes`` {path, sha256, names},
    ``vocab_sha256``, ``samples``, ...).

    Batches are as :class:`DaliLoader` yields them: ``labels`` (B, L) int64 class indices padded
    with -1, L = the most classes of one sample in the pack (never truncated); ``valid`` (B,) is
    False for the samples repeated to fill the last batch (eval keeps every batch: mask with
    ``valid``), and ``key`` names each sample. ``ValueError`` when ``folder`` is not a class pack."""
    from engine.errors import ConfigError

    meta = read_dataset_meta(folder, "class pack")
    if "shard_names" not in meta:
        splits = ", ".join(str(Path(folder) / s) for s in meta.get("splits", {}))
        raise ConfigError(f"{folder} holds the splits {splits}: give one of them")
    if meta.get("label_member") != "cls":
        raise ConfigError(
            f"{folder} is a caption pack (labels over a vocabulary), not a class pack: pack the labelled "
            "set with `catlip pack --imagefolder/--coco-instances/--yolo ... --classes CLASSES.json`"
        )
    loader = make_loader(
        folder, batch_size, rank=rank, world_size=world_size, device=device, device_id=device_id,
        train=train, image_size=image_size, seed=seed, max_labels=max(1, int(meta.get("max_labels_per_sample", 1))),
        num_threads=num_threads, keys=keys, num_classes=int(meta["num_classes"]),
        expected_samples=meta.get("samples"), label_member="cls",
    )  # fmt: skip
    return loader, meta


def loaders_from_config(
    cfg: Any, rank: int, world_size: int, image_size: int, captions: bool, patch_size: int | None = None
):
    """DALI loaders over ``data.train`` / ``data.val`` and the train shards' dataset.json.

    Caption packs: labels are vocabulary rows, bounded by ``vocab_size``. Class packs
    (``label_member`` "cls"): class indices, bounded by ``num_classes``, padded to at least the
    most classes of one sample (so none is cut). Train and val must agree: the same vocabulary (its
    size and, where dataset.json records it, its SHA-256), and for class packs the same
    ``CLASSES.json``; a mismatch stops here, naming both folders. ``data.multiscale`` makes the
    train loader's batches variable (engine/multiscale.py; sides checked against ``patch_size``);
    the val loader stays at ``image_size``."""
    from engine.errors import ConfigError
    from engine.multiscale import from_config

    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is empty: point it at a directory made by `catlip pack`")
    meta = read_dataset_meta(d.train, "data.train")
    label_member = meta.get("label_member", "lbl")
    if label_member == "cls" and captions:
        raise ConfigError(
            f"data.train ({d.train}) is a class pack (no captions): this objective needs a caption pack"
        )
    metas = [meta]
    if d.val and not captions:
        val_meta = read_dataset_meta(d.val, "data.val")
        metas.append(val_meta)
        check_train_val(meta, val_meta, d)
    if label_member == "cls":
        num_classes = int(meta["num_classes"])
        max_labels = max([d.max_labels] + [int(m.get("max_labels_per_sample", 1)) for m in metas])
    else:
        num_classes, max_labels = int(meta["vocab_size"]), d.max_labels
    common = dict(
        rank=rank,
        world_size=world_size,
        device=d.decode_device,
        image_size=image_size,
        seed=cfg.run.seed,
        max_labels=max_labels,
        num_threads=d.num_threads,
        num_classes=num_classes,
        label_member=label_member,
    )
    for folder in (d.train, d.val if not captions else None):
        if folder:
            try:
                resolve_shards(folder)
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"data: {err}") from None
    try:
        multiscale = from_config(cfg, image_size, patch_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    train = make_loader(
        d.train, d.batch_size, train=True, scale=tuple(d.scale), captions=captions,
        expected_samples=meta.get("samples"), multiscale=multiscale, **common,
    )  # fmt: skip
    val = None
    if d.val and not captions:
        val = make_loader(
            d.val, d.batch_size, train=False, expected_samples=metas[1].get("samples"), **common
        )
    return train, val, meta
