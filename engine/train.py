"""CatLIP pre-training with DeepSpeed ZeRO (stages 0-3) over DALI-fed WebDataset shards.

    deepspeed --num_gpus 8 --module engine.train --config configs/catlip_vit_b16.yaml      # GPUs, nccl
    torchrun --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml  # CPU ranks, gloo
    python -m engine.train --config configs/coco_tiny_cpu.yaml                       # one process

Each optimizer step: ``grad_accum`` micro-batches of ``data.batch_size`` per rank; AdamW with
weight decay on matrices only; cosine schedule with linear warmup; gradient clipping; bf16 on a GPU,
fp32 on the CPU. Checkpoints (every ``run.ckpt_every`` steps and at the end) hold the model,
optimizer, scheduler, per-rank data position and RNG states; DeepSpeed moves its ``latest`` pointer
only after a checkpoint is fully written, so a crash while saving leaves the previous one usable.
A NaN or inf loss stops the run (all ranks together) without saving over the last good checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ConfigError, TrainConfig, load_config
from engine.distributed import cuda_available, init_distributed, prepare_env, shutdown

CKPT_DIR = "checkpoints"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


def contrastive_objective(cfg: TrainConfig, vit_cfg: Any) -> Any:
    """The CLIP or SigLIP baseline as one module: ``forward(images, tokens)`` -> loss.

    The same image tower preset (and resolution) as CatLIP, open_clip's default text tower, and the
    loss with embeddings all-gathered across ranks; the loss module's ``comm`` records the bytes.
    """
    import torch
    from torch import nn

    from catlip.clip import CLIPModel, clip_config
    from catlip.contrastive import ContrastiveLoss, SigLipLoss

    m = cfg.model
    clip_cfg = clip_config(f"clip_{m.name}", siglip=m.objective == "siglip", vision=vit_cfg)
    if m.objective == "siglip":
        loss = SigLipLoss(dist_impl=m.siglip_dist_impl)
    else:
        loss = ContrastiveLoss(local_loss=m.local_loss, gather_with_grad=m.gather_with_grad)

    class Objective(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = CLIPModel(clip_cfg, attn_impl=m.attn_impl, grad_checkpointing=m.grad_checkpointing)
            # DeepSpeed 0.19 broadcasts parameters as byte views, which 0-dim tensors refuse:
            # hold the temperature (and SigLIP's bias) as shape (1,); the losses broadcast it.
            for name in ("logit_scale", "logit_bias"):
                p = getattr(self.model, name)
                if p is not None and p.dim() == 0:
                    setattr(self.model, name, nn.Parameter(p.detach().reshape(1)))
            self.loss = loss

        def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return self.loss(*self.model(images, tokens))

    return Objective()


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from ~0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def use_bf16(cfg: TrainConfig) -> bool:
    return cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and cuda_available())


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    o, r = cfg.optim, cfg.run
    zero: dict[str, Any] = {"stage": r.zero_stage}
    if r.zero_stage == 3:
        zero.update(
            stage3_param_persistence_threshold=r.persistence_threshold,
            model_persistence_threshold=r.persistence_threshold,
        )
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": cfg.data.batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,  # DeepSpeed's default is 1.0: always set it
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch's AdamW instead of DeepSpeed's compiled op (no build on CPU hosts)
            "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "torch_adam": True},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg)},
        "steps_per_print": 10**9,  # logging is ours
        "wall_clock_breakdown": False,
    }


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if cuda_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and cuda_available():
        torch.cuda.set_rng_state(state["cuda"])


def peak_memory_mb() -> float:
    import torch

    if cuda_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def average_precision(scores, targets) -> tuple[float, float, int]:
    """Mean over classes with a positive of the average precision, and the chance level.

    scores, targets: (N, V) arrays. Chance: a random ranking's expected AP is the class's positive
    rate. Returns (mAP, chance mAP, classes evaluated).
    """
    import numpy as np

    keep = targets.sum(axis=0) > 0
    s, t = scores[:, keep], targets[:, keep].astype(np.float64)
    order = np.argsort(-s, axis=0, kind="stable")
    ranked = np.take_along_axis(t, order, axis=0)  # (N, C) targets in score order
    hits = np.cumsum(ranked, axis=0)
    precision = hits / np.arange(1, len(t) + 1)[:, None]
    ap = (precision * ranked).sum(axis=0) / ranked.sum(axis=0)
    return float(ap.mean()), float(t.mean(axis=0).mean()), int(keep.sum())


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    images_per_s: float
    step_time: float
    data_time: float
    peak_mem_mb: float


class Trainer:
    """Owns the DeepSpeed engine, the loaders, checkpoints and logs of one run.

    ``train_loader``/``val_loader`` default to DALI over ``cfg.data`` shards; tests may pass any
    re-iterable of batch dicts (``image``, ``labels``, optional ``valid``) with ``state_dict()`` and
    ``load_state_dict()``. ``model_fn`` builds the model (default: CatLIPModel from ``cfg.model``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        vocab_size: int | None = None,
        model_fn: Callable[[], Any] | None = None,
        train_loader: Any = None,
        val_loader: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        import deepspeed
        import torch

        from catlip.models import CatLIPModel, param_groups, vit_config

        self.cfg = cfg
        self.rank, self.world_size, self.local_rank = init_distributed()
        self.is_main = self.rank == 0
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out_dir / CKPT_DIR
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = log or (print if self.is_main else (lambda _: None))
        if cfg.optim.ema_decay and cfg.run.zero_stage == 3:
            raise ConfigError("optim.ema_decay with run.zero_stage 3 is not supported yet (use stage 0-2)")
        seed = cfg.run.seed + self.rank
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        random.seed(seed)
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda_available() else "cpu")

        image_size = cfg.model.image_size
        self.vit_cfg = vit_config(cfg.model.name, **({"image_size": image_size} if image_size else {}))
        if train_loader is None:
            train_loader, val_loader, vocab_size = self._dali_loaders()
        self.train_loader, self.val_loader = train_loader, val_loader
        self.objective = cfg.model.objective
        if model_fn is None and self.objective != "catlip":

            def model_fn():
                return contrastive_objective(cfg, self.vit_cfg)

        if model_fn is None:
            if vocab_size is None:
                raise ConfigError("vocab_size is needed to build the CatLIP head")
            self.vocab_size = vocab_size

            def model_fn():
                return CatLIPModel(
                    self.vit_cfg,
                    vocab_size,
                    attn_impl=cfg.model.attn_impl,
                    loss_impl=cfg.model.loss_impl,
                    grad_checkpointing=cfg.model.grad_checkpointing,
                    label_smoothing=cfg.model.label_smoothing,
                )

        # Built whole on every rank (same seed, same weights) and partitioned by deepspeed.initialize.
        # Not under deepspeed.zero.Init: it partitions each submodule as its __init__ returns, so the
        # model-level initialisation after that (head bias at the label prior, truncated normals)
        # would not reach the weights. Even ViT-H (632M parameters, 2.5 GB fp32) fits in host memory.
        model = model_fn()
        total = cfg.run.steps
        min_ratio = cfg.optim.min_lr / cfg.optim.lr

        def scheduler(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: lr_multiplier(s, cfg.optim.warmup_steps, total, min_ratio)
            )

        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.optim.weight_decay),
            config=deepspeed_config(cfg, self.world_size),
            lr_scheduler=scheduler,
        )
        self.step = 0
        self.history: list[StepLog] = []
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.optim.ema_decay:
            self.ema = {n: p.detach().float().clone() for n, p in self.engine.module.named_parameters()}
        self._tb = None
        self.partition_report = self._partition_report()
        self._log(self.partition_report)

    # ----------------------------------------------------------------------------------- set-up
    def _dali_loaders(self):
        from engine.data import make_loader

        d = self.cfg.data
        if not d.train:
            raise ConfigError("data.train is empty: point it at a directory made by `catlip pack`")
        meta = json.loads((Path(d.train) / "dataset.json").read_text())
        common = dict(
            rank=self.rank,
            world_size=self.world_size,
            device=d.decode_device,
            image_size=self.vit_cfg.image_size,
            seed=self.cfg.run.seed,
            max_labels=d.max_labels,
            num_threads=d.num_threads,
        )
        captions = self.cfg.model.objective != "catlip"  # the contrastive baselines read the .txt
        train = make_loader(
            d.train, d.batch_size, train=True, scale=tuple(d.scale), captions=captions, **common
        )
        val = make_loader(d.val, d.batch_size, train=False, **common) if d.val and not captions else None
        return train, val, int(meta["vocab_size"])

    def _partition_report(self) -> str:
        import torch.distributed as dist

        params = list(self.engine.module.parameters())
        full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
        counts = [None] * self.world_size
        dist.all_gather_object(counts, held)
        per_rank = ", ".join(f"rank {r}: {c:,}" for r, c in enumerate(counts))
        return f"ZeRO-{self.cfg.run.zero_stage}: {full:,} parameters; held per rank: {per_rank}"

    # ----------------------------------------------------------------------------------- loop
    def _batches(self) -> Iterator[dict]:
        if hasattr(self.train_loader, "__len__") and len(self.train_loader) == 0:
            raise ConfigError(
                f"the training shards give rank {self.rank} no full batch of {self.cfg.data.batch_size}: "
                "lower data.batch_size or use more data"
            )
        while True:
            yield from self.train_loader

    def _to_device(self, batch: dict) -> tuple:
        """(images, labels, sample weights) for CatLIP; (images, tokens) for CLIP and SigLIP."""
        import torch

        images = batch["image"].to(self.device, non_blocking=True)
        if use_bf16(self.cfg):
            images = images.to(torch.bfloat16)
        if self.objective != "catlip":
            from catlip.tokenizer import tokenize

            # Images that failed to decode stay in the batch as zero images: InfoNCE has no
            # per-sample weight, and dropping rows would unbalance the all-gather across ranks.
            return images, tokenize(batch["caption"]).to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        valid = batch.get("valid")
        weight = None if valid is None else valid.to(self.device, torch.float32)
        return images, labels, weight

    def fit(self, steps: int | None = None) -> list[StepLog]:
        """Train until ``steps`` (default ``run.steps``) optimizer steps, from wherever we are."""
        import torch
        import torch.distributed as dist
        from tqdm import tqdm

        cfg = self.cfg
        last = min(steps or cfg.run.steps, cfg.run.steps)
        batches = self._batches()
        bar = tqdm(total=last, initial=self.step, disable=not self.is_main, unit="step", dynamic_ncols=True)
        self.engine.train()
        try:
            while self.step < last:
                t0 = time.perf_counter()
                data_time, loss_sum = 0.0, 0.0
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                for _ in range(cfg.optim.grad_accum):
                    td = time.perf_counter()
                    inputs = self._to_device(next(batches))
                    data_time += time.perf_counter() - td
                    loss = self.engine(*inputs)
                    finite = torch.isfinite(loss.detach()).float()
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                    if finite.item() < 1:
                        raise TrainingDiverged(
                            f"loss is {loss.item()} at step {self.step + 1}; stopping without saving. "
                            f"The last good checkpoint is {self.latest_checkpoint() or 'none'}"
                        )
                    self.engine.backward(loss)
                    self.engine.step()
                    loss_sum += loss.detach().float()
                self._update_ema()
                self.step += 1
                dt = time.perf_counter() - t0
                mean_loss = loss_sum / cfg.optim.grad_accum
                dist.all_reduce(mean_loss)
                entry = StepLog(
                    step=self.step,
                    loss=mean_loss.item() / self.world_size,
                    lr=lr,
                    images_per_s=cfg.data.batch_size * cfg.optim.grad_accum * self.world_size / dt,
                    step_time=dt,
                    data_time=data_time,
                    peak_mem_mb=peak_memory_mb(),
                )
                self.history.append(entry)
                bar.update(1)
                bar.set_postfix(loss=f"{entry.loss:.4f}", lr=f"{entry.lr:.2e}")
                if self.step % cfg.run.log_every == 0 or self.step == last:
                    self._write_log(entry, bar)
                if cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0 and self.step < last:
                    self.save()
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self.step < last:
                    self.evaluate()
        finally:
            bar.close()
        self.save()
        return self.history

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        import torch

        d = self.cfg.optim.ema_decay
        with torch.no_grad():
            for n, p in self.engine.module.named_parameters():
                self.ema[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def _write_log(self, e: StepLog, bar) -> None:
        if not self.is_main:
            return
        line = (
            f"step {e.step:>6} | loss {e.loss:.5f} | lr {e.lr:.3e} | {e.images_per_s:,.1f} img/s | "
            f"step {e.step_time * 1e3:.0f} ms (data {e.data_time * 1e3:.0f} ms) | peak mem {e.peak_mem_mb:,.0f} MB"
        )
        counters = self.train_loader.counters() if hasattr(self.train_loader, "counters") else {}
        skipped = {k: v for k, v in counters.items() if v}
        if skipped:  # samples not trained on as packed (bad images, failed batches, cut labels)
            line += " | rank-0 data: " + ", ".join(f"{k} {v}" for k, v in skipped.items())
        bar.write(line)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({**e.__dict__, **counters}) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        for key in ("loss", "lr", "images_per_s", "step_time", "data_time", "peak_mem_mb"):
            self._tb.add_scalar(f"train/{key}", getattr(e, key), e.step)
        self._tb.flush()

    # ----------------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float] | None:
        """Held-out mAP over the vocabulary (all ranks forward their shard; rank 0 scores)."""
        import numpy as np
        import torch
        import torch.distributed as dist

        if self.val_loader is None or self.objective != "catlip":
            return None
        self.engine.eval()
        scores, targets = [], []
        with torch.no_grad():
            for batch in self.val_loader:
                images, labels, weight = self._to_device(batch)
                logits = self.engine(images).float()
                keep = torch.ones(len(logits), dtype=torch.bool) if weight is None else weight.bool().cpu()
                dense = torch.zeros_like(logits, dtype=torch.bool)
                dense.scatter_(1, labels.clamp(min=0).long(), labels >= 0)
                scores.append(logits.cpu()[keep].numpy())
                targets.append(dense.cpu()[keep].numpy())
        self.engine.train()
        local = (np.concatenate(scores), np.concatenate(targets))
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, local)
        if not self.is_main:
            return None
        s = np.concatenate([g[0] for g in gathered])
        t = np.concatenate([g[1] for g in gathered])
        m_ap, chance, classes = average_precision(s, t)
        result = {"val_mAP": m_ap, "chance_mAP": chance, "classes": classes, "samples": len(s)}
        self._log(
            f"eval step {self.step}: held-out mAP {100 * m_ap:.2f}% over {classes} synsets with a positive "
            f"({len(s)} images); chance {100 * chance:.2f}%"
        )
        if self._tb is not None:
            self._tb.add_scalar("val/mAP", m_ap, self.step)
            self._tb.flush()
        with open(self.out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **result}) + "\n")
        return result

    # ----------------------------------------------------------------------------------- checkpoints
    def latest_checkpoint(self) -> Path | None:
        latest = self.ckpt_dir / "latest"
        return self.ckpt_dir / latest.read_text().strip() if latest.is_file() else None

    def save(self) -> Path:
        """Write checkpoint ``step_<N>``; ``latest`` moves to it only once every rank has written."""
        import torch
        import torch.distributed as dist

        tag = f"step_{self.step:08d}"
        path = self.ckpt_dir / tag
        path.mkdir(parents=True, exist_ok=True)
        extra = {
            "rng": _rng_state(),
            "data": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "ema": self.ema,
        }
        tmp = path / f"extra_rank{self.rank}.pt.tmp"
        torch.save(extra, tmp)
        tmp.replace(path / f"extra_rank{self.rank}.pt")
        dist.barrier()
        self.engine.save_checkpoint(
            str(self.ckpt_dir),
            tag=tag,
            client_state={"step": self.step, "config": self.cfg.to_dict(), "world_size": self.world_size},
        )
        dist.barrier()
        if self.is_main:
            self._prune_checkpoints(keep=tag)
            self._log(f"checkpoint: {path}")
        dist.barrier()
        return path

    def _prune_checkpoints(self, keep: str) -> None:
        tags = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.cfg.run.keep_checkpoints)]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore model, optimizer, scheduler, step, data position and RNG from ``path`` (a tag
        directory) or, by default, the latest checkpoint. Returns False when there is none."""
        import torch

        if path is None:
            path = self.latest_checkpoint()
            if path is None:
                return False
        path = Path(path)
        load_path, client = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}")
        if client.get("world_size") != self.world_size:
            raise RuntimeError(
                f"{path} was written by {client.get('world_size')} ranks, this run has {self.world_size}: "
                "the per-rank data positions do not carry over (export the weights and start a new run)"
            )
        self.step = int(client["step"])
        extra = torch.load(path / f"extra_rank{self.rank}.pt", weights_only=False)
        if extra["data"] is not None:
            self.train_loader.load_state_dict(extra["data"])
        _set_rng_state(extra["rng"])
        self.ema = extra["ema"]
        self._log(f"resumed from {path} at step {self.step}")
        return True

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


# --------------------------------------------------------------------------------------- export
def export_fp32(checkpoint: str | Path, out: str | Path) -> Path:
    """Consolidate a (ZeRO-partitioned) checkpoint tag directory into one fp32 safetensors file."""
    import torch
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    if (checkpoint / "latest").is_file():  # the checkpoints directory itself: take its latest tag
        checkpoint = checkpoint / (checkpoint / "latest").read_text().strip()
    # ZeRO-3 names the model-states file per rank; stages 0-2 write one.
    files = [
        checkpoint / "mp_rank_00_model_states.pt",
        checkpoint / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    ]
    found = [f for f in files if f.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{checkpoint} holds no DeepSpeed model states (looked for {[f.name for f in files]})"
        )
    states = torch.load(found[0], map_location="cpu", weights_only=False)
    stage = (states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    if stage:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    else:
        state = states["module"]
    state = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = states.get("config") or {}
    save_file(
        state, str(out), metadata={"catlip_config": json.dumps(config), "step": str(states.get("step"))}
    )
    return out


# --------------------------------------------------------------------------------------- CLI
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config (sections model, data, optim, run)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set run.steps=200 (repeatable)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    Path(cfg.run.out_dir).mkdir(parents=True, exist_ok=True)
    if trainer.is_main:
        (Path(cfg.run.out_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if cfg.run.resume == "auto":
        trainer.resume()
    elif cfg.run.resume != "never":
        trainer.resume(cfg.run.resume)
    try:
        history = trainer.fit()
        result = trainer.evaluate()
    finally:
        trainer.close()
    if trainer.is_main and history:
        first, last = history[0], history[-1]
        print(f"loss: step {first.step} {first.loss:.4f} -> step {last.step} {last.loss:.4f}")
        if result:
            print(
                f"held-out mAP {100 * result['val_mAP']:.2f}% vs chance {100 * result['chance_mAP']:.2f}% "
                f"({result['classes']} synsets, {result['samples']} images)"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    prepare_env()
    # torch.distributed's deprecation notices for the collectives DeepSpeed calls, once per rank
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    parser = argparse.ArgumentParser(
        prog="python -m engine.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    code = 1
    try:
        code = run(args)
    except (ConfigError, TrainingDiverged) as err:
        print(f"engine.train: error: {err}", file=sys.stderr)
        code = 2
    finally:
        with contextlib.suppress(Exception):
            shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # A finished gloo rank sometimes aborts in static destructors at interpreter exit: skip them.
    os._exit(code)


if __name__ == "__main__":
    main()
