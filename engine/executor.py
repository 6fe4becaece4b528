"""Where data preparation runs: this process, local worker processes, or Ray tasks.

``catlip vocab`` and ``catlip pack`` cut their input into tasks (a chunk of captions, an input
tar, a slice of a folder's samples) and hand them to an executor. Results come back as tasks
finish; the callers merge them by task index, so what they write does not depend on where, or in
which order, the tasks ran.

- ``LocalExecutor(1)``: every task in this process, in order (plain tracebacks, no pool).
- ``LocalExecutor(n)``: ``n`` forked worker processes. A worker that dies (killed, out of memory)
  ends the run with :class:`WorkerDied`; what finished before is kept by the caller.
- ``RayExecutor(address)``: Ray tasks, one CPU each, on the cluster at ``address`` (``"auto"``: the
  one running on this machine; ``"host:6379"`` or ``"ray://host:10001"``), or with no address on a
  Ray instance started for the run on this machine (as ``ray.init()`` does), shut down at the end. Ray re-runs a task whose worker died (up to 3 times). On a cluster, every node
  needs this package installed and the input and output paths mounted at the same place.

A task function is a module-level function ``fn(task, report)`` (Ray ships it by reference);
``report(n)`` adds ``n`` to the one progress bar the driver shows, whichever worker calls it (a queue
for local processes, a small actor for Ray). A task's own exception is returned as a
:class:`TaskFailure` for the caller to report, naming the task's file; the other tasks go on.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

Report = Callable[[int], None]
TaskFn = Callable[[Any, Report], Any]
POLL_S = 0.2  # how often the driver looks for progress while it waits for results


@dataclass
class TaskFailure:
    """A task that raised: its index and its own exception (Ray's wrapper removed)."""

    index: int
    error: BaseException


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its task; the run cannot go on."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


class LocalExecutor:
    """Tasks in this process (``workers=1``) or in ``workers`` forked processes."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.where = "1 process" if self.workers == 1 else f"{self.workers} local processes"
        self.forks = self.workers > 1  # state made before map_unordered is inherited by the workers

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map_unordered(self, fn: TaskFn, tasks: Iterable[Any], progress: Report) -> Iterator[tuple[int, Any]]:
        """``(index, result or TaskFailure)`` for each task, as they finish."""
        if self.workers == 1:
            for i, task in enumerate(tasks):
                try:
                    yield i, fn(task, progress)
                except Exception as err:  # noqa: BLE001 - the caller reports it with the task's file
                    yield i, TaskFailure(i, err)
            return
        yield from self._pool_map(fn, tasks, progress)

    def _pool_map(self, fn: TaskFn, tasks: Iterable[Any], progress: Report) -> Iterator[tuple[int, Any]]:
        # fork: workers inherit the loaded NLTK data and vocabulary instead of re-reading them.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        reports = ctx.Queue()
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_local, initargs=(reports,))
        todo = enumerate(tasks)
        running: dict[Any, int] = {}
        try:
            for i, task in itertools.islice(todo, 2 * self.workers):
                running[pool.submit(_run_local, fn, task)] = i
            while running:
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                _drain(reports, progress)
                for future in done:
                    i = running.pop(future)
                    yield i, _outcome(future, i)
                    for j, task in itertools.islice(todo, 1):
                        running[pool.submit(_run_local, fn, task)] = j
            _drain(reports, progress)
        except BrokenProcessPool as err:
            raise WorkerDied(
                f"a worker process died (killed, or out of memory) with {len(running)} task(s) unfinished"
            ) from err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            reports.close()


def _outcome(future: Any, index: int) -> Any:
    err = future.exception()
    if isinstance(err, BrokenProcessPool):
        raise err
    return future.result() if err is None else TaskFailure(index, err)


def _drain(reports: Any, progress: Report) -> None:
    total = 0
    try:
        while True:
            total += reports.get_nowait()
    except queue.Empty:
        pass
    if total:
        progress(total)


_reports: Any = None  # the worker process's queue to the driver's progress bar


def _init_local(reports: Any) -> None:
    global _reports
    _reports = reports


def _report_local(n: int) -> None:
    _reports.put(n)


def _run_local(fn: TaskFn, task: Any) -> Any:
    return fn(task, _report_local)


# -------------------------------------------------------------------------------------------- Ray
class RayExecutor:
    """Tasks as Ray tasks on the cluster at ``address``, or on a local instance started for the run.

    ``workers`` caps the tasks in flight (default: the cluster's CPUs); on a local instance it is
    also the number of CPUs it gets (default: all usable cores)."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline clusters; no prompt
        import ray

        self._ray = ray
        self._started = False
        if ray.is_initialized():
            pass  # a caller's own ray.init() (tests, notebooks): use it, leave it running
        elif address:
            ray.init(address=address, logging_level="warning")
        else:
            ray.init(num_cpus=workers or default_workers(), include_dashboard=False, logging_level="warning")
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or cpus
        self.where = f"Ray ({cpus} CPUs{' started for this run' if self._started else ''})"
        self.forks = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()

    def map_unordered(self, fn: TaskFn, tasks: Iterable[Any], progress: Report) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        counter = ray.remote(num_cpus=0)(_ProgressCounter).remote()
        remote = ray.remote(num_cpus=1, max_retries=3)(_run_ray)
        todo = enumerate(tasks)
        running: dict[Any, int] = {}

        def submit(n: int) -> None:
            for i, task in itertools.islice(todo, n):
                running[remote.remote(fn, task, counter)] = i

        submit(2 * self.workers)
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            if n := ray.get(counter.take.remote()):
                progress(n)
            for ref in done:
                i = running.pop(ref)
                try:
                    yield i, ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    yield i, TaskFailure(i, err.cause if isinstance(err.cause, BaseException) else err)
                except ray.exceptions.RayError as err:  # the worker died more often than retried
                    raise WorkerDied(f"a Ray worker died running task {i}: {err}") from err
                submit(1)
        if n := ray.get(counter.take.remote()):
            progress(n)


class _ProgressCounter:
    """The driver's progress, as a Ray actor: workers add, the driver takes."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


class _ThrottledReport:
    """``report`` for a Ray task: sums locally, sends to the actor at most every ``POLL_S``."""

    def __init__(self, counter: Any) -> None:
        self.counter, self.n, self.last = counter, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self.last >= POLL_S:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Send the sum; ``wait``: until the actor has added it (calls from different processes
        reach an actor in no set order, so a task's last report could otherwise arrive after the
        driver's final ``take``)."""
        if self.n:
            ref = self.counter.add.remote(self.n)
            if wait:
                import ray

                ray.get(ref)
        self.n, self.last = 0, time.monotonic()


def _run_ray(fn: TaskFn, task: Any, counter: Any) -> Any:
    report = _ThrottledReport(counter)
    try:
        return fn(task, report)
    finally:
        report.flush(wait=True)  # counted before the task's result is seen


def make_executor(workers: int | None = None, ray_address: str | None = None) -> LocalExecutor | RayExecutor:
    """``--workers N`` / ``--ray [ADDRESS]`` as the CLI gives them (``ray_address=""``: local Ray)."""
    if ray_address is None:
        return LocalExecutor(workers)
    return RayExecutor(ray_address or None, workers)


def add_executor_arguments(p: Any) -> None:
    """``--workers N`` and ``--ray [ADDRESS]`` for an argparse parser."""
    g = p.add_argument_group("where it runs")
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="local worker processes (default: all usable cores); with --ray, tasks in flight "
        "(default: the cluster's CPUs) and the CPUs of a Ray instance started for the run",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the tasks on Ray: on the cluster at ADDRESS (host:6379, ray://host:10001, or "
        "'auto' for the one running here), or, with no ADDRESS, on a Ray instance started on this "
        "machine for the run. Cluster nodes need this package and the same paths",
    )


def executor_from_args(args: Any) -> LocalExecutor | RayExecutor:
    return make_executor(args.workers, args.ray)
