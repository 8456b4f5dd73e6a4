"""Progress output: bars on a terminal, plain timed lines in a log file."""
from __future__ import annotations

import io
import sys

import dask
from dask.diagnostics import ProgressBar

from pipelines.progress import LogBar, LogProgress, dask_progress, elapsed_text, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_bar_prints_at_most_once_per_interval_and_when_it_closes():
    out, clock = io.StringIO(), Clock()
    bar = LogBar(12, "step one", "interval", out=out, interval=30, clock=clock)
    for t in (5, 10, 20):
        clock.now = t
        bar.update(1)
    assert out.getvalue() == ""
    clock.now = 31
    bar.update(1)
    clock.now = 40
    bar.update(2)
    bar.set_postfix(loss="0.4213")
    clock.now = 185
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == [
        "step one: 4/12 intervals (33 %), 31 s",
        "step one: 6/12 intervals (50 %), 3 min 05 s, loss 0.4213",
    ]


def test_a_log_bar_closing_on_the_count_it_last_printed_adds_no_line():
    out, clock = io.StringIO(), Clock()
    bar = LogBar(2, "N4", "visit", out=out, interval=30, clock=clock)
    clock.now = 40
    bar.update(2)
    clock.now = 200
    bar.close()
    assert out.getvalue() == "N4: 2/2 visits (100 %), 40 s\n"


def test_a_bar_with_no_unit_counts_in_per_cent():
    out = io.StringIO()
    bar = LogBar(4, "ingest", None, initial=1, out=out, interval=0, clock=Clock())
    bar.update(1)
    assert out.getvalue() == "ingest: 50 % done, 0 s\n"


def test_elapsed_text():
    assert [elapsed_text(s) for s in (0.4, 59, 65, 3599, 7620)] == ["0 s", "59 s", "1 min 05 s", "59 min 59 s", "2 h 07 min"]


def test_bars_redraw_on_a_terminal_and_print_lines_in_a_file():
    assert isinstance(progress_bar(3, "N4", "visit", out=io.StringIO()), LogBar)
    terminal = Terminal()
    bar = progress_bar(3, "N4", "visit", out=terminal)
    assert not isinstance(bar, LogBar)
    bar.update(1)
    bar.close()
    assert "\r" in terminal.getvalue() and "1/3" in terminal.getvalue()
    silent = io.StringIO()
    bar = progress_bar(3, "N4", "visit", enabled=False, out=silent)
    bar.update(3)
    bar.close()
    assert silent.getvalue() == ""


def test_dask_progress_follows_stdout(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(dask_progress("ingest", minimum=0.5), LogProgress)
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert isinstance(dask_progress("ingest", minimum=0.5), ProgressBar)


def test_log_progress_reports_a_dask_compute_in_plain_lines():
    out = io.StringIO()
    tasks = [dask.delayed(lambda i: i * i)(i) for i in range(5)]
    with LogProgress("simulate", out=out, interval=0):
        assert dask.compute(*tasks, scheduler="threads", num_workers=2) == (0, 1, 4, 9, 16)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) >= 5
    assert all(line.startswith("simulate: ") for line in lines) and lines[-1].startswith("simulate: 100 % done")
    quiet = io.StringIO()
    with LogProgress("simulate", out=quiet, minimum=60):
        dask.compute(*tasks, scheduler="threads")
    assert quiet.getvalue() == ""
