"""The Python front door: a CatLIP model with its eval transform and label names, zero-shot
classification over class names, and tagging with synsets.

    import catlip
    from PIL import Image

    model, transform, labels = catlip.create_model_and_transforms("run/")  # or an export
    x = transform(Image.open("dog.jpg"))            # (3, S, S) float32
    logits = model(x[None])                         # (1, V): one per synset, labels[v] = "dog.n.01"
    catlip.tag(model, "dog.jpg", top_k=5)           # [("dog.n.01", 0.93), ...]: sigmoid(logit)
    classify = catlip.zero_shot_classifier(model, ["dog", "cat", "fire truck"])
    classify(x[None])                               # (1, 3) class scores: max logit over its synsets

The model is :class:`catlip.models.CatLIPModel` (eval mode, fp32, on ``device``), with what this
module needs in ``model.catlip_info`` (:class:`ModelInfo`). The transform is the trainer's eval
transform (engine/data/pipeline.py ``eval_resize``) on PIL images: the shorter side resized to the
model's resolution (bilinear, antialiased), the centre square, CLIP's mean and std, with
torchvision's sizes (``Resize(S)``, ``CenterCrop(S)``); it is timm's ``create_transform`` of an
export folder's config. Class names map onto synsets as ``catlip classes`` maps them
(:mod:`catlip.classes`), and a class scores as ``catlip predict`` scores it (:mod:`engine.zeroshot`).

Loading a DeepSpeed checkpoint imports DeepSpeed; a ``catlip export`` file or folder needs only
torch and safetensors (and NLTK's WordNet for :func:`zero_shot_classifier`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # engine.data.pipeline's, the trainer's
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ApiError(ValueError):
    """A model source or an input this module cannot use; the message says which and why."""


# ------------------------------------------------------------------------------------ transform
class EvalTransform:
    """PIL image (or a path) -> (3, S, S) float32: the eval transform, as timm's
    ``transforms_imagenet_eval`` with ``crop_mode="center"``: resize the shorter side to
    ``floor(S / crop_pct)`` (the longer to ``int(that * long / short)``), cut the centred S x S
    window at ``round((side - S) / 2)``, scale to [0, 1], normalise. EXIF orientation is applied
    first, as the trainer's decoder does (timm's loader does not)."""

    def __init__(
        self,
        image_size: int,
        *,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ) -> None:
        from PIL import Image

        modes = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
        if interpolation not in modes:
            raise ApiError(f"interpolation {interpolation!r}: one of {', '.join(modes)}")
        self.image_size, self.crop_pct, self.interpolation = image_size, crop_pct, interpolation
        self._resample = modes[interpolation]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(image_size={self.image_size}, crop_pct={self.crop_pct}, "
            f"interpolation={self.interpolation!r}, mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()})"
        )

    def __call__(self, image: Any) -> torch.Tensor:
        import numpy as np
        from PIL import Image, ImageOps

        if isinstance(image, str | Path):
            with Image.open(image) as f:
                image = ImageOps.exif_transpose(f).convert("RGB")
        else:
            image = ImageOps.exif_transpose(image).convert("RGB")
        size = self.image_size
        scale = math.floor(size / self.crop_pct)
        w, h = image.size
        nw, nh = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
        image = image.resize((nw, nh), self._resample)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------------------ the model
@dataclass
class ModelInfo:
    """What a loaded model carries for this module: its source, the synset of each head row,
    the vocabulary TSV (None where it is not at hand) and the eval transform."""

    source: Path
    labels: list[str]
    vocab_path: Path | None
    transform: EvalTransform


def create_model_and_transforms(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    vocab: str | Path | None = None,
    ema: bool = False,
) -> tuple[torch.nn.Module, EvalTransform, list[str]]:
    """(model, eval transform, label names) of a CatLIP run.

    ``source``: a DeepSpeed checkpoint (a tag directory, its ``checkpoints/`` folder or the run's
    out_dir), a ``catlip export`` safetensors file (either format), or a ``catlip export --out DIR``
    folder. The model maps (B, 3, S, S) normalised images to (B, V) logits, one per synset of the
    vocabulary, ``labels[v]`` naming row v ("dog.n.01"). ``vocab``: the run's vocab.tsv where the
    path the checkpoint recorded is gone (an export folder carries its own). ``ema``: a checkpoint
    directory's EMA weights.

    >>> model, transform, labels = create_model_and_transforms(export)  # doctest: +SKIP
    >>> model(transform(image)[None]).shape  # doctest: +SKIP
    torch.Size([1, 23])
    """
    source = Path(source)
    if not source.exists():
        raise ApiError(
            f"{source}: no such file or directory (a checkpoint, or a `catlip export` file or folder)"
        )
    if source.is_dir() and (source / "config.json").is_file() and (source / "model.safetensors").is_file():
        model, info = _from_folder(source)
    else:
        model, info = _from_checkpoint(source, vocab, ema)
    model.catlip_info = info
    return model.to(device).eval(), info.transform, info.labels


def _from_folder(folder: Path) -> tuple[torch.nn.Module, ModelInfo]:
    from engine.zeroshot import ZeroShotError, load_checkpoint, load_model

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ApiError(f"{folder / 'config.json'}: not readable JSON ({err})") from None
    if "catlip_config" not in config or "label_names" not in config:
        raise ApiError(
            f"{folder / 'config.json'}: no catlip_config and label_names (not a `catlip export --out DIR` folder)"
        )
    try:
        model = load_model(*load_checkpoint(folder), folder)
    except ZeroShotError as err:
        raise ApiError(str(err)) from None
    cfg = config.get("pretrained_cfg") or {}
    transform = EvalTransform(
        int(cfg.get("input_size", [3, model.cfg.image_size])[-1]),
        mean=cfg.get("mean", CLIP_MEAN),
        std=cfg.get("std", CLIP_STD),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
    )
    vocab = folder / "vocab.tsv"
    info = ModelInfo(folder, list(config["label_names"]), vocab if vocab.is_file() else None, transform)
    return model, info


def _from_checkpoint(source: Path, vocab: str | Path | None, ema: bool) -> tuple[torch.nn.Module, ModelInfo]:
    from catlip.convert import InteropError, load_encoder_state
    from catlip.labels import Vocabulary
    from engine.checkpoint import CheckpointError
    from engine.export import run_vocabulary
    from engine.zeroshot import ZeroShotError, load_checkpoint, load_model

    try:
        state, meta = load_checkpoint(source, ema=ema)
        if meta.get("format") == "timm":  # `catlip export --format timm`: timm's names
            state = load_encoder_state(state, log=lambda _: None)
        model = load_model(state, meta, source)
        vocab_path = run_vocabulary(meta, vocab)
    except (ZeroShotError, InteropError) as err:
        raise ApiError(str(err)) from None
    except CheckpointError as err:
        raise ApiError(f"{source}: {err}") from None
    labels = Vocabulary.load(vocab_path).synsets
    if len(labels) != model.head.out_features:
        raise ApiError(f"{vocab_path}: {len(labels)} synsets for a head of {model.head.out_features}")
    return model, ModelInfo(source, labels, vocab_path, EvalTransform(model.cfg.image_size))


def _info(model: torch.nn.Module) -> ModelInfo:
    info = getattr(model, "catlip_info", None)
    if info is None:
        raise ApiError("the model was not made by catlip.create_model_and_transforms (it has no catlip_info)")
    return info


# ------------------------------------------------------------------------------------ reading it out
def zero_shot_classifier(
    model: torch.nn.Module, class_names: Sequence[str], *, overrides: dict[str, str] | None = None
):
    """A classifier over ``class_names``: ``classifier(images)`` maps (B, 3, S, S) normalised images
    to (B, C) class scores (logits; a class's score is the max over the head rows of its synsets,
    as ``catlip predict``); ``classifier.names`` are the classes in order, ``classifier.class_map``
    says which synsets and rows each reads. Names map onto synsets as ``catlip classes --names``
    maps them; ``overrides``: name -> wnid or synset name ("tie": "necktie.n.01"). A name that maps
    to no synset with a row is an error naming it.

    >>> classify = zero_shot_classifier(model, ["dog", "cat"])  # doctest: +SKIP
    >>> classify(transform(image)[None]).shape  # doctest: +SKIP
    torch.Size([1, 2])
    """
    from catlip.classes import ClassMap, ClassMapper, _synset_of, _vocab_labeler, vocab_sha256
    from catlip.labels import Vocabulary, wnid
    from engine.zeroshot import ZeroShotClassifier

    info = _info(model)
    if isinstance(class_names, str) or not class_names:
        raise ApiError("class_names: a non-empty list of names")
    if info.vocab_path is not None:
        vocab = Vocabulary.load(info.vocab_path)
        labeler = _vocab_labeler(info.vocab_path)
        vocab_meta = {
            "path": str(info.vocab_path),
            "size": len(vocab),
            "sha256": vocab_sha256(info.vocab_path),
        }
    else:  # the label names alone: their wnids from WordNet, the first-sense rules
        vocab = Vocabulary(
            [wnid(_synset_of(n).offset()) for n in info.labels], info.labels, [0] * len(info.labels)
        )
        labeler, vocab_meta = None, {"path": "", "size": len(vocab), "sha256": ""}
    classes, unmapped = ClassMapper(vocab, overrides=overrides, labeler=labeler).map_names(list(class_names))
    if unmapped:
        raise ApiError(
            f"{len(unmapped)} class name(s) map to no WordNet noun synset with a row in the model's vocabulary: "
            f"{', '.join(map(repr, unmapped[:20]))}; give overrides={{name: wnid}}"
        )
    class_map = ClassMap(classes, vocab_meta, {"path": "", "kind": "names"}, [])
    return ZeroShotClassifier(model, class_map, next(model.parameters()).device)


@torch.no_grad()
def tag(model: torch.nn.Module, image: Any, top_k: int = 5) -> list[tuple[str, float]]:
    """The ``top_k`` synsets of one image (a PIL image or a path), best first, as (synset name,
    probability = sigmoid(logit)): the head's multi-label reading, one independent probability per
    synset.

    >>> tag(model, "dog.jpg", top_k=2)  # doctest: +SKIP
    [('dog.n.01', 0.93), ('grass.n.01', 0.41)]
    """
    info = _info(model)
    if top_k < 1:
        raise ApiError(f"top_k must be >= 1, got {top_k}")
    x = info.transform(image)[None].to(next(model.parameters()).device)  # (1, 3, S, S)
    probs = torch.sigmoid(model(x).float())[0]  # (V,)
    values, rows = probs.topk(min(top_k, probs.numel()))
    return [(info.labels[int(r)], float(v)) for v, r in zip(values, rows, strict=True)]
