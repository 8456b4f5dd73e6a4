"""What recording one failure in a run report costs the `msnl run` client, by cohort size.

    .venv/bin/python benchmarks/run_report.py

A run report lists every interval the run took on and is rewritten whole (staged, then
renamed into place) at each task failure, so a run that crashes keeps what it recorded. Prints
seconds per recorded failure, written with zarr's own attribute writer (msnl until 2026-12-07)
and with `storage.layout.write_group_json` (now), for 100, 1,000 and 6,000 intervals, with
3 kB tracebacks; the mean of the first 50 failures.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.layout import new_staging_dir, open_root, publish  # noqa: E402
from storage.report import RunReport  # noqa: E402

FAILURES = 50


class ZarrWrittenReport(RunReport):
    """The report as msnl wrote it before: attributes through zarr."""

    def _write(self) -> None:
        staged = new_staging_dir(self.store)
        zarr.open_group(staged, mode="w", zarr_format=3).attrs.update(self.attrs)
        publish(self.store, staged, self.key)


def per_failure(kind: type[RunReport], intervals: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "store.zarr")
        open_root(store, create=True)
        todo = [(f"{i:05d}", "01", "02") for i in range(intervals)]
        report = kind(store, todo)
        start = time.perf_counter()
        for subject, a, b in todo[:FAILURES]:
            report.failed(subject, f"{a}->{b}", "failed", "IsolatedTaskError: step one of sub-x: ...", traceback="x" * 3000)
        return (time.perf_counter() - start) / FAILURES


def main() -> None:
    print("intervals | zarr's attribute writer s | write_group_json s")
    for intervals in (100, 1000, 6000):
        print(f"{intervals} | {per_failure(ZarrWrittenReport, intervals):.4f} | {per_failure(RunReport, intervals):.4f}")


if __name__ == "__main__":
    main()
