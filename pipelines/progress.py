"""Progress on long work: redrawn bars on a terminal, plain timed lines in a log.

A cluster job writes its output to a file. There a redrawn bar piles up carriage returns and
cursor moves: dask's bar redraws ten times a second, and `msnl run`'s three stacked bars move
the cursor up and down. So where the stream is not a terminal, each bar prints a plain line
instead, at most every `LOG_INTERVAL_S` seconds, and when it closes with a count not yet
printed."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from dask.callbacks import Callback
from dask.diagnostics import ProgressBar
from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def on_terminal(stream: Any) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes and captures)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def elapsed_text(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '2 h 07 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogBar:
    """The part of tqdm's interface msnl uses (`update`, `set_postfix`, `close`), printed as
    lines such as 'step one: 3/12 intervals (25 %), 4 min 00 s'. With no unit it counts in
    per cent only ('simulate: 40 % done, 12 s'), for bars whose steps are dask tasks."""

    def __init__(self, total: int, desc: str, unit: str | None, *, initial: int = 0, out: TextIO | None = None,
                 interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc.strip(), unit
        self._out = out if out is not None else sys.stderr
        self._interval, self._clock = interval, clock
        self._start = self._last = clock()
        self._postfix = ""
        self._closed = False
        self._printed: int | None = None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def elapsed(self) -> float:
        return self._clock() - self._start

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed != self.n:
                self._print(self._clock())

    def _print(self, now: float) -> None:
        self._last, self._printed = now, self.n
        share = 100 * self.n / self.total if self.total else 100.0
        count = f"{share:.0f} % done" if self.unit is None else f"{self.n}/{self.total} {self.unit}s ({share:.0f} %)"
        postfix = f", {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {count}, {elapsed_text(now - self._start)}{postfix}", file=self._out, flush=True)


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True, position: int = 0,
                 initial: int = 0, out: TextIO | None = None) -> Any:
    """A tqdm bar on stderr when it is a terminal, a `LogBar` otherwise; a silent tqdm when
    not `enabled`."""
    out = out if out is not None else sys.stderr
    if not enabled or on_terminal(out):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, position=position, file=out,
                    disable=not enabled)
    return LogBar(total, desc, unit, initial=initial, out=out)


class LogProgress(Callback):
    """dask's local-scheduler progress as `LogBar` lines (per cent of the graph's tasks). Like
    dask's bar, a compute shorter than `minimum` seconds prints nothing."""

    def __init__(self, desc: str, *, minimum: float = 0.0, out: TextIO | None = None,
                 interval: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self._desc, self._minimum, self._out, self._interval = desc, minimum, out, interval
        self._bar: LogBar | None = None

    def _start_state(self, dsk: Any, state: dict) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = LogBar(total, self._desc, None, out=self._out if self._out is not None else sys.stdout,
                           interval=self._interval)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk: Any, state: dict, errored: bool) -> None:
        bar, self._bar = self._bar, None
        if bar is not None and bar.elapsed() >= self._minimum:
            bar.close()


def dask_progress(desc: str, *, minimum: float) -> Callback:
    """Progress for a `dask.compute` on the local scheduler, on stdout as dask's own bar is:
    that bar on a terminal, `LogProgress` lines otherwise."""
    if on_terminal(sys.stdout):
        return ProgressBar(minimum=minimum)
    return LogProgress(desc, minimum=minimum)
