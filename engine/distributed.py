"""Process-group set-up for DeepSpeed on GPUs (nccl) and on CPU ranks (gloo).

Works under ``python -m engine.launch`` (torchrun on one machine, engine/launch.py), the
``deepspeed`` launcher, ``torchrun``, plain environment variables, or a single
``python -m engine.train`` (which gets a one-rank group on a free local port).

When MASTER_ADDR is a loopback address (one machine: engine.launch, the deepspeed launcher without a
hostfile, a single process), nothing listens beyond it: rank 0 hosts the workers' store from a
socket bound to MASTER_ADDR (torch's TCPStore listens on every interface otherwise, whatever host it
is given; its later multi-tenant store on that port reuses this server), and gloo's sockets go on
the loopback interface (GLOO_SOCKET_IFNAME=lo unless set).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import sys
from typing import Any

LOOPBACK = "127.0.0.1"
_stores: dict[tuple[str, int], Any] = {}  # servers this process hosts, alive as long as it runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_tcp_store(host: str, port: int, *, timeout: datetime.timedelta) -> Any:
    """A TCPStore server listening on ``host`` (a loopback address) only, ``port`` 0 for a free
    one (read ``.port``): torch's listens on every interface unless handed a bound socket. Made
    multi-tenant, so that torch's own store on that port in this process reuses the server."""
    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK if host == "localhost" else host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise RuntimeError(
            f"cannot listen on {host}:{port} for the process group's store ({err}): another job holds "
            "the port? Set MASTER_PORT to a free one"
        ) from None
    port = sock.getsockname()[1]
    store = dist.TCPStore(
        host,
        port,
        None,
        True,
        timeout,
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=sock.detach(),
    )
    _stores[host, port] = store
    return store


def _listen_on_loopback(timeout: datetime.timedelta) -> None:
    """One machine (MASTER_ADDR a loopback address): rank 0 hosts the workers' store on it, gloo uses
    the loopback interface. Nothing to do where a torchrun agent hosts the store."""
    host = os.environ.get("MASTER_ADDR", "")
    if not is_loopback(host):
        return
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" or os.environ.get("RANK", "0") != "0":
        return
    port = int(os.environ["MASTER_PORT"])
    # a process group made again in this process (after destroy_process_group): a fresh store, not
    # the last group's keys; dropping the last reference ends that server and frees the port
    _stores.pop((host, port), None)
    loopback_tcp_store(host, port, timeout=timeout)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_env() -> None:
    """Defaults for a single process, and DeepSpeed's CPU accelerator where there is no GPU.

    Must run before ``import deepspeed`` (it picks its accelerator at import).
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", LOOPBACK)
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
        timeout = datetime.timedelta(seconds=timeout_s)
        _listen_on_loopback(timeout)
        deepspeed.init_distributed(dist_backend="nccl" if cuda_available() else "gloo", timeout=timeout)
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
