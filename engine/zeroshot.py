"""Zero-shot recognition with a CatLIP checkpoint: ``catlip predict`` and ``catlip evaluate``.

Every row of the CatLIP head is a WordNet synset, so a class set mapped onto the vocabulary
(``catlip classes`` -> CLASSES.json) is classified with no training: the score of class c is

    score(c) = max over the rows r of c of logit_r(image)

(the max, not the mean: a class mapped to several nearby synsets, e.g. "tie" to shirt, suit,
scarf ..., is present when any of them is; a mean would dilute the one row that fires). The
probability shown is sigmoid(score), the head's own per-synset probability. Classes are ranked by
score; mAP is per class over the images (engine.metrics.average_precision), chance is the mean over
classes of their positive rate (a random ranking's expected AP).

Checkpoints: a DeepSpeed checkpoint directory (a tag, its ``checkpoints/`` folder or the run's
out_dir; consolidated with engine.checkpoint.consolidate, any ZeRO stage), a ``catlip export``
safetensors file or a ``catlip export --out DIR`` folder; all carry the run config (model preset
and resolution) and the vocabulary's SHA-256, which must be the one CLASSES.json was mapped onto.

Preprocessing is the trainer's evaluation transform (engine/data/pipeline.py, ``train=False``):
DALI decodes on the CPU (or nvJPEG), resizes the shorter side to the model's resolution
(antialiased), center crops and normalises with the CLIP mean and std. ``evaluate`` reads a class
pack with engine.data.class_pack_loader; ``predict`` runs the same DALI operators on loose files
(engine.data.pipeline.ImageTransform), after the pack's own image check (engine.packing.check_image).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from catlip.classes import ClassMap, ClassMapError
from catlip.progress import progress as progress_bar
from catlip.readers import load_json
from engine.config import with_new_keys
from engine.data.pipeline import ImageTransform

log = logging.getLogger(__name__)


class ZeroShotError(ValueError):
    """An input that cannot be used (checkpoint, class map, data); the message says which and why."""


# ------------------------------------------------------------------------------------ checkpoint
def load_checkpoint(path: str | Path, *, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(fp32 state dict, metadata) of a DeepSpeed checkpoint directory, a catlip safetensors export
    or a ``catlip export --out DIR`` folder (engine/export.py: its timm names read back into ours,
    its config.json's run config and vocabulary record as the metadata)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _read_folder(path)
    from engine.checkpoint import CheckpointError, read_model  # imports DeepSpeed

    try:
        return read_model(path, ema=ema)
    except CheckpointError as err:
        raise ZeroShotError(f"--checkpoint {err}") from None


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import json

    from catlip.convert import InteropError, load_encoder_state

    try:
        config = json.loads((folder / "config.json").read_text())
        state = load_encoder_state(folder / "model.safetensors", log=lambda _: None)
    except (OSError, ValueError, InteropError) as err:  # InteropError is a ValueError
        raise ZeroShotError(f"--checkpoint {folder}: not a readable `catlip export` folder ({err})") from None
    if "catlip_config" not in config:
        raise ZeroShotError(
            f"--checkpoint {folder}: its config.json has no catlip_config (not a `catlip export` folder)"
        )
    meta = {
        "catlip_config": json.dumps(config["catlip_config"]),
        "vocab": json.dumps(config.get("vocab") or {}),
    }
    return state, meta


def load_model(state: dict[str, torch.Tensor], meta: dict[str, str], source: str | Path) -> torch.nn.Module:
    """The CatLIPModel the run trained (preset and resolution from its config), with ``state`` loaded."""
    from catlip.models import CatLIPModel, run_vit_config

    if "head.weight" not in state or "encoder.cls_token" not in state:
        fmt = (
            " (a timm export? give the catlip-format export or the checkpoint)"
            if "cls_token" in state
            else ""
        )
        raise ZeroShotError(f"--checkpoint {source}: holds no CatLIP model state (encoder.* and head.*){fmt}")
    try:
        config = load_json("catlip_config", text=meta.get("catlip_config") or "{}")
    except ValueError as err:
        raise ZeroShotError(
            f"--checkpoint {source}: its catlip_config metadata is not JSON ({err})"
        ) from None
    config = with_new_keys(config)  # a run saved before the keys moved: model.objective
    model_cfg = config.get("model") or {}
    objective = (config.get("objective") or {}).get("name", "catlip")
    if objective != "catlip":
        raise ZeroShotError(
            f"--checkpoint {source}: trained with objective {objective!r}; zero-shot reads the synset head of "
            "a CatLIP (objective catlip) checkpoint"
        )
    name = model_cfg.get("name")
    if not name:
        raise ZeroShotError(f"--checkpoint {source}: its metadata has no catlip_config model.name")
    try:
        vit = run_vit_config(model_cfg)
    except ValueError as err:
        raise ZeroShotError(f"--checkpoint {source}: {err}") from None
    model = CatLIPModel(vit, int(state["head.weight"].shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ZeroShotError(
            f"--checkpoint {source}: its weights do not fit {name} at {vit.image_size}px ({str(err)[:300]})"
        ) from None
    return model.eval()


def checkpoint_vocab(meta: dict[str, str]) -> dict[str, Any]:
    try:
        return load_json("vocab", text=meta.get("vocab") or "{}") or {}
    except ValueError:
        return {}


def check_vocabulary(
    meta: dict[str, str], vocab_size: int, class_map: ClassMap, ckpt: Path, classes: Path
) -> None:
    """The checkpoint must have been trained on the vocabulary the class map was made for."""
    ck = checkpoint_vocab(meta)
    want = class_map.vocab
    ck_sha, cm_sha = ck.get("vocab_sha256"), want.get("sha256")
    if ck_sha and cm_sha and ck_sha != cm_sha:
        raise ZeroShotError(
            f"vocabulary mismatch: --checkpoint {ckpt} was trained on vocabulary sha256 {ck_sha} "
            f"({ck.get('vocab', '?')}, {ck.get('vocab_size', '?')} synsets), --classes {classes} was mapped "
            f"onto sha256 {cm_sha} ({want.get('path', '?')}, {want.get('size', '?')} synsets): re-run "
            "`catlip classes --vocab` with the checkpoint's vocabulary"
        )
    if vocab_size != int(want["size"]):
        raise ZeroShotError(
            f"vocabulary mismatch: --checkpoint {ckpt} has a head of {vocab_size} synsets, --classes {classes} "
            f"was mapped onto a vocabulary of {want['size']}: re-run `catlip classes --vocab` with the "
            "checkpoint's vocabulary"
        )
    if not ck_sha:
        log.warning(
            "%s records no vocabulary hash; only its size (%d) was checked against %s",
            ckpt,
            vocab_size,
            classes,
        )


# ------------------------------------------------------------------------------------ the classifier
class ZeroShotClassifier:
    """A CatLIP model read out over a class map: ``scores(images)`` -> (B, C) class scores."""

    def __init__(
        self, model: torch.nn.Module, class_map: ClassMap, device: torch.device | str = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.class_map = class_map
        self.device = torch.device(device)
        rows = [c.rows for c in class_map.classes]
        width = max(len(r) for r in rows)
        index = torch.zeros(len(rows), width, dtype=torch.long)  # (C, R): each class's rows, padded
        pad = torch.ones(len(rows), width, dtype=torch.bool)  # (C, R): True where padding
        for i, r in enumerate(rows):
            index[i, : len(r)] = torch.tensor(r)
            pad[i, : len(r)] = False
        self._index, self._pad = index.to(self.device), pad.to(self.device)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def names(self) -> list[str]:
        return self.class_map.names

    def class_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) head logits -> (B, C): each class's max logit over its rows."""
        gathered = logits[:, self._index]  # (B, C, R)
        return gathered.masked_fill(self._pad, float("-inf")).amax(dim=2)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C) float32 class scores (logits)."""
        logits = self.model(images.to(self.device, torch.float32)).float()  # (B, V)
        return self.class_scores(logits)

    __call__ = scores  # catlip.zero_shot_classifier's classifier(images)

    @classmethod
    def from_files(
        cls, checkpoint: str | Path, classes: str | Path, *, device: str | None = None, ema: bool = False
    ) -> ZeroShotClassifier:
        """Load and check: the class map, the checkpoint, their shared vocabulary."""
        checkpoint, classes = Path(checkpoint), Path(classes)
        try:
            class_map = ClassMap.load(classes)
        except ClassMapError as err:
            raise ZeroShotError(f"--classes {err}") from None
        state, meta = load_checkpoint(checkpoint, ema=ema)
        model = load_model(state, meta, checkpoint)
        check_vocabulary(meta, model.head.out_features, class_map, checkpoint, classes)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, class_map, device)


# ------------------------------------------------------------------------------------ images
@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float, float]]  # (class name, probability, score)


def read_images(paths: Sequence[str | Path]) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(path, checked bytes or None, why not) for each path, with the pack's image check."""
    from engine.packing import check_image

    for p in paths:
        path = Path(p)
        if not path.is_file():
            yield str(p), None, "no such file" if not path.exists() else "not a file"
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            yield str(p), None, f"cannot read it ({err.strerror})"
            continue
        ext, checked, reason = check_image(data)
        yield (str(p), checked, None) if ext else (str(p), None, reason or "not an image")


def predict(
    classifier: ZeroShotClassifier, paths: Sequence[str | Path], *, top: int = 5, batch_size: int = 16
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-``top`` classes of each image; returns (predictions, skipped (path, why))."""
    transform = ImageTransform(classifier.image_size, batch_size=batch_size)
    names, k = classifier.names, min(top, len(classifier.names))
    done: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        if not batch:
            return
        try:
            groups = [(batch[:], transform([b for _, b in batch]))]
        except RuntimeError:  # an image DALI rejects after the check: decode them one by one
            groups = []
            for item in batch:
                try:
                    groups.append(([item], transform([item[1]])))
                except RuntimeError as err:
                    skipped.append((item[0], f"DALI could not decode it ({str(err).splitlines()[0][:120]})"))
        for group, images in groups:
            values, order = classifier.scores(images).cpu().topk(k, dim=1)  # (B, k)
            for (path, _), v, o in zip(group, values, order, strict=True):
                top_k = [
                    (names[int(j)], float(torch.sigmoid(s)), float(s)) for s, j in zip(v, o, strict=True)
                ]
                done.append(Prediction(path, top_k))
        batch.clear()

    for path, data, why in read_images(paths):
        if data is None:
            skipped.append((path, why or "not an image"))
            continue
        batch.append((path, data))
        if len(batch) == batch_size:
            flush()
    flush()
    order = {str(p): i for i, p in enumerate(paths)}
    done.sort(key=lambda p: order.get(p.path, 0))
    return done, skipped


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class ZeroShotResult:
    mean_ap: float
    chance: float
    classes: int  # classes with a positive among the images
    images: int
    skipped: int  # samples that failed to decode
    multi_label: bool
    topk: dict[int, float] | None = None  # single-label sets: {1: top-1, 5: top-5}

    def summary(self) -> str:
        """One line, mAP first (the main job reads it)."""
        line = (
            f"mAP {100 * self.mean_ap:.2f}% over {self.classes} classes ({self.images} images); "
            f"chance {100 * self.chance:.2f}%"
        )
        if self.topk:
            line += "; " + ", ".join(f"top-{k} {100 * v:.2f}%" for k, v in sorted(self.topk.items()))
        if self.skipped:
            line += f"; {self.skipped} undecodable image(s) skipped"
        return line


def evaluate(
    classifier: ZeroShotClassifier,
    data: str | Path,
    *,
    batch_size: int = 32,
    num_threads: int = 2,
    progress: bool = True,
) -> ZeroShotResult:
    """Zero-shot mAP (and top-1/top-5 on a single-label set) over a class pack."""
    from engine.data import DataError, class_pack_loader
    from engine.errors import ConfigError
    from engine.metrics import MultiLabelAccumulator, TopKAccumulator

    data = Path(data)
    if not data.exists():
        raise ZeroShotError(
            f"--data {data}: no such folder (a class pack made by `catlip pack ... --classes`)"
        )
    device = "auto" if classifier.device.type == "cuda" else "cpu"
    try:
        loader, meta = class_pack_loader(
            data,
            batch_size,
            image_size=classifier.image_size,
            device=device,
            num_threads=num_threads,
            keys=False,
        )
    except (ConfigError, ValueError, FileNotFoundError, DataError) as err:
        raise ZeroShotError(f"--data {data}: {err}") from None
    names = list((meta.get("classes") or {}).get("names") or [])
    if names and names != classifier.names:
        raise ZeroShotError(
            f"--data {data} was packed with another class set ({len(names)} classes, e.g. "
            f"{', '.join(map(repr, names[:3]))}) than --classes ({len(classifier.names)} classes, e.g. "
            f"{', '.join(map(repr, classifier.names[:3]))}): pack it with this CLASSES.json"
        )
    if int(meta.get("num_classes", len(classifier.names))) != len(classifier.names):
        raise ZeroShotError(
            f"--data {data}: {meta.get('num_classes')} classes, --classes has {len(classifier.names)}"
        )
    multi = bool(meta.get("multi_label", True))
    acc = MultiLabelAccumulator(len(classifier.names))
    topk = None if multi else TopKAccumulator((1, 5))
    bar = progress_bar(meta.get("samples"), unit="image", desc="evaluate", enabled=progress)
    try:
        for batch in loader:
            valid = batch["valid"]  # (B,) False: padding or an image that failed to decode
            scores = classifier.scores(batch["image"]).cpu()  # (B, C)
            acc.add(scores, batch["labels"], valid)
            if topk is not None:
                topk.add(scores, batch["labels"][:, 0], valid & (batch["labels"][:, 0] >= 0))
            bar.update(int(valid.sum()))
    except DataError as err:
        raise ZeroShotError(f"--data {data}: {err}") from None
    finally:
        bar.close()
    result = acc.compute()
    counters = loader.counters()
    if result.classes == 0:
        raise ZeroShotError(
            f"--data {data}: none of its {result.images} decodable image(s) has a class label, so there is "
            "no average precision to compute"
        )
    return ZeroShotResult(
        mean_ap=result.mean_ap,
        chance=result.chance,
        classes=result.classes,
        images=result.images,
        skipped=counters["invalid_samples"] + counters["lost_samples"],
        multi_label=multi,
        topk=topk.compute() if topk is not None else None,
    )
