"""Progress on long work, for people and for files: a tqdm bar when the stream is a terminal, and
otherwise (a file, a pipe, a SLURM log) plain lines, one per interval, with no carriage return, so
that the log reads line by line. Every long command (training, ``catlip vocab``, ``catlip pack``,
``catlip evaluate``) takes its bar from :func:`progress`; ``engine.logs`` re-exports it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

EVERY_S = 30.0  # seconds between plain lines, where the caller does not print its own


def progress(
    total: int | None = None,
    *,
    desc: str,
    unit: str,
    initial: int = 0,
    enabled: bool = True,
    every_s: float | None = EVERY_S,
    stream: TextIO | None = None,
    **tqdm_options: Any,
) -> Any:
    """A progress reporter with tqdm's ``update``, ``set_postfix``, ``write`` and ``close``.

    On a terminal (``stream``, default stderr, ``isatty()``): a tqdm bar on it. Otherwise
    :class:`Lines`: a plain line every ``every_s`` seconds and one at the end; ``every_s=None``
    prints none, for a caller that writes its own line per interval (the trainer, every
    ``run.log_every`` steps). ``enabled=False`` shows nothing either way (``write`` still prints).
    """
    stream = stream if stream is not None else sys.stderr
    if enabled and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=stream,
            dynamic_ncols=True,
            **tqdm_options,
        )
    return Lines(
        total, desc=desc, unit=unit, initial=initial, enabled=enabled, every_s=every_s, stream=stream
    )


def say(line: str) -> None:
    """``line`` on stdout: above a terminal's bar (``tqdm.write``), as a plain print elsewhere;
    flushed, so that a log file (stdout block-buffered) has it at once, not at exit."""
    from tqdm import tqdm

    tqdm.write(line)
    sys.stdout.flush()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def clock(seconds: float) -> str:
    """``seconds`` as h:mm:ss (hours unbounded: 27:03:09)."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Lines:
    """tqdm's interface as plain lines: ``desc: 1,024/4,096 caption (25%) | 512.0 caption/s | eta 0:00:06``."""

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str,
        initial: int = 0,
        enabled: bool = True,
        every_s: float | None = EVERY_S,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled, self.every_s = enabled, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._initial = self._shown = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and self.every_s is not None and time.monotonic() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, line: str) -> None:
        """``line`` on stdout, as ``tqdm.write`` does."""
        say(line)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.every_s is not None and self.n != self._shown:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        rate = (self.n - self._initial) / max(now - self._start, 1e-9)
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"eta {clock((self.total - self.n) / rate)}")
        else:
            parts.append(f"elapsed {clock(now - self._start)}")
        if self.postfix:
            parts.append(self.postfix)
        print(" | ".join(parts), file=self.stream, flush=True)
        self._last, self._shown = now, self.n

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
