"""Training tasks: one object per objective, plugged into the trainer's loop.

An objective says what its task needs and nothing else:
  * ``build(vocab_size)``: the model, a plain ``nn.Module`` whose ``forward(*inputs)`` returns the
    loss (so DeepSpeed's engine calls it directly and ZeRO-3 gathers what it needs);
  * ``prepare(batch)``: host-side work on a loader batch (CLIP's caption tokenisation), run in the
    loader's prefetch thread (:class:`engine.prefetch.Prefetcher`), never in the step;
  * ``inputs(batch, device, dtype)``: the batch as the model's forward arguments on the device;
  * ``evaluate(model, loader, device, dtype)``: held-out metrics, or None when the task has none;
    ``metrics(result)`` turns them into the logged dict, ``summary(metrics)`` into one line;
  * ``bind(dataset_meta)`` (before ``build``): what the task reads from the train shards' dataset.json;
  * ``train_batches(loader, model, trainer)`` (after the engine is built): what the loop iterates,
    by default the loader itself (a probe's feature cache replaces it).

``OBJECTIVES`` maps ``model.objective`` names to them: catlip (the paper's multi-label BCE over
synsets), the contrastive baselines clip and siglip, and the transfer tasks on a class pack
(``catlip pack ... --classes``): finetune (the whole network, from ``model.init_from``) and probe
(the pre-trained tower frozen, only the classifier trained). A new task is one new class here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from engine.config import ConfigError, TrainConfig
from engine.metrics import MultiLabelAccumulator, TopKAccumulator, image_fingerprint


class Objective:
    """The interface, with the defaults most tasks share."""

    name = ""
    captions = False  # the loader must return each sample's caption
    has_eval = False  # ``evaluate`` reads the val loader

    def __init__(self, cfg: TrainConfig, vit_cfg: Any) -> None:
        self.cfg, self.vit_cfg = cfg, vit_cfg
        self.report: list[str] = []  # lines for the run's log: what building the model did

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

    def bind(self, dataset_meta: dict[str, Any]) -> None:
        """What the task needs from the train shards' dataset.json (before ``build``)."""

    def train_batches(self, loader: Any, model: nn.Module, trainer: Any) -> Any:
        """The re-iterable the loop trains on (resumable: ``state_dict``/``load_state_dict``)."""
        return loader

    def metrics(self, result: Any) -> dict[str, Any]:
        """``evaluate``'s result as the logged dict (CatLIP's EvalResult by default)."""
        out = {"val_mAP": result.mean_ap, "chance_mAP": result.chance, **asdict(result)}
        del out["mean_ap"], out["chance"]
        return out

    def summary(self, m: dict[str, Any]) -> str:
        return (
            f"held-out mAP {100 * m['val_mAP']:.2f}% vs chance {100 * m['chance_mAP']:.2f}% "
            f"({m['classes']} synsets, {m['images']} images, {m['samples']} captions)"
        )


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


class Finetune(Objective):
    """Fine-tuning on a class pack: the whole ViT and a new classifier over its C classes.

    The loss follows the pack's dataset.json ``multi_label``: sigmoid BCE over the classes (COCO,
    YOLO sets; corenet's batch_mean), else softmax cross-entropy with ``model.label_smoothing``
    (ImageFolder sets). The tower starts from ``model.init_from`` (engine/pretrained.py), the
    classifier from ``model.classifier_init``: random (truncated normal, std 0.02, as corenet's
    re-initialised classifier), zero, or synset (the pre-trained head's rows of each class's
    synsets, their mean when several map to one class). Held-out metric: mAP over the classes
    (multi-label; each sample is one image) or top-1 / top-5 accuracy, each next to chance.
    """

    name = "finetune"
    has_eval = True
    freeze_encoder = False

    def __init__(self, cfg: TrainConfig, vit_cfg: Any) -> None:
        super().__init__(cfg, vit_cfg)
        self.meta: dict[str, Any] = {}
        self.multi_label = True
        self.num_classes = 0

    def bind(self, dataset_meta: dict[str, Any]) -> None:
        self.meta = dataset_meta
        self.multi_label = bool(dataset_meta.get("multi_label", True))  # a caption pack: multi-label

    def build(self, vocab_size: int | None) -> nn.Module:
        from catlip.models import ImageClassifier

        if vocab_size is None:
            raise ConfigError("the number of classes is needed to build the classifier")
        m = self.cfg.model
        self.num_classes = int(vocab_size)
        model = ImageClassifier(
            self.vit_cfg,
            self.num_classes,
            multi_label=self.multi_label,
            label_smoothing=m.label_smoothing,
            attn_impl=m.attn_impl,
            loss_impl=m.loss_impl,
            freeze_encoder=self.freeze_encoder,
        )
        self.initialise(model)
        return model

    def initialise(self, model: nn.Module) -> None:
        from engine.pretrained import load_backbone, load_pretrained, read_class_map, synset_classifier

        m = self.cfg.model
        loss = (
            "BCE (multi-label)" if self.multi_label else f"cross-entropy, label smoothing {m.label_smoothing}"
        )
        self.report = [f"{self.name}: {self.num_classes} classes, {loss}"]
        pre = None
        if m.init_from:
            pre = load_pretrained(m.init_from, image_size=model.encoder.cfg.pos_image_size)
            n = load_backbone(model, pre, m.name)
            note = f"; {pre.note}" if pre.note else ""
            self.report.append(f"{self.name}: backbone from {pre.source} ({pre.kind}, {n} tensors{note})")
        else:
            self.report.append(f"{self.name}: no model.init_from: the backbone starts from random weights")
        head = model.head
        with torch.no_grad():
            if m.classifier_init == "zero":
                head.weight.zero_()
                head.bias.zero_()
            elif m.classifier_init == "synset":
                path, classes = read_class_map(self.meta, self.cfg.data.train)
                weight, bias = synset_classifier(pre, classes, path, self.num_classes)
                head.weight.copy_(weight)
                head.bias.copy_(bias)
                rows = sum(len(c.get("rows") or []) for c in classes.get("classes", []))
                self.report.append(
                    f"{self.name}: classifier from {rows} head rows of {path} (mean per class)"
                )
        if m.classifier_init != "synset":
            self.report.append(f"{self.name}: classifier init {m.classifier_init}")

    def inputs(self, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple:
        labels = batch["labels"].to(device, non_blocking=True)
        valid = batch.get("valid")
        weight = None if valid is None else valid.to(device, torch.float32)
        return _images(batch, device, dtype), labels, weight

    def evaluate(self, model: nn.Module, loader: Iterable[dict], device: torch.device, dtype: torch.dtype):
        acc: Any = MultiLabelAccumulator(self.num_classes) if self.multi_label else TopKAccumulator((1, 5))
        seen = 0
        with torch.no_grad():
            for batch in loader:
                logits = model(_images(batch, device, dtype)).float()  # (B, C)
                valid = batch.get("valid")
                keep = torch.ones(len(logits), dtype=torch.bool) if valid is None else valid.bool().cpu()
                if self.multi_label:
                    acc.add(logits, batch["labels"], keep)  # each sample is its own image
                else:
                    target = batch["labels"][:, 0]
                    acc.add(logits, target, keep & (target >= 0).cpu())
                seen += 1
        if not seen:
            raise ConfigError("the validation shards gave this rank no batch")
        if self.multi_label:
            r = acc.compute()
            return {"val_mAP": r.mean_ap, "chance_mAP": r.chance, "classes": r.classes, "images": r.images}
        top = acc.compute()
        k5 = min(5, self.num_classes)
        return {
            "val_top1": top[1], "val_top5": top[5], "chance_top1": 1 / self.num_classes,
            "chance_top5": k5 / self.num_classes, "classes": self.num_classes, "images": acc.total,
        }  # fmt: skip

    def metrics(self, result: Any) -> dict[str, Any]:
        return dict(result)

    def summary(self, m: dict[str, Any]) -> str:
        if "val_mAP" in m:
            return (
                f"held-out mAP {100 * m['val_mAP']:.2f}% vs chance {100 * m['chance_mAP']:.2f}% "
                f"({m['classes']} classes with a positive, {m['images']} images)"
            )
        return (
            f"held-out top-1 {100 * m['val_top1']:.2f}% vs chance {100 * m['chance_top1']:.2f}%, top-5 "
            f"{100 * m['val_top5']:.2f}% vs chance {100 * m['chance_top5']:.2f}% "
            f"({m['classes']} classes, {m['images']} images)"
        )


class Probe(Finetune):
    """A linear probe: the pre-trained tower frozen (no gradients, bit-identical after training),
    only the classifier trained; losses, initialisation and metrics as :class:`Finetune`.

    ``data.cache_features``: the tower's features of every train image are computed once, from
    the un-augmented images (evaluation preprocessing: resize, center crop; no random crop or
    flip, so each image has one feature vector), and the loop trains on them (see
    :class:`CachedFeatures`), and evaluations after the first reuse the held-out images'
    features. Without it, every step runs the frozen tower on augmented crops.
    """

    name = "probe"
    freeze_encoder = True

    def __init__(self, cfg: TrainConfig, vit_cfg: Any) -> None:
        super().__init__(cfg, vit_cfg)
        self._val_features: list[dict] | None = None

    def evaluate(self, model: nn.Module, loader: Iterable[dict], device: torch.device, dtype: torch.dtype):
        """As :class:`Finetune`'s; with ``data.cache_features`` the frozen tower's features of the
        held-out images (a deterministic transform) are computed at the first evaluation and the
        later ones run the classifier alone."""
        if not self.cfg.data.cache_features:
            return super().evaluate(model, loader, device, dtype)
        if self._val_features is None:
            module = getattr(model, "module", model)
            with torch.no_grad():
                self._val_features = [
                    {**batch, "image": module.features(_images(batch, device, dtype))} for batch in loader
                ]
        return super().evaluate(model, self._val_features, device, dtype)

    def train_batches(self, loader: Any, model: nn.Module, trainer: Any) -> Any:
        if not self.cfg.data.cache_features:
            return loader
        source = loader
        if trainer.loaders_from_shards:  # the augmented train loader is replaced by an evaluation one
            from engine.data import loaders_from_config

            cfg = copy.deepcopy(self.cfg)
            cfg.data.val = cfg.data.train
            _, source, _ = loaders_from_config(
                cfg, trainer.rank, trainer.world_size, self.vit_cfg.image_size, captions=False
            )
        return CachedFeatures(
            source, model, self.cfg.data.batch_size, seed=self.cfg.run.seed, rank=trainer.rank,
            device=trainer.device, dtype=trainer.dtype,
        )  # fmt: skip


class CachedFeatures:
    """A probe's training batches from features computed once by the frozen tower.

    On first use (after a resume has restored the weights, so the tower is the trained run's)
    every batch of ``source`` (this rank's un-augmented train images) goes through the tower
    once; samples marked ``valid=False`` (padding, undecodable images) are dropped. Each epoch is
    a permutation of this rank's N cached samples, drawn from (seed, rank, epoch) alone, cut into
    N // batch_size full batches; the position is (epoch, batch), so a resumed run sees the
    batches the uninterrupted one would have. The cache is not saved: it is recomputed on resume
    from the same frozen weights and images, which gives the same features.
    """

    def __init__(
        self,
        source: Iterable[dict],
        model: nn.Module,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.source, self.model, self.batch_size = source, model, batch_size
        self.seed, self.rank, self.device, self.dtype = seed, rank, device, dtype
        self.features: torch.Tensor | None = None  # (N, width)
        self.labels: torch.Tensor | None = None  # (N, L)
        self.epoch, self.pos = 0, 0

    def _ensure(self) -> None:
        if self.features is not None:
            return
        feats, labels = [], []
        module = getattr(self.model, "module", self.model)
        with torch.no_grad():
            for batch in self.source:
                keep = batch.get("valid")
                keep = (
                    torch.ones(len(batch["image"]), dtype=torch.bool) if keep is None else keep.bool().cpu()
                )
                if not keep.any():
                    continue
                images = batch["image"][keep.to(batch["image"].device)]
                feats.append(module.features(images.to(self.device).to(self.dtype)).float())
                labels.append(batch["labels"][keep])
        if not feats:
            raise ConfigError("data.cache_features: the train shards gave this rank no valid image")
        width = max(t.shape[1] for t in labels)
        self.features = torch.cat(feats)  # (N, width) on the device
        self.labels = torch.cat([nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in labels])

    def __len__(self) -> int:
        self._ensure()
        return len(self.features) // self.batch_size

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_003 + self.epoch)
        return torch.randperm(len(self.features), generator=g)

    def __iter__(self) -> Iterator[dict]:
        n = len(self)
        order = self._order()
        while self.pos < n:
            idx = order[self.pos * self.batch_size : (self.pos + 1) * self.batch_size]
            self.pos += 1
            yield {
                "image": self.features[idx.to(self.features.device)].to(self.dtype),  # (B, width)
                "labels": self.labels[idx],
                "valid": torch.ones(len(idx), dtype=torch.bool),
            }
        self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"cached_features": True, "epoch": self.epoch, "position": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("cached_features"):
            raise ConfigError(
                "the checkpoint's data position is not a feature cache's (data.cache_features changed)"
            )
        self.epoch, self.pos = int(state["epoch"]), int(state["position"])

    def counters(self) -> dict[str, int]:
        return self.source.counters() if hasattr(self.source, "counters") else {}


OBJECTIVES: dict[str, Callable[[TrainConfig, Any], Objective]] = {
    "catlip": CatLIP,
    "clip": CLIP,
    "siglip": SigLIP,
    "finetune": Finetune,
    "probe": Probe,
}


def make_objective(cfg: TrainConfig, vit_cfg: Any) -> Objective:
    name = cfg.model.objective
    if name not in OBJECTIVES:
        raise ConfigError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](cfg, vit_cfg)
