"""Checkpoints: save, resume, prune, the ``latest`` pointer, RNG state, and the fp32 export.

A checkpoint is a tag directory ``step_<N>`` under ``<out_dir>/checkpoints`` holding DeepSpeed's
model/optimizer/scheduler states (partitioned by ZeRO) and, per rank, ``extra_rank<R>.json`` (RNG
states, the loader position) and ``extra_rank<R>.safetensors`` (the torch RNG state, EMA weights).

Complete before anything points at it: every rank writes and fsyncs its files, then (after a
barrier) rank 0 writes ``complete.json`` listing every file of the tag with its size (and the
catlip version that saved it, also in the client state), and only then ``latest`` (atomically).
DeepSpeed's own ``latest``, written by rank 0 without waiting for the others, is not used.
``resume: auto`` takes the newest complete checkpoint and falls back to older complete ones, saying
why ("newest": saved last, which is the highest step unless a run went on from an older
checkpoint); pruning never removes the newest complete one. A write that fails on
any rank (a full disk: ENOSPC, or torch's short-write errors) stops every rank together with one
message, ``disk full at PATH; checkpoint step_N is intact``; the unfinished tag is removed.

Nothing read here can run code: the engine's own state is JSON and safetensors, and DeepSpeed's
``.pt`` files are loaded with ``torch.load(weights_only=True)`` allowing only the few DeepSpeed
classes its optimizer states hold (:func:`safe_load`, also through :class:`SafeCheckpointEngine`,
DeepSpeed's checkpoint-engine hook, and around DeepSpeed's ``zero_to_fp32`` for the export).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from catlip import __version__
from catlip.readers import load_json
from engine.distributed import cuda_available

CKPT_DIR = "checkpoints"
COMPLETE = "complete.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (incomplete, unsafe, or from another setup)."""


class SaveFailed(CheckpointError):
    """A save that failed on some rank (``disk full at PATH; checkpoint step_N is intact``),
    raised on every rank alike: rank 0 reports it."""

    on_every_rank = True


# What a failed write says of a full disk: errno ENOSPC/EDQUOT (Python, safetensors' "os error 28"),
# or torch's short-write errors, which lose the errno (then the free space decides).
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SPACE_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
_SHORT_WRITE_WORDS = ("unexpected pos", "iostream error", "file write failed")
_NEARLY_FULL = 1 << 20  # bytes free below which a short write is put down to space


def _attempt(write: Callable[[], Any], path: Path) -> tuple[Path, BaseException] | None:
    """Run ``write``; None, or (what failed, why). Errors that are not I/O (a bug) also keep the
    ranks together, and their traceback is printed on this rank."""
    try:
        write()
    except Exception as err:  # noqa: BLE001 - reported through _agree on every rank
        if not isinstance(err, OSError | RuntimeError) and type(err).__name__ != "SafetensorError":
            traceback.print_exc()
        return Path(getattr(err, "filename", None) or path), err
    return None


def _describe(where: Path, err: BaseException) -> str:
    if _out_of_space(err, where):
        return f"disk full at {where}"
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"could not write {where} ({type(err).__name__}: {first})"


def _out_of_space(err: BaseException, where: Path) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _SPACE_ERRNOS:
            return True
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    if any(w in text for w in _SPACE_WORDS):
        return True
    if not any(w in text for w in _SHORT_WRITE_WORDS):
        return False
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free < _NEARLY_FULL


# ------------------------------------------------------------------------------------ safe loading
def _allowed_globals() -> list:
    """The classes DeepSpeed 0.19's checkpoints pickle besides tensors and containers: plain data
    records (a dataclass, an enum, the loss scaler's few numbers), no code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load`` that refuses any pickled callable outside the allow-list, with a clear error."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return _torch_load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it asks to build objects this engine does not allow "
            f"(a file from another program, or a crafted one); nothing in it was run. ({str(err)[:300]})"
        ) from None


_torch_load = torch.load


@contextlib.contextmanager
def _torch_load_weights_only() -> Iterator[None]:
    """Within the block, every ``torch.load`` (DeepSpeed's ``zero_to_fp32`` calls it with
    ``weights_only=False``) goes through :func:`safe_load`."""

    def load(f, map_location=None, weights_only=None, **kwargs):
        return safe_load(f, map_location=map_location, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = _torch_load


def safe_checkpoint_engine(config: Any) -> Any:
    """DeepSpeed's torch checkpoint engine with :func:`safe_load` as its ``load``."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        failure: tuple[Path, BaseException] | None = None  # the first write of this save that failed

        def save(self, state_dict: Any, path: str) -> None:
            """Write, or record why not (torch reports a short write as a RuntimeError), so that
            DeepSpeed goes on to its barriers on this rank too; later writes of a failed save are
            skipped (the disk is full)."""
            if self.failure is None:
                try:
                    super().save(state_dict, path)
                except (OSError, RuntimeError) as err:
                    self.failure = (Path(path), err)

        def load(self, path: str, map_location: Any = None) -> Any:
            # mmap: the file's tensors are read as DeepSpeed copies them into its own buffers, so a
            # rank never holds its optimizer file beside its live states (ViT-H/16 ZeRO-3 on 2 CPU
            # ranks: 10.95 GB peak per rank on resume without, 7.51 GB with; perf/results/zero3_cpu.md)
            return safe_load(path, map_location=map_location, mmap=True)

    return SafeCheckpointEngine(config)


# ------------------------------------------------------------------------------------ RNG and extras
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able states, tensor states) of Python's, NumPy's, torch's and CUDA's generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if cuda_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return state, tensors


def set_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and cuda_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# ------------------------------------------------------------------------------------ the checkpointer
class Checkpointer:
    """Saves and restores one run's checkpoints; every rank calls :meth:`save` and :meth:`resume`."""

    def __init__(self, engine: Any, out_dir: Path, *, keep: int, log: Callable[[str], None] = print) -> None:
        self.engine, self.dir, self.keep, self.log = engine, Path(out_dir) / CKPT_DIR, max(keep, 1), log
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        engine.checkpoint_engine = safe_checkpoint_engine(engine._config)
        copy_scripts = engine._copy_recovery_script  # rank 0 copies zero_to_fp32.py on every save

        def copy_or_record(save_path: str) -> None:
            try:
                copy_scripts(save_path)
            except OSError as err:
                writer = engine.checkpoint_engine
                writer.failure = writer.failure or (Path(save_path) / "zero_to_fp32.py", err)

        engine._copy_recovery_script = copy_or_record

    # ---------------------------------------------------------------------------- what is on disk
    @staticmethod
    def is_complete(tag: Path) -> bool:
        """Whether ``tag`` has its completion marker and every file the marker lists, at its size."""
        try:
            files = load_json(tag / COMPLETE)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return all(
            (tag / name).is_file() and (tag / name).stat().st_size == size for name, size in files.items()
        )

    def complete_tags(self) -> list[Path]:
        """Complete checkpoints, newest first (:func:`complete_tags`)."""
        return complete_tags(self.dir)

    def latest(self) -> Path | None:
        """The newest complete checkpoint (``latest`` names it; it is not trusted blindly)."""
        tags = self.complete_tags()
        return tags[0] if tags else None

    # ---------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        *,
        loader: Any,
        ema: dict | None,
        config: dict,
        vocab: dict | None = None,
        ema_layout: dict | None = None,
    ) -> Path:
        """Write tag ``step_<N>``: all ranks' files, then the marker, then ``latest``.

        A write that fails on any rank (a full disk above all) does not leave the others waiting:
        each rank records its failure, and at the next point where the ranks meet anyway they
        exchange what failed (:meth:`_agree`), so every rank raises :class:`SaveFailed` together,
        with the earlier checkpoints untouched and the unfinished tag removed."""
        tag = f"step_{step:08d}"
        path = self.dir / tag
        client = {
            "step": step,
            "world_size": self.world_size,
            "config": config,
            "vocab": vocab or {},
            "catlip_version": __version__,
        }
        self._agree(_attempt(lambda: self._write_extras(path, loader, ema, ema_layout), path), path)
        writer = self.engine.checkpoint_engine
        writer.failure = None
        # DeepSpeed's own collectives run on every rank whatever fails: its writes go through
        # `writer`, which records a failure instead of raising it (SafeCheckpointEngine)
        self.engine.save_checkpoint(str(self.dir), tag=tag, client_state=client, save_latest=False)
        failure = writer.failure or _attempt(lambda: self._flush(path), path)
        self._agree(failure, path)  # every rank's files are written and flushed
        if self.rank == 0:
            failure = _attempt(lambda: self._mark_complete(path, step), path)
        self._agree(failure if self.rank == 0 else None, path)
        return path

    def _write_extras(self, path: Path, loader: Any, ema: dict | None, ema_layout: dict | None) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (path / COMPLETE).unlink(missing_ok=True)  # a re-save of this step is incomplete until done
        state, tensors = rng_state()
        extra = {"rng": state, "data": loader.state_dict() if hasattr(loader, "state_dict") else None}
        if ema_layout is not None:
            extra["ema"] = ema_layout  # whole parameters, or this rank's ZeRO-3 partitions
        if ema is not None:
            tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
        json_path, st_path = path / f"extra_rank{self.rank}.json", path / f"extra_rank{self.rank}.safetensors"
        _write_atomic(json_path, json.dumps(extra))
        save_file(tensors, str(st_path) + ".tmp")
        os.replace(str(st_path) + ".tmp", st_path)

    @staticmethod
    def _flush(path: Path) -> None:
        for f in path.iterdir():  # this rank's files, and any it can see, reach the disk
            if f.is_file():
                _fsync(f)

    def _mark_complete(self, path: Path, step: int) -> None:
        """Rank 0, once every rank's files are on disk: the marker, then ``latest``, then pruning."""
        files = {
            p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != COMPLETE
        }
        marker = {"step": step, "saved": time.time(), "catlip_version": __version__, "files": files}
        _write_atomic(path / COMPLETE, json.dumps(marker, indent=1) + "\n")
        _write_atomic(self.dir / "latest", path.name)
        self._prune()
        self.log(f"checkpoint: {path}")

    def _agree(self, failure: tuple[Path, BaseException] | None, path: Path) -> None:
        """Where every rank meets: each says what failed (None: nothing); if any rank failed, all
        raise :class:`SaveFailed` with the first failure in rank order, after rank 0 removed the
        unfinished tag (its space comes back; a complete one is kept)."""
        said = [None] * self.world_size
        if failure is not None:  # a file of the tag: the tag is named (the rest says which rank)
            where, err = failure
            failure = (path if path in where.parents else where), err
        dist.all_gather_object(said, None if failure is None else _describe(*failure))
        failed = [text for text in said if text]
        if not failed:
            return
        if self.rank == 0 and not self.is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
        intact = self.latest()
        raise SaveFailed(
            f"{failed[0]}; "
            + (f"checkpoint {intact.name} is intact" if intact else "no earlier checkpoint exists")
        )

    def _prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; drop older ones and incomplete leftovers
        older than the newest complete one."""
        complete = self.complete_tags()
        keep = {t.name for t in complete[: self.keep]}
        newest = complete[0].name if complete else ""
        for tag in (p for p in self.dir.glob("step_*") if p.is_dir()):
            if tag.name not in keep and (tag in complete or tag.name < newest):
                shutil.rmtree(tag, ignore_errors=True)

    # ---------------------------------------------------------------------------- resume
    def resume(self, path: str | Path | None, *, loader: Any) -> tuple[int, dict | None, dict] | None:
        """Restore from ``path`` (a tag directory) or, by default, the newest complete checkpoint,
        falling back to older complete ones if one fails to load. Returns (step, EMA weights, the
        checkpoint's client state: config, vocab), or None when there is no checkpoint."""
        if path is not None:
            path = Path(path)
            if not path.is_dir():
                raise CheckpointError(f"run.resume: {path} is not a checkpoint directory")
            if not self.is_complete(path):
                raise CheckpointError(f"run.resume: {path} is incomplete (no {COMPLETE} or files missing)")
            return self._load(path, loader)
        self._report_pointer()
        candidates = self.complete_tags()
        for i, tag in enumerate(candidates):
            try:
                return self._load(tag, loader)
            except CheckpointError:
                raise  # unsafe or from another setup: never silently skipped
            except (OSError, RuntimeError, KeyError, ValueError) as err:
                older = candidates[i + 1].name if i + 1 < len(candidates) else None
                if older is None:
                    raise CheckpointError(
                        f"{tag} failed to load ({err}) and no older checkpoint is complete"
                    ) from err
                self.log(f"resume: {tag} failed to load ({str(err)[:200]}); trying {older}")
        return None

    def _report_pointer(self) -> None:
        pointer = self.dir / "latest"
        if not pointer.exists():
            return
        name = pointer.read_text().strip()
        if not name:
            self.log(f"resume: {pointer} is empty; using the newest complete checkpoint")
        elif not self.is_complete(self.dir / name):
            self.log(
                f"resume: {pointer} names {name}, which is missing or incomplete; using the newest complete one"
            )
        for tag in sorted((p for p in self.dir.glob("step_*") if p.is_dir()), reverse=True):
            if not self.is_complete(tag):
                self.log(f"resume: skipping {tag.name}: incomplete (a save that did not finish)")

    def _load(self, path: Path, loader: Any) -> tuple[int, dict | None, dict]:
        from safetensors.torch import load_file

        from engine import reshard

        if reshard.written_by(path) != self.world_size:  # model, optimizer, EMA, data: resharded
            return reshard.resume(self, path, loader)
        extra_json = path / f"extra_rank{self.rank}.json"
        load_path, client = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}")
        extra = load_json(extra_json)  # a ValueError: resume falls back to an older checkpoint
        tensors = load_file(str(path / f"extra_rank{self.rank}.safetensors"))
        if extra["data"] is not None:
            loader.load_state_dict(extra["data"])
        set_rng_state(extra["rng"], tensors)
        ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")} or None
        self.log(f"resumed from {path} at step {int(client['step'])}")
        return (
            int(client["step"]),
            ema,
            {"config": client.get("config") or {}, "vocab": client.get("vocab") or {}, "path": path},
        )


def complete_tags(checkpoints: Path) -> list[Path]:
    """The complete checkpoints in a ``checkpoints/`` folder, newest first: by the time
    ``complete.json`` records (its file time for markers without one), then by step. Not by step
    alone: a run continued from an older checkpoint saves lower steps later than the abandoned
    higher ones, and those are what ``resume: auto`` must continue."""
    tags = [p for p in Path(checkpoints).glob("step_*") if p.is_dir() and Checkpointer.is_complete(p)]
    return sorted(tags, key=lambda t: (_saved_at(t), t.name), reverse=True)


def _saved_at(tag: Path) -> float:
    try:
        saved = load_json(tag / COMPLETE).get("saved")
        return float(saved) if isinstance(saved, int | float) else (tag / COMPLETE).stat().st_mtime
    except (OSError, ValueError, AttributeError):  # pruned meanwhile, or not a marker of ours
        return 0.0


# ------------------------------------------------------------------------------------ export
def ema_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint tag, whole: under ZeRO-3 each rank saved the EMA of its flat
    partition of every parameter; they are concatenated in rank order, cut to size and reshaped."""
    from safetensors.torch import load_file

    metas = sorted(checkpoint.glob("extra_rank*.json"), key=lambda p: int(p.stem[len("extra_rank") :]))
    if not metas:
        raise CheckpointError(f"{checkpoint} holds no extra_rank*.json: not a checkpoint of this engine")
    layout = load_json(metas[0], CheckpointError).get("ema")
    if layout is None:
        raise CheckpointError(f"{checkpoint} has no EMA weights (the run had optim.ema_decay 0)")
    used = metas if layout["partitioned"] else metas[:1]  # ZeRO 0-2: every rank holds the whole EMA
    tensors = [load_file(str(m.with_suffix(".safetensors"))) for m in used]
    out = {}
    for name, shape in layout["shapes"].items():
        flat = torch.cat([r[f"ema.{name}"].reshape(-1) for r in tensors])
        out[name] = flat[: math.prod(shape)].view(shape).clone()
    return out


def resolve_tag(checkpoint: str | Path) -> Path:
    """A checkpoint tag directory from a tag, a ``checkpoints/`` dir (its newest complete tag) or a
    run's out_dir."""
    checkpoint = Path(checkpoint)
    if (checkpoint / CKPT_DIR).is_dir():  # a run's out_dir
        checkpoint = checkpoint / CKPT_DIR
    if not (checkpoint / COMPLETE).is_file() and any(checkpoint.glob("step_*")):  # the checkpoints dir
        tags = complete_tags(checkpoint)
        if not tags:
            raise CheckpointError(f"{checkpoint} holds no complete checkpoint")
        checkpoint = tags[0]
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint directory")
    return checkpoint


def model_states_file(checkpoint: Path) -> Path:
    """Rank 0's DeepSpeed model-states file of a tag: ZeRO-3 names one per rank, stages 0-2 write one."""
    files = [
        checkpoint / "mp_rank_00_model_states.pt",
        checkpoint / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    ]
    found = [f for f in files if f.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{checkpoint} holds no DeepSpeed model states (looked for {[f.name for f in files]})"
        )
    return found[0]


def consolidate(
    checkpoint: str | Path, *, ema: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The whole fp32 state dict of a (ZeRO-partitioned) checkpoint, and its metadata as strings:
    ``catlip_config`` (the run config, JSON), ``vocab`` (the vocabulary's path, size and SHA-256,
    JSON), ``step``, ``weights`` ("trained" or "ema"), ``catlip_version`` (this code's version, the
    export's writer) and ``checkpoint_catlip_version`` (the version that saved the checkpoint; empty
    for checkpoints that predate the record). ``ema``: the EMA of the weights."""
    checkpoint = resolve_tag(checkpoint)
    found = model_states_file(checkpoint)
    states = safe_load(found)
    stage = (states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    if ema:
        state, source = ema_state(checkpoint), f"{checkpoint} (the EMA weights, extra_rank*.safetensors)"
    elif stage:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 prints its progress; on stderr, so stdout stays the command's own output
        with _torch_load_weights_only(), contextlib.redirect_stdout(sys.stderr):
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        source = f"{checkpoint} (ZeRO-{stage}'s fp32 partitions)"
    else:
        state, source = states["module"], found
    _check_weights(state, source)
    state = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
    meta = {
        "catlip_config": json.dumps(states.get("config") or {}),
        "vocab": json.dumps(states.get("vocab") or {}),
        "step": str(states.get("step")),
        "weights": "ema" if ema else "trained",
        "catlip_version": __version__,
        "checkpoint_catlip_version": str(states.get("catlip_version") or ""),
    }
    return state, meta


MODEL_SOURCES = (
    "a checkpoint directory (tag, checkpoints/ or run folder) or a `catlip export` .safetensors file"
)


def read_model(path: str | Path, *, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(fp32 state dict, metadata) of a checkpoint directory (:func:`consolidate`) or a safetensors
    export (its tensors, and the metadata :func:`export_fp32` wrote). ``ema`` applies to a
    directory; an export holds the weights it was made from. Weights that are not floating point
    (int8) or not finite (NaN, inf) are refused, naming the file and the tensor
    (:func:`catlip.models.check_weights`; also in :func:`consolidate`, so in every export). Every
    failure is a :class:`CheckpointError` naming the path and what was expected."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory ({MODEL_SOURCES})")
    if path.is_dir():
        try:
            return consolidate(path, ema=ema)
        except CheckpointError:
            raise
        except (FileNotFoundError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: not a usable checkpoint ({err})") from None
    if ema:
        raise CheckpointError(f"{path}: --ema applies to a checkpoint directory; export with --ema")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a safetensors file ({MODEL_SOURCES}): {err}") from None
    _check_weights(state, path)
    return {k: v.float() for k, v in state.items()}, meta


def _check_weights(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Weights that are not floating point or not finite are refused (catlip.models.check_weights)."""
    from catlip.models import WeightsError, check_weights

    try:
        check_weights(state, str(source))
    except WeightsError as err:
        raise CheckpointError(str(err)) from None


def export_fp32(checkpoint: str | Path, out: str | Path, *, ema: bool = False) -> Path:
    """Consolidate a (ZeRO-partitioned) checkpoint tag directory into one fp32 safetensors file
    (metadata as :func:`consolidate`'s); ``ema``: its EMA weights instead of the trained ones."""
    from safetensors.torch import save_file

    state, meta = consolidate(checkpoint, ema=ema)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    return out
