"""The pre-trained side of transfer: ``objective.init_from`` and ``objective.classifier_init: synset``.

``load_pretrained(path)`` reads, into our state-dict names (``encoder.*``, ``head.*``):
  * a checkpoint of this engine: a tag directory, a ``checkpoints/`` directory or a run's out_dir
    (:func:`engine.checkpoint.consolidate`: the whole fp32 state, ZeRO partitions put together);
  * a ``catlip export`` safetensors file (the same state, its metadata the checkpoint's);
  * anything else (a timm or open_clip visual tower, a corenet ViT checkpoint, a timm export):
    through :func:`catlip.convert.load_encoder_state`, imported only then.
The vocabulary identity (``vocab_sha256``) comes with our checkpoints and exports (``--format timm``
included: its metadata keeps ours); a foreign state has none, so it gives a backbone but no synset
classifier.

Synset initialisation (the paper's data-efficient transfer): class c of the downstream set maps,
in its CLASSES.json (``catlip classes``), to one or more rows of the pre-trained vocabulary; the
new classifier's row c is the pre-trained head's weight row and bias of that synset, the mean of
them when several rows map to one class (so the initial logit of c is the mean of those rows'
logits). CLASSES.json is the one the class pack records (path and SHA-256 in its dataset.json);
its vocabulary must be the checkpoint's: a mismatch is an error naming both hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catlip.readers import load_json
from engine.errors import ConfigError


@dataclass
class Pretrained:
    state: dict[str, torch.Tensor]  # our names: encoder.*, and head.* where the source has our head
    source: str  # what was read, for messages
    kind: str  # "catlip checkpoint" | "catlip export" | "catlip timm export" | "foreign"
    config: dict[str, Any] = field(default_factory=dict)  # the pre-training run's config, if known
    vocab: dict[str, Any] = field(default_factory=dict)  # {"vocab", "vocab_size", "vocab_sha256"}
    note: str = ""  # which of the file's weights were read, where it held a choice (EMA or not)


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = load_json("metadata", text=text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def load_pretrained(path: str | Path, *, image_size: int | None = None) -> Pretrained:
    """The state of ``objective.init_from``, in our names (see the module docstring). ``image_size``:
    the resolution the model's position table is for (``ViTConfig.pos_image_size``), for a
    foreign state's table (corenet's own interpolation)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"objective.init_from: {p} does not exist")
    from engine.checkpoint import CheckpointError, read_model

    meta: dict[str, str] = {}
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"objective.init_from: {p} is not a safetensors file: {err}") from None
    if p.is_dir() or ("catlip_config" in meta and "timm_model" not in meta):
        try:
            state, meta = read_model(p)
        except CheckpointError as err:
            raise ConfigError(f"objective.init_from: {err}") from None
        kind = "catlip checkpoint" if p.is_dir() else "catlip export"
        return Pretrained(state, str(p), kind, _json(meta.get("catlip_config")), _json(meta.get("vocab")))
    pre = _foreign(p, image_size)
    if "timm_model" in meta:  # `catlip export --format timm`: timm's names, our metadata
        pre.kind = "catlip timm export"
        pre.config, pre.vocab = _json(meta.get("catlip_config")), _json(meta.get("vocab"))
    return pre


def _foreign(p: Path, image_size: int | None = None) -> Pretrained:
    try:
        from catlip.convert import load_encoder_state
    except ImportError as err:
        raise ConfigError(
            f"objective.init_from: {p} is neither a checkpoint of this engine nor a catlip safetensors export, "
            f"and catlip.convert (timm / open_clip / corenet weights) is not available: {err}"
        ) from None
    notes: list[str] = []
    try:
        state = load_encoder_state(p, image_size=image_size, log=notes.append)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise ConfigError(f"objective.init_from: {p}: {err}") from None
    note = " ".join(n.removeprefix(f"{p}: ") for n in notes)
    return Pretrained(dict(state), str(p), "foreign", note=note)


def load_backbone(model: nn.Module, pre: Pretrained, model_name: str) -> int:
    """Copy the pre-trained tower into ``model.encoder`` (every tensor, shapes checked); returns
    how many tensors were loaded."""
    enc = {k[len("encoder.") :]: v for k, v in pre.state.items() if k.startswith("encoder.")}
    if not enc:
        raise ConfigError(
            f"objective.init_from: {pre.source} holds no encoder.* weights ({len(pre.state)} tensors)"
        )
    was = pre.config.get("model", {})
    mine = model.encoder.state_dict()
    missing = sorted(set(mine) - set(enc))
    bad = [k for k in mine if k in enc and tuple(enc[k].shape) != tuple(mine[k].shape)]
    if bad == ["pos_embed"] and not missing:  # another resolution, the same patches: resample the grid
        # to the grid of the model's table (corenet's 14 x 14 with pos_interp corenet)
        enc["pos_embed"] = _resample_pos_embed(enc, model.encoder.cfg.pos_image_size, pre.source)
        bad = [] if tuple(enc["pos_embed"].shape) == tuple(mine["pos_embed"].shape) else bad
    if missing or bad:
        trained = f" (pre-trained as {was.get('name')}, image_size {was.get('image_size')})" if was else ""
        what = (
            f"missing {missing[:4]}" if missing else f"shape of {bad[0]} {tuple(enc[bad[0]].shape)} vs ours "
        )
        what += "" if missing else f"{tuple(mine[bad[0]].shape)}"
        if ("patch_embed.0.weight" in enc) != ("patch_embed.0.weight" in mine):
            what += (
                "; the source has corenet's convolutional stem: use a corenet_vit_* model.name"
                if "patch_embed.0.weight" in enc
                else "; the source has a patch embedding, model.name a corenet_vit_* (conv stem) preset"
            )
        raise ConfigError(
            f"objective.init_from: {pre.source}{trained} does not fit model.name {model_name} with "
            f"image_size {model.encoder.cfg.image_size}: {what}"
        )
    with torch.no_grad():
        for k, t in mine.items():
            t.copy_(enc[k].to(t.dtype))
    return len(mine)


def _resample_pos_embed(enc: dict[str, torch.Tensor], image_size: int, source: str) -> torch.Tensor:
    """The position embedding for ``image_size``: bicubic over the patch grid, the class token's
    row kept (catlip.convert's resampling, as timm's ``resample_abs_pos_embed``)."""
    try:
        from catlip.convert import load_encoder_state
    except ImportError as err:
        raise ConfigError(
            f"objective.init_from: {source} is for another resolution and catlip.convert is missing ({err})"
        ) from None
    return load_encoder_state({f"encoder.{k}": v for k, v in enc.items()}, image_size=image_size)[
        "encoder.pos_embed"
    ]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_class_map(meta: dict[str, Any], train_dir: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """The CLASSES.json a class pack's dataset.json names, checked against its recorded SHA-256.
    A relative path is taken relative to the pack's folder, then to the working directory."""
    rec = meta.get("classes") or {}
    if not rec.get("path"):
        raise ConfigError(
            "objective.classifier_init synset: data.train's dataset.json records no class map (classes.path); "
            "pack the downstream set with `catlip pack ... --classes CLASSES.json`"
        )
    path = Path(rec["path"])
    here = [Path(train_dir), Path(train_dir).parent] if train_dir else []
    candidates = [path] if path.is_absolute() else [*(d / path for d in here), path]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise ConfigError(
            f"objective.classifier_init synset: the class map {rec['path']} named by data.train is missing "
            f"(looked at {', '.join(map(str, candidates))})"
        )
    path = found[0]
    digest = sha256_file(path)
    if rec.get("sha256") and digest != rec["sha256"]:
        raise ConfigError(
            f"objective.classifier_init synset: {path} has sha256 {digest}, but data.train was packed with a class map "
            f"of sha256 {rec['sha256']}: the file changed since packing (re-pack, or restore it)"
        )
    try:
        classes = load_json(path)
    except ValueError as err:
        raise ConfigError(f"objective.classifier_init synset: {err}") from None
    return path, classes


def synset_classifier(
    pre: Pretrained, classes: dict[str, Any], classes_path: Path, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, W) weight and (C,) bias: per class the mean of the pre-trained head's rows it maps to."""
    if "head.weight" not in pre.state or "head.bias" not in pre.state:
        raise ConfigError(
            f"objective.classifier_init synset: {pre.source} has no pre-trained head (head.weight, head.bias); "
            "synset initialisation needs a CatLIP checkpoint or its catlip export"
        )
    ckpt_sha = pre.vocab.get("vocab_sha256")
    map_sha = (classes.get("vocab") or {}).get("sha256")
    if not ckpt_sha:
        raise ConfigError(
            f"objective.classifier_init synset: {pre.source} records no vocabulary hash (vocab_sha256), so its head "
            f"rows cannot be matched to {classes_path}"
        )
    if ckpt_sha != map_sha:
        raise ConfigError(
            f"objective.classifier_init synset: {pre.source} was trained on vocabulary {pre.vocab.get('vocab', '?')} "
            f"(sha256 {ckpt_sha}), but {classes_path} maps classes onto vocabulary "
            f"{(classes.get('vocab') or {}).get('path', '?')} (sha256 {map_sha}): make the class map with "
            "`catlip classes --vocab` of the checkpoint's vocabulary"
        )
    entries = classes.get("classes") or []
    if len(entries) != num_classes:
        raise ConfigError(
            f"objective.classifier_init synset: {classes_path} has {len(entries)} classes, data.train {num_classes}"
        )
    head_w, head_b = pre.state["head.weight"].float(), pre.state["head.bias"].float()  # (V, W), (V,)
    vocab_size = head_w.shape[0]
    weight = torch.empty(num_classes, head_w.shape[1])
    bias = torch.empty(num_classes)
    for c, entry in enumerate(entries):
        rows = [int(r) for r in entry.get("rows") or []]
        if not rows or min(rows) < 0 or max(rows) >= vocab_size:
            raise ConfigError(
                f"objective.classifier_init synset: class {c} ({entry.get('name')}) of {classes_path} maps to rows "
                f"{rows}, not rows of the pre-trained head's {vocab_size}"
            )
        idx = torch.tensor(rows)
        weight[c] = head_w[idx].mean(0)
        bias[c] = head_b[idx].mean()
    return weight, bias
