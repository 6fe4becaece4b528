"""``python -m engine.launch``: torchrun on one machine, every listening socket on 127.0.0.1.

torch's TCPStore server listens on every interface whatever address it is given: under
``torchrun --standalone``, ``torchrun --rdzv-endpoint 127.0.0.1:PORT`` or ``MASTER_ADDR=127.0.0.1``,
``ss -ltn`` shows the rendezvous store and the workers' store on ``*:PORT`` (torch 2.13), key-value
stores without authentication, open to the network for as long as the job runs. A TCPStore listens
only where it is told when it is handed a bound socket (``master_listen_fd``), and a later
multi-tenant store on the same port in the same process reuses that server instead of opening one.
So this runs torchrun's own ``run`` (every torchrun option but the rendezvous ones) with:

  * the rendezvous store made first, from a socket bound to a free port of 127.0.0.1; torchrun's
    c10d rendezvous (``--rdzv-endpoint 127.0.0.1:PORT``, one node) then uses it;
  * the workers' store not shared from the agent (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``): rank 0
    hosts it at MASTER_ADDR 127.0.0.1 (``--local-addr``) from a loopback socket as well
    (:func:`engine.distributed.init_distributed`, which also puts gloo on the loopback interface).

    OMP_NUM_THREADS=1 python -m engine.launch --nproc_per_node 2 -m engine.train --config configs/coco_tiny_cpu.yaml

Ctrl-C ends the job with status 130 and no report of its own (rank 0 prints where it stopped), and
ranks that stopped on an error they named in one line (status 2) end it with 2; anything else gets
torchrun's failure report. For several machines, run torchrun (or the deepspeed launcher) itself:
docs/cluster.md.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import uuid
from typing import Any

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from engine.distributed import LOOPBACK, loopback_tcp_store

# engine.train's exits that it explains itself in one line: an error it names (2), an interrupt (130)
QUIET_EXITS = {2, 130}
# options this launcher sets itself, with torchrun's defaults
_RENDEZVOUS = {"rdzv_backend": "static", "rdzv_endpoint": "", "master_addr": "127.0.0.1", "local_addr": None}


def _store() -> tuple[Any, int]:
    """The rendezvous store's server, on a free port of 127.0.0.1 (kept alive by the caller)."""
    store = loopback_tcp_store(LOOPBACK, 0, timeout=datetime.timedelta(seconds=900))
    return store, store.port


@record
def main(argv: list[str] | None = None) -> None:
    from torch.distributed.run import get_args_parser, parse_min_max_nnodes, run

    parser = get_args_parser()
    parser.prog = "python -m engine.launch"
    parser.description = (
        "torchrun for one machine, with the rendezvous and the workers' stores listening on 127.0.0.1 "
        "only (torchrun's own listen on every interface). torchrun's options, less the rendezvous ones."
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    given = [f"--{k.replace('_', '-')}" for k, default in _RENDEZVOUS.items() if getattr(args, k) != default]
    if args.master_port is not None:
        given.append("--master-port")
    if given or parse_min_max_nnodes(args.nnodes)[1] != 1:
        parser.error(
            f"{' '.join(given) or '--nnodes ' + args.nnodes}: this launcher runs one machine and sets the "
            "rendezvous itself (on 127.0.0.1); for several machines use torchrun or the deepspeed launcher "
            "(docs/cluster.md)"
        )
    store, port = _store()  # noqa: F841 - the rendezvous reuses this server (multi-tenant, same port)
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    args.standalone = False
    args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", f"{LOOPBACK}:{port}", str(uuid.uuid4())
    args.local_addr = LOOPBACK
    # the agent's own notices ("Received 2 death signal, shutting down workers", ...) are not the
    # one line a stopped job prints; its failure report (ChildFailedError) still comes below
    for name in list(logging.Logger.manager.loggerDict):  # each set its own level on import
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        run(args)
    except SignalException as err:  # Ctrl-C: the ranks were stopped, rank 0 said where
        sys.exit(128 + int(err.sigval))
    except ChildFailedError as err:
        codes = {failure.exitcode for failure in err.failures.values()}
        if codes <= QUIET_EXITS:  # the ranks said what stopped them, in one line: no second report
            sys.exit(max(codes))
        raise


if __name__ == "__main__":
    main()
