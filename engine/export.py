"""``catlip export --out DIR``: a run's weights as a folder laid out as the Hugging Face hub and
timm lay one out, with the eval transform and the label names of the run.

    DIR/config.json        timm's format: architecture, num_classes, model_args, pretrained_cfg
                           (input_size, interpolation, crop_pct, crop_mode, mean, std: the trainer's
                           eval transform), label_names (the vocabulary's synsets, "dog.n.01"),
                           label_descriptions (their WordNet definitions); and ours: catlip_config,
                           vocab (size, SHA-256, labeler), catlip_version
    DIR/model.safetensors  the weights under timm's names (catlip.convert.export_timm)
    DIR/vocab.tsv          the run's vocabulary (and its vocab.tsv.json / .senses.json sidecars), so
                           `catlip classes --vocab DIR/vocab.tsv` maps class sets onto this head

so ``timm.create_model("local-dir:DIR", pretrained=True)`` builds the model and
``timm.data.create_transform(**timm.data.resolve_data_config(model=m))`` is the eval transform
(engine/data/pipeline.py's ``eval_resize``: the shorter side to the crop size, bilinear, center
crop, so crop_pct = 1.0; CLIP's mean and std). The single-file exports (``--out F.safetensors``)
are :func:`engine.checkpoint.export_fp32` and :func:`catlip.convert.export_timm`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import CheckpointError

EVAL_INTERPOLATION = "bilinear"  # eval_resize: DALI's linear filter, antialiased (PIL's bilinear)
EVAL_CROP_PCT = 1.0  # eval_resize resizes the shorter side to the crop size itself


def eval_data_config(image_size: int) -> dict[str, Any]:
    """The trainer's eval transform at ``image_size``, as timm's data config names it."""
    from engine.data.pipeline import CLIP_MEAN, CLIP_STD

    return {
        "input_size": (3, image_size, image_size),
        "interpolation": EVAL_INTERPOLATION,
        "crop_pct": EVAL_CROP_PCT,
        "crop_mode": "center",
        "mean": tuple(CLIP_MEAN),
        "std": tuple(CLIP_STD),
    }


def run_vocabulary(meta: dict[str, str], vocab: str | Path | None = None) -> Path:
    """The vocabulary TSV a checkpoint was trained on: ``vocab`` or the path its metadata records,
    checked against the recorded SHA-256."""
    from catlip.classes import vocab_sha256

    record = json.loads(meta.get("vocab") or "{}")
    path = Path(vocab) if vocab is not None else Path(record.get("vocab") or "")
    where = "--vocab" if vocab is not None else "the checkpoint's recorded vocabulary"
    if not record.get("vocab") and vocab is None:
        raise CheckpointError("records no vocabulary path: give the run's vocab.tsv with --vocab")
    if not path.is_file():
        raise CheckpointError(f"{where} {path}: no such file (give the run's vocab.tsv with --vocab)")
    want = record.get("vocab_sha256")
    if want and vocab_sha256(path) != want:
        raise CheckpointError(
            f"{where} {path} has SHA-256 {vocab_sha256(path)}, the checkpoint was trained on {want}: give "
            "the run's own vocab.tsv with --vocab"
        )
    return path


def label_descriptions(synsets: list[str]) -> dict[str, str]:
    """Each synset's WordNet definition ("dog.n.01" -> "a member of the genus Canis ...")."""
    from catlip.nltk_resources import wordnet

    try:
        wn = wordnet()
        return {name: wn.synset(name).definition() for name in synsets}
    except LookupError:  # NLTK's "Resource wordnet not found", a page long
        raise CheckpointError(
            "the label descriptions are WordNet's definitions, and NLTK's WordNet data is not installed: run "
            "`catlip setup-nltk`"
        ) from None


def export_folder(
    checkpoint: str | Path, out: str | Path, *, ema: bool = False, vocab: str | Path | None = None
) -> Path:
    """Consolidate a checkpoint and write the export folder (the module docstring); ``vocab``: the
    run's vocabulary TSV where the recorded path is gone (checked against the recorded hash)."""
    from engine.checkpoint import consolidate

    state, meta = consolidate(checkpoint, ema=ema)
    return write_folder(state, meta, out, vocab=vocab)


def write_folder(
    state: dict[str, torch.Tensor], meta: dict[str, str], out: str | Path, *, vocab: str | Path | None = None
) -> Path:
    """:func:`export_folder` from a consolidated state and its metadata."""
    from catlip.convert import config_from_meta, export_timm_folder
    from catlip.labels import Vocabulary, senses_path, vocab_labeler, vocab_meta_path
    from engine.config import with_new_keys

    run = with_new_keys(json.loads(meta.get("catlip_config") or "{}"))
    objective = (run.get("objective") or {}).get("name", "catlip")
    if objective != "catlip":
        raise CheckpointError(
            f"trained with objective {objective!r}: an export folder labels the rows of a CatLIP (objective "
            "catlip) head with the vocabulary's synsets; write this one as a file (--out F.safetensors, "
            "--format timm for timm's names)"
        )
    vocab_path = run_vocabulary(meta, vocab)
    synsets = Vocabulary.load(vocab_path).synsets
    record = json.loads(meta.get("vocab") or "{}")
    # a checkpoint from before the labeler record: the vocabulary's sidecar names it
    if "labeler" not in record and vocab_meta_path(vocab_path).is_file():
        record["labeler"] = vocab_labeler(vocab_path).record()
        meta = {**meta, "vocab": json.dumps(record)}
    _, cfg = config_from_meta(meta)
    out = Path(out)
    export_timm_folder(
        state,
        meta,
        out,
        data_config=eval_data_config(cfg.image_size),
        labels=synsets,
        descriptions=label_descriptions(synsets),
    )
    for src in (vocab_path, vocab_meta_path(vocab_path), senses_path(vocab_path)):
        if src.is_file():  # the sidecars keep their names beside vocab.tsv
            shutil.copyfile(src, out / src.name.replace(vocab_path.name, "vocab.tsv", 1))
    return out
