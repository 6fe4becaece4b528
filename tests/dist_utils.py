"""Run a function on N gloo ranks spawned from a test (no launcher), collecting each rank's result."""

from __future__ import annotations

import os
import sys
import traceback

import torch.multiprocessing as mp

from engine.distributed import free_port


def _worker(rank, world, port, fn, kwargs, queue):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    code = 0
    try:
        queue.put((rank, "ok", fn(rank, **kwargs)))
    except BaseException:  # noqa: BLE001 - reported to the test process
        queue.put((rank, "error", traceback.format_exc()))
        code = 1
    finally:
        from engine.distributed import shutdown

        try:
            shutdown()
        except Exception:  # noqa: BLE001 - a peer that died already; its error is in the queue
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # A finished gloo rank sometimes aborts in static destructors at exit: skip them.
    os._exit(code)


def run_ranks(fn, world: int = 2, **kwargs) -> list:
    """fn(rank, **kwargs) on ``world`` processes; returns the results in rank order or raises."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, kwargs, queue)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    results: dict[int, object] = {}
    errors = []
    while not queue.empty():
        rank, status, value = queue.get()
        if status == "ok":
            results[rank] = value
        else:
            errors.append(f"rank {rank}:\n{value}")
    if errors or len(results) != world:
        codes = [p.exitcode for p in procs]
        raise AssertionError("".join(errors) or f"ranks exited with {codes} and returned {sorted(results)}")
    return [results[r] for r in range(world)]
