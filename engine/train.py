"""Training with DeepSpeed ZeRO (stages 0-3) over DALI-fed WebDataset shards: the loop and main.

    deepspeed --num_gpus 8 --module engine.train --config configs/catlip_vit_b16.yaml      # GPUs, nccl
    python -m engine.launch --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml  # CPU, gloo
    python -m engine.train --config configs/coco_tiny_cpu.yaml                       # one process

Each optimizer step: ``grad_accum`` micro-batches of ``data.batch_size`` per rank (with
``data.multiscale``: a size and resolution drawn per step, the same on every rank, see
engine/multiscale.py); AdamW with weight decay on matrices only; cosine schedule with linear
warmup; gradient clipping; bf16 on a GPU, fp32 on the CPU. The task (``objective.name``: catlip, clip, siglip; finetune and probe on a
class pack) is an object from ``engine/objectives.py``; DeepSpeed, checkpointing and compile are applied by ``engine/parallel.py``;
checkpoints are ``engine/checkpoint.py``'s. The host synchronises with the device only at log
steps and before checkpoints: that is where a NaN or inf loss (flagged on the device every
micro-step) stops the run on all ranks, before anything is saved over the last good checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.checkpoint import CKPT_DIR, Checkpointer, CheckpointError
from engine.config import ConfigError, TrainConfig, add_train_arguments, load_config
from engine.data import DataError
from engine.distributed import cuda_available, init_distributed, prepare_env, shutdown
from engine.logs import RunLog, StepLog, peak_memory_mb, progress
from engine.objectives import make_objective
from engine.parallel import build_model, parallelize, partition_report, use_bf16
from engine.prefetch import Prefetcher
from engine.reshard import keep_global_batch
from engine.resume import apply_hyperparameters
from engine.scaling import scale_for_batch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


class Trainer:
    """Wires one run together: objective, loaders, DeepSpeed engine, checkpoints and logs.

    ``train_loader``/``val_loader`` default to DALI over ``cfg.data`` shards; tests may pass any
    re-iterable of batch dicts (``image``, ``labels``, optional ``valid``) with ``state_dict()`` and
    ``load_state_dict()``, and then ``dataset_meta`` (what the shards' dataset.json would say:
    ``multi_label``, ``classes``). ``model_fn`` overrides the objective's model (tests).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        vocab_size: int | None = None,
        model_fn: Callable[[], Any] | None = None,
        train_loader: Any = None,
        val_loader: Any = None,
        dataset_meta: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from catlip.models import run_vit_config
        from catlip.param_groups import param_groups

        self.cfg = cfg
        self.dataset_meta: dict[str, Any] = dict(dataset_meta or {})  # the train shards' dataset.json
        self.rank, self.world_size, self.local_rank = init_distributed()
        self.is_main = self.rank == 0
        self.out_dir = Path(cfg.run.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = log or (print if self.is_main else (lambda _: None))
        # lr, min_lr and warmup for the run's global batch (optim.reference_batch): the rates used
        self._given = cfg  # as given: a resume on another world size scales it again
        self.cfg, scaling = scale_for_batch(cfg, self.world_size)
        cfg = self.cfg
        for line in scaling:
            self._log(line)
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        random.seed(cfg.run.seed + self.rank)
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda_available() else "cpu")
        self.dtype = torch.bfloat16 if use_bf16(cfg) else torch.float32

        self.vit_cfg = run_vit_config(dataclasses.asdict(cfg.model))
        self.objective = make_objective(cfg, self.vit_cfg)
        self.loaders_from_shards = train_loader is None
        if train_loader is None:
            from engine.data import loaders_from_config

            train_loader, val_loader, self.dataset_meta = loaders_from_config(
                cfg, self.rank, self.world_size, self.vit_cfg.image_size, self.objective.captions,
                patch_size=self.vit_cfg.patch_size,
            )  # fmt: skip
            # a class pack's classes, or a caption pack's synset vocabulary
            vocab_size = int(self.dataset_meta.get("num_classes") or self.dataset_meta["vocab_size"])
        self.train_loader, self.val_loader = train_loader, val_loader
        if self.objective.host_work:  # tokenising etc. in a thread, one batch ahead of the step
            self.train_loader = Prefetcher(train_loader, self.objective.prepare)
        self.vocab_size = vocab_size
        # Built whole on every rank (same seed, same weights) and partitioned by deepspeed.initialize
        # (ViT-H: 2.5 GB fp32 per rank, host memory); with parallel.zero_init (ZeRO-3) partitioned as it
        # is built, the same weights (engine.parallel.build_model).
        self.objective.bind(self.dataset_meta)
        build = model_fn or (lambda: self.objective.build(vocab_size))
        model = build_model(build, cfg, self.world_size) if cfg.parallel.zero_init else build()
        for line in self.objective.report:
            self._log(line)
        groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
        self.engine, self.scheduler = parallelize(model, cfg, self.world_size, groups)
        self.train_loader = self.objective.train_batches(self.train_loader, self.engine.module, self)
        self.checkpoints = Checkpointer(self.engine, self.out_dir, keep=cfg.checkpoint.keep, log=self._log)
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint this run continues
        self._claimed = False
        self._skipped_in_a_row = 0
        self.history: list[StepLog] = []
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.optim.ema_decay:
            self.ema = {n: t.detach().float().clone() for n, t in self._ema_sources()}
        self.logs = RunLog(self.out_dir, self.is_main)
        self.partition_report = partition_report(self.engine, cfg.parallel.zero_stage)
        self._log(self.partition_report)

    # ------------------------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[dict]:
        if hasattr(self.train_loader, "__len__") and len(self.train_loader) == 0:
            raise ConfigError(
                f"the training shards give rank {self.rank} no full batch of {self.cfg.data.batch_size}: "
                "lower data.batch_size or use more data"
            )
        if isinstance(self.train_loader, Prefetcher):
            return self.train_loader
        return _epochs(self.train_loader)

    def fit(self, steps: int | None = None) -> list[StepLog]:
        """Train until ``steps`` (default ``run.steps``) optimizer steps, from wherever we are."""
        run, every = self.cfg.run, self.cfg.checkpoint.every
        self.claim_out_dir()
        last = min(steps or run.steps, run.steps)
        batches = self._batches()
        # a bar on a terminal; in a file the step lines alone, one per run.log_every steps
        bar = progress(last, initial=self.step, enabled=self.is_main, unit="step", desc="train", every_s=None)
        self._last, self._grad_norm = last, torch.zeros(())
        self._health = _Health(self.device)
        start = self.step
        window = _Window(self.step)
        self.engine.train()
        try:
            while self.step < last:
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                loss, applied = self._train_step(batches, window)
                if not applied:  # DeepSpeed found inf/nan gradients and skipped the update
                    self._skipped_in_a_row += 1
                    if self._skipped_in_a_row > run.max_skipped_steps:
                        raise TrainingDiverged(
                            f"DeepSpeed skipped {self._skipped_in_a_row} optimizer steps in a row (gradient "
                            f"overflow) after step {self.step}; stopping without saving. The last good "
                            f"checkpoint is {self.checkpoints.latest() or 'none'} (lower optim.lr?)"
                        )
                    continue  # not a trained step: the same step is tried on the next batch
                self._skipped_in_a_row = 0
                self._update_ema()
                self.step += 1
                bar.update(1)
                if self.step == 1 or self.step % run.log_every == 0 or self.step == last:
                    self._log_step(loss, lr, window, bar)
                if every and self.step % every == 0 and self.step < last:
                    self.save()
                if run.eval_every and self.step % run.eval_every == 0 and self.step < last:
                    self.evaluate()
        finally:
            bar.close()
        if self.step > start:  # a resumed, finished run does not re-write its last checkpoint
            self.save()
        return self.history

    def _train_step(self, batches: Iterator[dict], window: _Window) -> tuple[torch.Tensor, bool]:
        """One optimizer step (``grad_accum`` micro-steps): its mean loss, on the device, and
        whether DeepSpeed applied the update (ZeRO 1-3 skip it on inf/nan gradients)."""
        accum = self.cfg.optim.grad_accum
        skipped = self.engine.skipped_steps
        total = torch.zeros((), device=self.device)
        # DeepSpeed's ZeRO and bf16 optimizers measure the global norm; fp32 without ZeRO does not
        own_norm = not hasattr(self.engine.optimizer, "_global_grad_norm")
        for _ in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            inputs = self.objective.inputs(batch, self.device, self.dtype)
            window.data_time += time.perf_counter() - t0
            window.images += _batch_images(batch, self.cfg.data.batch_size)
            window.tokens += _batch_tokens(batch, self.vit_cfg.patch_size)
            loss = self.engine(*inputs)
            self._health.observe(loss.detach(), self.step + 1)  # no host sync
            self.engine.backward(loss)
            if own_norm and self.engine.is_gradient_accumulation_boundary():  # reduced, not yet clipped
                grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            self.engine.step()
            total += loss.detach().float()
        return total / accum, self.engine.skipped_steps == skipped

    def _log_step(self, loss: torch.Tensor, lr: float, window: _Window, bar: Any) -> None:
        self.check_finite()
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # the host sync of this log step
        steps, seconds = window.close(self.step)
        images = window.images * self.world_size  # every rank draws the same batch sizes
        tokens = window.tokens * self.world_size
        norm = self.engine.get_global_grad_norm()  # DeepSpeed's, before clipping; None: fp32 without ZeRO
        window.images = window.tokens = 0
        entry = StepLog(
            step=self.step,
            loss=mean.item() / self.world_size,
            lr=lr,
            images_per_s=images / seconds,
            tokens_per_s=tokens / seconds,
            step_time=seconds / steps,
            data_time=window.data_time / steps,
            peak_mem_mb=peak_memory_mb(),
            skipped_steps=self.engine.skipped_steps,
            grad_norm=float(norm if norm is not None else self._grad_norm),
            eta_s=seconds / steps * (self._last - self.step),  # this window's mean step time x steps left
        )
        window.data_time = 0.0
        self.history.append(entry)
        bar.set_postfix(loss=f"{entry.loss:.4f}", lr=f"{entry.lr:.2e}", grad_norm=f"{entry.grad_norm:.3g}")
        counters = self.train_loader.counters() if hasattr(self.train_loader, "counters") else {}
        self.logs.step(entry, bar, counters)

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` on every rank if any rank saw a NaN or inf loss."""
        health = getattr(self, "_health", None)
        if health is None:
            return
        bad = health.reduce()
        if bad is not None:
            raise TrainingDiverged(
                f"loss is {bad[1]} at step {bad[0]}; stopping without saving. "
                f"The last good checkpoint is {self.checkpoints.latest() or 'none'}"
            )

    def _ema_sources(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What each rank averages: the whole parameter (ZeRO 0-2, the same on every rank) or,
        under ZeRO-3, this rank's flat partition of it (``ds_tensor``), so the EMA is sharded
        like the weights; ``catlip export --ema`` puts the partitions back together."""
        for n, p in self.engine.module.named_parameters():
            yield n, (p.ds_tensor if hasattr(p, "ds_tensor") else p)

    def ema_layout(self) -> dict[str, Any]:
        partitioned = any(hasattr(p, "ds_tensor") for p in self.engine.module.parameters())
        shapes = {n: list(getattr(p, "ds_shape", p.shape)) for n, p in self.engine.module.named_parameters()}
        return {"partitioned": partitioned, "shapes": shapes}

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.optim.ema_decay
        with torch.no_grad():
            for n, t in self._ema_sources():
                self.ema[n].mul_(d).add_(t.detach().float(), alpha=1 - d)

    # ------------------------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float] | None:
        """The objective's held-out metrics (CatLIP: per-image mAP over the vocabulary; finetune and
        probe: mAP or top-1/top-5 over the classes), each next to its chance level."""
        if self.val_loader is None or not self.objective.has_eval:
            return None
        self.engine.eval()
        try:
            result = self.objective.evaluate(self.engine, self.val_loader, self.device, self.dtype)
        finally:
            self.engine.train()
        out = self.objective.metrics(result)
        self.logs.eval(self.step, out, self.objective.summary(out))
        return out

    # ------------------------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints.latest()

    def save(self) -> Path:
        self.check_finite()  # never write a diverged model over the last good checkpoint
        return self.checkpoints.save(
            self.step,
            loader=self.train_loader,
            ema=self.ema,
            ema_layout=self.ema_layout() if self.ema is not None else None,
            config=self.cfg.to_dict(),
            vocab=self.vocab_identity(),
        )

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` or the latest checkpoint; False when there is none."""
        restored = self.checkpoints.resume(path, loader=self.train_loader)
        if restored is None:
            return False
        self.step, self.ema, saved = restored
        self.resumed_from = saved["path"]
        self._check_vocab(saved["vocab"], saved["path"])
        resharded = saved.get("world_size", self.world_size) != self.world_size
        if resharded:  # the same global batch on this world size (engine/reshard.py)
            accum, line = keep_global_batch(
                saved["config"], self.cfg.data.batch_size, saved["world_size"], self.world_size
            )
            self.cfg.optim.grad_accum = accum
            self.engine.set_train_batch_size(self.cfg.data.batch_size * accum * self.world_size)
            self._log(line)
            self._rescale(accum)
        for line in apply_hyperparameters(self.engine, self.scheduler, self.cfg, saved["config"], resharded):
            self._log(f"resume: {line}")
        return True

    def _rescale(self, accum: int) -> None:
        """lr, min_lr and warmup for the global batch a resharded resume keeps (optim.reference_batch):
        the accumulation changed after they were scaled for this world size at the config's. The
        schedule reads ``self.cfg.optim`` when it runs, apply_hyperparameters sets the groups' rates."""
        given = dataclasses.replace(
            self._given, optim=dataclasses.replace(self._given.optim, grad_accum=accum)
        )
        scaled, _ = scale_for_batch(given, self.world_size)
        for key in ("lr", "min_lr", "warmup_steps", "reference_batch"):
            setattr(self.cfg.optim, key, getattr(scaled.optim, key))

    def claim_out_dir(self) -> None:
        """A run folder belongs to one run: before this run writes anything, refuse a
        ``run.out_dir`` that holds another run's logs or checkpoints, unless this run continues
        that run (it resumed from a checkpoint of this folder). Otherwise a second run appended to
        ``log.jsonl``, added a TensorBoard file, and its checkpoints mixed with the first's."""
        if self._claimed:
            return
        self._claimed = True
        here = (self.out_dir / CKPT_DIR).resolve()
        if self.resumed_from is not None and Path(self.resumed_from).resolve().parent == here:
            return
        held = [name for name in ("log.jsonl", "eval.jsonl", "tb/") if (self.out_dir / name).exists()]
        tags = sorted(p.name for p in (self.out_dir / CKPT_DIR).glob("step_*"))
        held += [f"{CKPT_DIR}/{tags[-1]}"] if tags else []
        if not held:
            return
        where = f"run.out_dir {self.out_dir} holds"
        if self.resumed_from is not None:
            fix = f"another run ({', '.join(held)}) than {self.resumed_from}: give a new run.out_dir to go on from it"
        elif self.cfg.run.resume == "auto":
            fix = (
                f"a run that left no complete checkpoint to continue ({', '.join(held)}): remove it to start "
                "over, or give a new run.out_dir"
            )
        else:
            fix = f"another run ({', '.join(held)}): continue it with --set run.resume=auto, or give a new run.out_dir"
        raise ConfigError(f"{where} {fix}")

    def vocab_identity(self) -> dict[str, Any]:
        """The vocabulary the train shards were labelled with, and the labeler (caption packs),
        from their dataset.json; checkpoints and exports carry it."""
        from catlip.labels import LabelerSpec

        keys = ("vocab", "vocab_size", "vocab_sha256", "num_classes")
        out = {k: self.dataset_meta[k] for k in keys if k in self.dataset_meta}
        if self.dataset_meta.get("label_member", "lbl") == "lbl" and "vocab_sha256" in self.dataset_meta:
            out["labeler"] = LabelerSpec.of_meta(self.dataset_meta).record()
        return out

    def _check_vocab(self, saved: dict[str, Any], path: Path) -> None:
        from catlip.labels import LabelerMismatch, LabelerSpec

        now = self.vocab_identity()
        if "labeler" in saved and "labeler" in now:
            try:
                LabelerSpec.from_record(saved["labeler"], where=str(path)).check_same(
                    LabelerSpec.from_record(now["labeler"]), f"{path}", f"data.train ({self.cfg.data.train})"
                )
            except (LabelerMismatch, ValueError) as err:
                raise CheckpointError(
                    f"{err}: resume on shards of the same labeler, or start a new run"
                ) from None
        for key in ("vocab_sha256", "vocab_size", "num_classes"):
            if key in saved and key in now and saved[key] != now[key]:
                raise CheckpointError(
                    f"{path} was trained on vocabulary {saved.get('vocab', '?')} ({key} {saved[key]}), but "
                    f"data.train ({self.cfg.data.train}) was packed with {now.get('vocab', '?')} ({key} "
                    f"{now[key]}): resume on shards of the same vocabulary, or start a new run"
                )

    def close(self) -> None:
        self.logs.close()
        if isinstance(self.train_loader, Prefetcher):
            self.train_loader.close()


def _batch_images(batch: dict, default: int) -> int:
    """Images in a batch, read from a tensor's shape (no device sync); ``default`` if none."""
    image = batch.get("image")
    return int(image.shape[0]) if isinstance(image, torch.Tensor) else default


def _batch_tokens(batch: dict, patch: int) -> int:
    """The image tower's tokens in a batch (patches + class token per image, from the images'
    shape); 0 for a batch without images (a probe's cached features)."""
    image = batch.get("image")
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        return 0
    b, _, h, w = image.shape
    return int(b) * ((h // patch) * (w // patch) + 1)


def _epochs(loader: Any) -> Iterator[dict]:
    while True:
        yield from loader


class _Window:
    """Wall time and data wait since the previous log line."""

    def __init__(self, step: int) -> None:
        self.start, self.step, self.data_time = time.perf_counter(), step, 0.0
        self.images = 0  # this rank's, from the batches' shapes (multi-scale batches vary)
        self.tokens = 0  # this rank's image-tower tokens, likewise

    def close(self, step: int) -> tuple[int, float]:
        now = time.perf_counter()
        steps, seconds = max(step - self.step, 1), max(now - self.start, 1e-9)
        self.start, self.step = now, step
        return steps, seconds


class _Health:
    """Device-side record of the first non-finite loss: observed every micro-step without a host
    sync, reduced over ranks only when :meth:`reduce` is called (log steps, checkpoints)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.zeros((), dtype=torch.float64, device=device)  # step, 0 while all finite
        self.value = torch.zeros((), dtype=torch.float64, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(loss) & (self.first == 0)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.value = torch.where(new, loss.double(), self.value)

    def reduce(self) -> tuple[int, float] | None:
        """(earliest bad step over ranks, this rank's value there or nan) or None if all finite."""
        big = torch.full_like(self.first, float("inf"))
        earliest = torch.where(self.first > 0, self.first, big)
        dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
        if not torch.isfinite(earliest).item():
            return None
        value = self.value.item() if self.first.item() == earliest.item() else float("nan")
        return int(earliest.item()), value


# --------------------------------------------------------------------------------------- CLI
class _Interrupt:
    """Ctrl-C (SIGINT) as one line: the handler marks it, and any error after it (a rank blocked in a
    collective learns of the signal as a gloo error when its peer leaves) counts as the interrupt."""

    seen = False
    trainer: Trainer | None = None  # the run's, once built: where it was interrupted

    @classmethod
    def install(cls) -> None:
        def handler(signum: int, frame: Any) -> None:
            if not cls.seen:
                cls.seen = True
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)

    @classmethod
    def happened(cls) -> bool:
        """Whether SIGINT arrived, its handler given the chance to run first."""
        with contextlib.suppress(KeyboardInterrupt):
            for _ in range(1000):  # the interpreter runs pending signal handlers between bytecodes
                pass
        return cls.seen

    @classmethod
    def line(cls) -> str:
        if cls.trainer is None:
            return "interrupted before the first step"
        last = cls.trainer.latest_checkpoint()
        return f"interrupted at step {cls.trainer.step}; last checkpoint {last.name if last else 'none'}"


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    trainer = _Interrupt.trainer = Trainer(cfg)
    if cfg.run.resume == "auto":
        trainer.resume()
    elif cfg.run.resume != "never":
        trainer.resume(cfg.run.resume)
    trainer.claim_out_dir()
    if trainer.is_main:  # what this run uses (a resumed run: the settings given now, applied)
        used = {**trainer.cfg.to_dict(), "resumed_at_step": trainer.step or None}  # lr as scaled
        (Path(cfg.run.out_dir) / "config.json").write_text(json.dumps(used, indent=2) + "\n")
    try:
        history = trainer.fit()
        result = trainer.evaluate()
    finally:
        trainer.close()
    if trainer.is_main and history:
        first, last = history[0], history[-1]
        print(f"loss: step {first.step} {first.loss:.4f} -> step {last.step} {last.loss:.4f}")
        if result:
            print(trainer.objective.summary(result))
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
    _Interrupt.install()
    try:
        code = run(args)
    except BaseException as err:  # noqa: BLE001 - every way out of a run, said once
        code = _failed(err)
    else:
        with contextlib.suppress(Exception):
            shutdown()  # barrier + destroy: only when every rank got here
    sys.stdout.flush()
    sys.stderr.flush()
    # A finished gloo rank sometimes aborts in static destructors at interpreter exit: skip them.
    os._exit(code)


def _failed(err: BaseException) -> int:
    """The exit status for ``err``, after saying what happened (each rank leaves at once; the
    launcher stops the others): 130 for Ctrl-C (rank 0 says where), 2 for a known error, 1 and the
    traceback for anything else."""
    rank = os.environ.get("RANK", "0")
    if _Interrupt.happened():
        return 130 if rank != "0" else _fail(f"engine.train: {_Interrupt.line()}", 130)
    if isinstance(err, ConfigError | TrainingDiverged | CheckpointError | DataError):
        # an error every rank raised alike (a failed save) is said once, by rank 0
        quiet = getattr(err, "on_every_rank", False) and rank != "0"
        return 2 if quiet else _fail(f"engine.train: error: {err}", 2)
    # any rank's failure ends the job, its own error first
    return _fail(f"engine.train: rank {rank} failed:\n{''.join(traceback.format_exception(err))}", 1)


def _fail(message: str, code: int) -> int:
    """Report and leave at once: no barrier (the other ranks may wait in a collective that will
    never complete); torchrun / the deepspeed launcher then stop them within seconds."""
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
