"""Process-group set-up for DeepSpeed on GPUs (nccl) and on CPU ranks (gloo).

Works under the ``deepspeed`` launcher, ``torchrun``, plain environment variables, or a single
``python -m engine.train`` (which gets a one-rank group on a free local port).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_env() -> None:
    """Defaults for a single process, and DeepSpeed's CPU accelerator where there is no GPU.

    Must run before ``import deepspeed`` (it picks its accelerator at import).
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not cuda_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(timeout_s: int = 600) -> tuple[int, int, int]:
    """Initialise (once) the default process group through DeepSpeed; return rank, world, local rank."""
    prepare_env()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        import deepspeed
        import deepspeed.comm.torch  # noqa: F401

        if not cuda_available():
            # DeepSpeed JIT-compiles a shared-memory all-reduce op for CPU ranks (~45-90 s, used by
            # its inference path only); training collectives go through gloo, so skip the build.
            sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda_available() else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda_available():
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def shutdown() -> None:
    """End a rank cleanly: barrier, destroy the group (a finished gloo rank can abort otherwise)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
