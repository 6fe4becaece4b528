"""Training tasks: one object per objective, plugged into the trainer's loop.

An objective says what its task needs and nothing else:
  * ``build(vocab_size)``: the model, a plain ``nn.Module`` whose ``forward(*inputs)`` returns the
    loss (so DeepSpeed's engine calls it directly and ZeRO-3 gathers what it needs);
  * ``prepare(batch)``: host-side work on a loader batch (CLIP's caption tokenisation), run in the
    loader's prefetch thread (:class:`engine.data_prefetch.Prefetcher`), never in the step;
  * ``inputs(batch, device, dtype)``: the batch as the model's forward arguments on the device;
  * ``evaluate(model, loader, device, dtype)``: held-out metrics, or None when the task has none.

``OBJECTIVES`` maps ``model.objective`` names to them: catlip (the paper's multi-label BCE over
synsets) and the contrastive baselines clip and siglip. A new task is one new class here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from engine.config import ConfigError, TrainConfig
from engine.metrics import MultiLabelAccumulator, image_fingerprint


class Objective:
    """The interface, with the defaults most tasks share."""

    name = ""
    captions = False  # the loader must return each sample's caption
    has_eval = False  # ``evaluate`` reads the val loader

    def __init__(self, cfg: TrainConfig, vit_cfg: Any) -> None:
        self.cfg, self.vit_cfg = cfg, vit_cfg

    def build(self, vocab_size: int | None) -> nn.Module:
        raise NotImplementedError

    def prepare(self, batch: dict) -> dict:
        return batch

    @property
    def host_work(self) -> bool:
        """Whether ``prepare`` does work worth a prefetch thread."""
        return type(self).prepare is not Objective.prepare

    def inputs(self, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Iterable[dict], device: torch.device, dtype: torch.dtype):
        return None


def _images(batch: dict, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return batch["image"].to(device, non_blocking=True).to(dtype)


class CatLIP(Objective):
    """Multi-label sigmoid BCE over the synset vocabulary, from sparse labels (the paper)."""

    name = "catlip"
    has_eval = True

    def build(self, vocab_size: int | None) -> nn.Module:
        from catlip.models import CatLIPModel

        if vocab_size is None:
            raise ConfigError("vocab_size is needed to build the CatLIP head")
        m = self.cfg.model
        return CatLIPModel(
            self.vit_cfg,
            vocab_size,
            attn_impl=m.attn_impl,
            loss_impl=m.loss_impl,
            label_smoothing=m.label_smoothing,
        )

    def inputs(self, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple:
        """(images, labels, sample weights): samples with ``valid=False`` (an image that failed to
        decode, or the loader's padding) weigh 0 in the loss."""
        labels = batch["labels"].to(device, non_blocking=True)
        valid = batch.get("valid")
        weight = None if valid is None else valid.to(device, torch.float32)
        return _images(batch, device, dtype), labels, weight

    def evaluate(self, model: nn.Module, loader: Iterable[dict], device: torch.device, dtype: torch.dtype):
        """Held-out mAP over the vocabulary, per image (the union of its captions' labels)."""
        acc: MultiLabelAccumulator | None = None
        with torch.no_grad():
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                fingerprint = image_fingerprint(images)  # before the cast: bf16 could merge images
                logits = model(images.to(dtype)).float()  # (B, V)
                acc = acc or MultiLabelAccumulator(logits.shape[1])
                acc.add(logits, batch["labels"], batch.get("valid"), fingerprint)
        if acc is None:
            raise ConfigError("the validation shards gave this rank no batch")
        return acc.compute()


class Contrastive(Objective):
    """CLIP (InfoNCE) or SigLIP (sigmoid) over image-caption pairs, embeddings all-gathered.

    The same image tower preset (and resolution) as CatLIP, open_clip's default text tower; the
    loss module's ``comm`` records the bytes exchanged. Images that failed to decode stay in the
    batch as zero images: InfoNCE has no per-sample weight, and dropping rows would unbalance the
    all-gather across ranks.
    """

    captions = True

    def build(self, vocab_size: int | None) -> nn.Module:
        from catlip.clip import CLIPModel, clip_config
        from catlip.contrastive import ContrastiveLoss, SigLipLoss

        m = self.cfg.model
        siglip = self.name == "siglip"
        clip_cfg = clip_config(f"clip_{m.name}", siglip=siglip, vision=self.vit_cfg)
        if siglip:
            loss = SigLipLoss(dist_impl=m.siglip_dist_impl)
        else:
            loss = ContrastiveLoss(local_loss=m.local_loss, gather_with_grad=m.gather_with_grad)
        return ContrastiveModel(CLIPModel(clip_cfg, attn_impl=m.attn_impl), loss)

    def prepare(self, batch: dict) -> dict:
        from catlip.tokenizer import tokenize

        return {**batch, "tokens": tokenize(batch["caption"])}  # (B, 77) int64, host-side

    def inputs(self, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple:
        tokens = batch["tokens"] if "tokens" in batch else self.prepare(batch)["tokens"]
        return _images(batch, device, dtype), tokens.to(device, non_blocking=True)


class CLIP(Contrastive):
    name = "clip"


class SigLIP(Contrastive):
    name = "siglip"


class ContrastiveModel(nn.Module):
    """A CLIP model and its loss as one module: ``forward(images, tokens)`` -> loss."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        # DeepSpeed 0.19 broadcasts parameters as byte views, which 0-dim tensors refuse:
        # hold the temperature (and SigLIP's bias) as shape (1,); the losses broadcast it.
        for name in ("logit_scale", "logit_bias"):
            p = getattr(model, name)
            if p is not None and p.dim() == 0:
                setattr(model, name, nn.Parameter(p.detach().reshape(1)))
        self.loss = loss

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss(*self.model(images, tokens))


OBJECTIVES: dict[str, Callable[[TrainConfig, Any], Objective]] = {
    "catlip": CatLIP,
    "clip": CLIP,
    "siglip": SigLIP,
}


def make_objective(cfg: TrainConfig, vit_cfg: Any) -> Objective:
    name = cfg.model.objective
    if name not in OBJECTIVES:
        raise ConfigError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](cfg, vit_cfg)
