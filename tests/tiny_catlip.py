"""A tiny CatLIP run's checkpoint for the export and Python API tests: vit_tiny at 64 px over a
vocabulary of real WordNet synsets, every weight moved by noise (logits that differ per image and
per synset), as a stage-0 DeepSpeed checkpoint the way the trainer lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SIZE = 64
SYNSETS = [
    "person.n.01", "dog.n.01", "cat.n.01", "car.n.01", "bus.n.01", "train.n.01", "horse.n.01",
    "bird.n.01", "pizza.n.01", "table.n.02", "chair.n.01", "street.n.01", "tree.n.01", "sky.n.01",
    "water.n.01", "grass.n.01", "building.n.01", "plate.n.04", "food.n.01", "man.n.01", "woman.n.01",
    "giraffe.n.01", "elephant.n.01",
]  # fmt: skip
COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images" / "train2017"


def write_vocab(path: Path) -> Path:
    from catlip.classes import _synset_of
    from catlip.labels import Vocabulary, wnid

    wnids = [wnid(_synset_of(n).offset()) for n in SYNSETS]
    Vocabulary(wnids, SYNSETS, list(range(100, 100 - len(SYNSETS), -1))).save(path)
    return path


def write_checkpoint(
    run: Path, vocab: Path, *, seed: int = 0, objective: str = "catlip", labeler: bool = True
) -> Path:
    """``run``/checkpoints/step_00000007 with the module state, run config (``objective``) and
    vocabulary record (without its labeler, as written before the record, unless ``labeler``)."""
    from catlip.classes import vocab_sha256
    from catlip.models import CatLIPModel, vit_config

    torch.manual_seed(seed)
    model = CatLIPModel(vit_config("vit_tiny", image_size=SIZE), len(SYNSETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.head.weight.normal_(0, 0.5, generator=g)
    tag = run / "checkpoints" / "step_00000007"
    tag.mkdir(parents=True)
    vocab_meta = {
        "vocab": str(vocab),
        "vocab_size": len(SYNSETS),
        "vocab_sha256": vocab_sha256(vocab),
        "labeler": {"name": "catlip-1", "pos_filter": True},
    }
    if not labeler:
        del vocab_meta["labeler"]
    states = {
        "module": model.state_dict(),
        "ds_config": {"zero_optimization": {"stage": 0}},
        "config": {
            "model": {"name": "vit_tiny", "image_size": SIZE, "pos_interp": None},
            "objective": {"name": objective},
        },
        "vocab": vocab_meta,
        "step": 7,
    }
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    files = {p.name: p.stat().st_size for p in tag.iterdir()}
    (tag / "complete.json").write_text(json.dumps({"step": 7, "files": files}))
    (run / "checkpoints" / "latest").write_text(tag.name)
    return run


def coco128_images(n: int) -> list[Path]:
    return sorted(COCO128.glob("*.jpg"))[:n]
