"""The trainer's parts, each against an independent computation: the CatLIP objective's valid
mask, per-image evaluation (label padding, caption groups, class-sharded over ranks), the
contrastive step against CLIPModel + ContrastiveLoss, the fused Triton loss through the config,
NaN detection at log steps, and the prefetch thread's exact resume position."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks
from test_train import B, V, caption_loader, rank_loader, tiny_cfg, tiny_model

from engine.data import TensorLoader
from engine.metrics import MultiLabelAccumulator, average_precision


# ------------------------------------------------------------------------------ invalid samples
def _with_invalid(seed: int = 3) -> tuple[dict, dict]:
    """A batch of B + 2 samples whose samples 1 and 4 are invalid, and the same batch without them."""
    g = torch.Generator().manual_seed(seed)
    n = B + 2
    labels = torch.full((n, 4), -1, dtype=torch.int64)
    for i in range(n):
        labels[i, : 1 + i % 3] = torch.randperm(V, generator=g)[: 1 + i % 3]
    batch = {"image": torch.randn(n, 3, 16, 16, generator=g), "labels": labels}
    valid = torch.ones(n, dtype=torch.bool)
    valid[[1, 4]] = False
    kept = {k: v[valid] for k, v in batch.items()}
    return {**batch, "valid": valid}, kept


def test_invalid_samples_are_excluded_from_loss_and_gradients():
    """Loss and gradients of a batch with ``valid=False`` samples equal those of the batch without
    them, up to batch_mean's divisor (the batch size, B + 2 against B: corenet's reduction)."""
    from engine.config import from_dict
    from engine.objectives import CatLIP

    objective = CatLIP(from_dict({"model": {"name": "vit_tiny"}}), None)
    with_bad, without = _with_invalid()
    grads = []
    for batch in (with_bad, without):
        model = tiny_model()
        loss = model(*objective.inputs(batch, torch.device("cpu"), torch.float32)) * len(batch["image"])
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ evaluation
def _eval_batches(seed: int = 11) -> list[dict]:
    """Three batches over 7 images: images 0 and 3 appear twice (two captions, other labels), one
    sample is invalid (a zero image that must not count), labels padded with -1 to width 5.
    Class 0 is nobody's label: a padding entry read as a label would make it a positive."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(7, 3, 16, 16, generator=g)
    rows = [  # (image, labels)
        (0, [1, 2]),
        (1, [3]),
        (2, [2, 5, 7]),
        (0, [4]),
        (3, [6]),
        (4, [1, 8]),
        (3, [2]),
        (5, [9, 3]),
        (6, []),
    ]
    batches = []
    for start in range(0, len(rows), 3):
        part = rows[start : start + 3]
        labels = torch.full((len(part), 5), -1, dtype=torch.int64)
        for i, (_, lab) in enumerate(part):
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.int64)
        valid = torch.ones(len(part), dtype=torch.bool)
        images = torch.stack([pixels[img] for img, _ in part])
        if start == 6:  # the last batch's first sample failed to decode
            valid[0] = False
            images[0] = 0.0
        batches.append({"image": images, "labels": labels, "valid": valid})
    return batches


class _Scorer(torch.nn.Module):
    """A fixed linear model over pixels: (B, 3, 16, 16) -> (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(3 * 16 * 16, 10, generator=g)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.w


def _expected_per_image() -> tuple[float, float, int, int]:
    """The dense per-image computation: one score row per image, union of its captions' labels."""
    scores, targets, seen = {}, {}, []
    model = _Scorer()
    for batch in _eval_batches():
        logits = model(batch["image"])
        for i in range(len(logits)):
            if not batch["valid"][i]:
                continue
            key = batch["image"][i].numpy().tobytes()
            if key not in scores:
                seen.append(key)
                scores[key], targets[key] = logits[i].numpy(), np.zeros(10, dtype=bool)
            for lab in batch["labels"][i].tolist():
                if lab >= 0:
                    targets[key][lab] = True
    m_ap, chance, classes = average_precision(
        np.stack([scores[k] for k in seen]), np.stack([targets[k] for k in seen])
    )
    return m_ap, chance, classes, len(seen)


def _evaluate(batches: list[dict]):
    from engine.config import from_dict
    from engine.objectives import CatLIP

    objective = CatLIP(from_dict({"model": {"name": "vit_tiny"}}), None)
    return objective.evaluate(_Scorer(), batches, torch.device("cpu"), torch.float32)


def test_evaluation_is_per_image_and_ignores_padding_and_invalid_samples():
    m_ap, chance, classes, images = _expected_per_image()
    result = _evaluate(_eval_batches())
    assert (result.images, result.samples, result.classes) == (images, 8, classes) == (7, 8, 9)
    assert result.mean_ap == pytest.approx(m_ap, abs=1e-12)
    assert result.chance == pytest.approx(chance, abs=1e-12)


def _sharded_eval(rank: int) -> dict:
    from dataclasses import asdict

    from engine.distributed import init_distributed

    init_distributed()
    batches = _eval_batches()
    return asdict(_evaluate(batches[rank::2]))  # rank 0: batches 0 and 2; rank 1: batch 1


@pytest.mark.distributed
def test_evaluation_sharded_over_two_ranks_equals_one_process():
    """Classes sharded over 2 gloo ranks, images of one caption group split across the ranks."""
    m_ap, chance, classes, images = _expected_per_image()
    results = run_ranks(_sharded_eval, world=2)
    for r in results:
        assert (r["images"], r["samples"], r["classes"]) == (images, 8, classes)
        assert r["mean_ap"] == pytest.approx(m_ap, abs=1e-12)
        assert r["chance"] == pytest.approx(chance, abs=1e-12)


def test_accumulator_without_fingerprints_counts_samples_as_images():
    acc = MultiLabelAccumulator(3)
    acc.add(torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]), torch.tensor([[0, -1], [1, 0]]))
    r = acc.compute()
    # class 0: positives ranked 1 and 2 -> AP 1; class 1: ranked 1 -> AP 1; class 2: no positive
    assert (r.images, r.classes, r.mean_ap, r.chance) == (2, 2, 1.0, 0.75)


# ------------------------------------------------------------------------------ through the trainer
def _direct_clip_losses(steps: int, lr: float) -> list[float]:
    """CLIPModel + ContrastiveLoss + AdamW in plain PyTorch, one process."""
    from catlip.clip import CLIPModel, clip_config
    from catlip.contrastive import ContrastiveLoss
    from catlip.models import vit_config
    from catlip.param_groups import param_groups
    from catlip.tokenizer import tokenize
    from engine.parallel import lr_multiplier

    torch.manual_seed(0)  # the trainer seeds run.seed (0) before building the model
    vit = vit_config("vit_tiny", image_size=16)
    model = CLIPModel(clip_config("clip_vit_tiny", vision=vit))
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    loss_fn = ContrastiveLoss(local_loss=True, gather_with_grad=True)
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, 2, steps, 1e-5 / lr))
    losses = []
    for batch in caption_loader(0, 1, steps).batches:
        loss = loss_fn(*model(batch["image"], tokenize(batch["caption"])))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _through_trainer(rank: int, tmp: str) -> dict:
    from engine.train import Trainer, TrainingDiverged

    out = {}
    cfg = tiny_cfg(Path(tmp) / "clip", 2, steps=3)
    cfg.objective.name = "clip"
    trainer = Trainer(cfg, train_loader=caption_loader(rank, 1, 3))
    out["clip"] = [e.loss for e in trainer.fit()]
    trainer.close()
    for impl in ("torch", "triton"):  # the fused head chosen by the config, not by a model_fn
        cfg = tiny_cfg(Path(tmp) / impl, 2, steps=3)
        cfg.model.loss_impl = impl
        trainer = Trainer(cfg, vocab_size=V, train_loader=rank_loader(rank, 1, 3))
        out[impl] = [e.loss for e in trainer.fit()]
        out[f"{impl}_head"] = trainer.engine.module.head.loss_impl
        trainer.close()
    # a NaN at step 2 is flagged on the device and raised at the next log step (3), naming step 2,
    # and the checkpoint due at step 4 is never written
    bad = rank_loader(rank, 1, 6)
    bad.batches[1] = {**bad.batches[1], "image": torch.full_like(bad.batches[1]["image"], math.nan)}
    trainer = Trainer(
        tiny_cfg(Path(tmp) / "nan", 2, steps=6, log_every=3, ckpt_every=4), train_loader=bad, vocab_size=V
    )
    try:
        trainer.fit()
        out["nan"] = "no error"
    except TrainingDiverged as err:
        out["nan"] = str(err)
    out["nan_step"], out["nan_ckpt"] = trainer.step, trainer.latest_checkpoint()
    trainer.close()
    return out


@pytest.mark.distributed
def test_trainer_matches_direct_computations(tmp_path):
    (r,) = run_ranks(_through_trainer, world=1, tmp=str(tmp_path))
    np.testing.assert_allclose(r["clip"], _direct_clip_losses(3, 5e-3), rtol=0, atol=1e-5)
    assert (r["torch_head"], r["triton_head"]) == ("torch", "triton")
    np.testing.assert_allclose(r["triton"], r["torch"], rtol=0, atol=1e-4)  # fp32 interpreter vs torch
    assert "loss is nan at step 2" in r["nan"], r["nan"]
    assert r["nan_step"] == 3 and r["nan_ckpt"] is None


# ------------------------------------------------------------------------------ prefetch
def test_prefetcher_resumes_at_the_consumed_position():
    from engine.prefetch import Prefetcher

    batches = [{"i": i} for i in range(7)]
    pre = Prefetcher(TensorLoader(batches), lambda b: {**b, "prepared": True})
    got = [next(pre)["i"] for _ in range(3)]
    pre._pending.result()  # let the thread read batch 3 ahead, as it does during a step
    assert pre.loader.pos == 4
    state = pre.state_dict()  # still the position after batch 2, the last one handed out
    rest = [next(pre)["i"] for _ in range(6)]  # on into the next epoch
    pre.close()
    again = Prefetcher(TensorLoader(batches), lambda b: b)
    again.load_state_dict(state)
    assert got == [0, 1, 2] and rest == [3, 4, 5, 6, 0, 1]
    assert [next(again)["i"] for _ in range(6)] == rest
    again.close()
