"""What recording task failures in a run report costs the `msnl run` client.

    .venv/bin/python benchmarks/run_report.py

A run report lists every interval the run took on. Until 2026-12-07 it was rewritten whole
(staged, then renamed into place) at each task failure, failures included, so each failure
cost more than the one before; now each failure is appended as one line to the report's
failure log. Prints, for both, the mean seconds per failure over a run's first 50 failures
(100, 1,000 and 6,000 intervals), and the seconds a run of 2,000 intervals spends recording
failures when every one fails (a systematic error: bad weights, a full disk), with 3 kB
tracebacks.

Then what reading the reports costs a long-lived reader (the dashboard, `msnl status`) on a
store holding 100 finished runs of 6,000 intervals, 5 failures each: the first read, a read
with nothing changed, and a read after one more failure of the newest run, with each report
parsed at every read (as before 2026-12-07, the parse cache cleared first) and now.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.layout import new_staging_dir, open_root, publish, write_group_json  # noqa: E402
import storage.report  # noqa: E402
from storage.report import RunReport, read_run_reports, run_failures, run_history  # noqa: E402

FIRST = 50
ALL_FAIL = 2000
RUNS, RUN_INTERVALS, RUN_FAILURES = 100, 6000, 5


class WholeRewriteReport(RunReport):
    """The report as msnl wrote it before: the failures in its attributes, the group
    republished at each one."""

    def failed(self, subject, interval, status, message, stored_result=None, traceback=""):
        self.attrs.setdefault("failures", []).append({"subject": subject, "interval": interval, "status": status,
                                                      "message": message, "stored_result": stored_result,
                                                      "traceback": traceback})
        staged = new_staging_dir(self.store)
        write_group_json(staged, self.attrs)
        publish(self.store, staged, self.key)


def recording(kind: type[RunReport], intervals: int, failures: int) -> float:
    """Seconds spent recording the first `failures` failures of a run of `intervals`."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "store.zarr")
        open_root(store, create=True)
        todo = [(f"{i:05d}", "01", "02") for i in range(intervals)]
        report = kind(store, todo)
        start = time.perf_counter()
        for subject, a, b in todo[:failures]:
            report.failed(subject, f"{a}->{b}", "failed", "IsolatedTaskError: step one of sub-x: ...", traceback="x" * 3000)
        return time.perf_counter() - start


def _reads(store: Path, newest: RunReport, cache: bool) -> list[float]:
    """Seconds for open_results' three report reads (run_failures, then run_history and
    read_run_reports, as the dashboard makes them): first, again, then after one more failure."""
    times = []
    for step in ("first", "again", "one more failure"):
        if step == "one more failure":
            newest.failed("99999", "01->02", "failed", "boom", traceback="x" * 3000)
        if not cache or step == "first":
            storage.report._read_cache.clear()
        start = time.perf_counter()
        for read in (run_failures, run_history, read_run_reports):
            if not cache:
                storage.report._read_cache.clear()
            read(store)
        times.append(time.perf_counter() - start)
    return times


def reading() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "store.zarr")
        open_root(store, create=True)
        todo = [(f"{i:05d}", "01", "02") for i in range(RUN_INTERVALS)]
        for run in range(RUNS):
            report = RunReport(store, todo)
            for subject, a, b in todo[run * RUN_FAILURES:(run + 1) * RUN_FAILURES]:
                report.failed(subject, f"{a}->{b}", "failed", "IsolatedTaskError: ...", traceback="x" * 3000)
            report.finish(RUN_INTERVALS - RUN_FAILURES)
            time.sleep(0.001)  # distinct report keys
        print(f"\n{RUNS} run reports of {RUN_INTERVALS} intervals: s for run_failures + run_history + read_run_reports")
        print("read | parsed at every read (before) | parsed when changed (now)")
        before, now = _reads(store, report, cache=False), _reads(store, report, cache=True)
        for step, b, n in zip(("first", "nothing changed", "one more failure"), before, now):
            print(f"{step} | {b:.2f} | {n:.2f}")


def main() -> None:
    print(f"mean s per failure over the first {FIRST}")
    print("intervals | rewritten whole (before) | appended (now)")
    for intervals in (100, 1000, 6000):
        before, now = (recording(kind, intervals, FIRST) / FIRST for kind in (WholeRewriteReport, RunReport))
        print(f"{intervals} | {before:.4f} | {now:.5f}")
    before, now = (recording(kind, ALL_FAIL, ALL_FAIL) for kind in (WholeRewriteReport, RunReport))
    print(f"every one of {ALL_FAIL} intervals failing, s in all | {before:.1f} | {now:.2f}")
    reading()


if __name__ == "__main__":
    main()
