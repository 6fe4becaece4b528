"""A one-batch-ahead prefetch thread for host-side batch work (CLIP's tokenisation).

While the step runs on batch k, the thread reads batch k+1 from the loader and applies the
objective's ``prepare`` to it, so the step never waits on tokenising captions. Resume stays exact:
the thread records the loader's ``state_dict()`` before each read, and :meth:`state_dict` returns
the state from before the batch it holds but has not handed out, i.e. the position after the last
batch the trainer consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Prefetcher:
    """Endless batches of ``loader`` (epoch after epoch), each passed through ``prepare``."""

    def __init__(self, loader: Any, prepare: Callable[[dict], dict]) -> None:
        self.loader, self.prepare = loader, prepare
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._it: Iterator[dict] | None = None
        self._pending: Future | None = None

    def _epochs(self) -> Iterator[dict]:
        while True:
            yield from self.loader

    def _fetch(self) -> tuple[Any, dict]:
        state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None
        return state, self.prepare(next(self._it))

    def __next__(self) -> dict:
        if self._pending is None:
            self._it = self._it or self._epochs()
            self._pending = self._pool.submit(self._fetch)
        _, batch = self._pending.result()  # re-raises the loader's error here
        self._pending = self._pool.submit(self._fetch)
        return batch

    def __iter__(self) -> Prefetcher:
        return self

    def state_dict(self) -> Any:
        if self._pending is None:
            return self.loader.state_dict()
        return self._pending.result()[0]

    def load_state_dict(self, state: Any) -> None:
        self._drop_pending()
        self.loader.load_state_dict(state)
        self._it = None

    def load_resharded(self, states: list) -> Any:
        """The loader's resume on another world size (engine/reshard.py), nothing read ahead."""
        self._drop_pending()
        self._it = None
        return self.loader.load_resharded(states)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.exception()  # wait; its error does not matter now
            self._pending = None

    def close(self) -> None:
        self._drop_pending()
        self._pool.shutdown(wait=True)
