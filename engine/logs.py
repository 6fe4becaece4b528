"""What a run reports: step lines on the console (under the progress bar on a terminal; in a file
or a pipe, the step lines alone), ``log.jsonl``, ``eval.jsonl`` and TensorBoard (``<out_dir>/tb``).
The step line, ``log.jsonl`` and TensorBoard carry the same numbers. Only rank 0 writes."""

from __future__ import annotations

import json
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catlip.progress import clock, progress
from engine.distributed import cuda_available

__all__ = ["RunLog", "StepLog", "clock", "peak_memory_mb", "progress"]


@dataclass
class StepLog:
    step: int
    loss: float  # this step's loss, mean over ranks and micro-batches
    lr: float
    images_per_s: float  # over the steps since the previous log line
    tokens_per_s: float  # the image tower's tokens (patches + class token), same window; 0: no images
    step_time: float  # seconds per step, same window
    data_time: float  # seconds per step waiting for batches, same window
    peak_mem_mb: float
    skipped_steps: int = 0  # optimizer steps DeepSpeed skipped so far (gradient overflow)
    grad_norm: float = 0.0  # this step's global gradient 2-norm before clipping, over every rank's shard
    eta_s: float = 0.0  # seconds left: this window's mean step time x the steps still to run


def peak_memory_mb() -> float:
    import torch

    if cuda_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RunLog:
    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.out_dir, self.enabled = Path(out_dir), enabled
        self._tb = None

    def _board(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        return self._tb

    def step(self, e: StepLog, bar: Any, counters: dict[str, int]) -> None:
        if not self.enabled:
            return
        line = (
            f"step {e.step:>6} | loss {e.loss:.5f} | lr {e.lr:.3e} | {e.images_per_s:,.1f} img/s"
            + (f" ({e.tokens_per_s:,.0f} tokens/s)" if e.tokens_per_s else "")
            + f" | grad norm {e.grad_norm:.4g} | step {e.step_time * 1e3:.0f} ms (data {e.data_time * 1e3:.0f} ms)"
            + f" | peak mem {e.peak_mem_mb:,.0f} MB | eta {clock(e.eta_s)}"
        )
        if e.skipped_steps:
            line += f" | skipped steps {e.skipped_steps}"
        skipped = {k: v for k, v in counters.items() if v}
        if skipped:  # samples not trained on as packed (bad images, failed batches, cut labels)
            line += " | rank-0 data: " + ", ".join(f"{k} {v}" for k, v in skipped.items())
        bar.write(line)
        record = {**asdict(e), **counters}
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._board()
        for key, value in record.items():  # the same numbers as log.jsonl, as train/<key>
            if key != "step":
                tb.add_scalar(f"train/{key}", value, e.step)
        tb.flush()

    def eval(self, step: int, result: dict[str, Any], line: str) -> None:
        """A held-out evaluation: ``line`` (the objective's summary) on the console, the metrics
        (every ``val_*`` number) in TensorBoard and ``eval.jsonl``."""
        if not self.enabled:
            return
        print(f"eval step {step}: {line}")
        tb = self._board()
        for key, value in result.items():
            if key.startswith("val_") and isinstance(value, (int, float)):
                tb.add_scalar(f"val/{key[len('val_') :]}", value, step)
        tb.flush()
        with open(self.out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
