"""Checkpoints: save, resume, prune, the ``latest`` pointer, RNG state, and the fp32 export.

A checkpoint is a tag directory ``step_<N>`` under ``<out_dir>/checkpoints`` holding DeepSpeed's
model/optimizer/scheduler states (partitioned by ZeRO) and one ``extra_rank<R>.pt`` per rank: the
RNG states, the loader position and the EMA weights. DeepSpeed moves ``latest`` only after its
own files are written, so a crash while saving leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.distributed import cuda_available

CKPT_DIR = "checkpoints"


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if cuda_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and cuda_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and restores one run's checkpoints; every rank calls :meth:`save` and :meth:`resume`."""

    def __init__(self, engine: Any, out_dir: Path, *, keep: int, log: Callable[[str], None] = print) -> None:
        self.engine, self.dir, self.keep, self.log = engine, Path(out_dir) / CKPT_DIR, keep, log
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def latest(self) -> Path | None:
        latest = self.dir / "latest"
        return self.dir / latest.read_text().strip() if latest.is_file() else None

    def save(self, step: int, *, loader: Any, ema: dict | None, config: dict) -> Path:
        """Write tag ``step_<N>``; ``latest`` moves to it only once every rank has written."""
        tag = f"step_{step:08d}"
        path = self.dir / tag
        path.mkdir(parents=True, exist_ok=True)
        extra = {
            "rng": rng_state(),
            "data": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "ema": ema,
        }
        tmp = path / f"extra_rank{self.rank}.pt.tmp"
        torch.save(extra, tmp)
        tmp.replace(path / f"extra_rank{self.rank}.pt")
        dist.barrier()
        self.engine.save_checkpoint(
            str(self.dir),
            tag=tag,
            client_state={"step": step, "config": config, "world_size": self.world_size},
        )
        dist.barrier()
        if self.rank == 0:
            self._prune(keep=tag)
            self.log(f"checkpoint: {path}")
        dist.barrier()
        return path

    def _prune(self, keep: str) -> None:
        tags = sorted(p for p in self.dir.glob("step_*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.keep)]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, path: str | Path | None, *, loader: Any) -> tuple[int, dict | None] | None:
        """Restore model, optimizer, scheduler, data position and RNG from ``path`` (a tag
        directory) or, by default, the latest checkpoint: returns (step, EMA weights), or None
        when there is no checkpoint."""
        if path is None:
            path = self.latest()
            if path is None:
                return None
        path = Path(path)
        load_path, client = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}")
        if client.get("world_size") != self.world_size:
            raise RuntimeError(
                f"{path} was written by {client.get('world_size')} ranks, this run has {self.world_size}: "
                "the per-rank data positions do not carry over (export the weights and start a new run)"
            )
        extra = torch.load(path / f"extra_rank{self.rank}.pt", weights_only=False)
        if extra["data"] is not None:
            loader.load_state_dict(extra["data"])
        set_rng_state(extra["rng"])
        self.log(f"resumed from {path} at step {int(client['step'])}")
        return int(client["step"]), extra["ema"]


def export_fp32(checkpoint: str | Path, out: str | Path) -> Path:
    """Consolidate a (ZeRO-partitioned) checkpoint tag directory into one fp32 safetensors file."""
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
