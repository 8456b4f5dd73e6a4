"""Ingest a cohort source into a store, scans in parallel on Dask, with a progress bar."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask

from pipelines.progress import dask_progress
from pipelines.threads import default_workers
from storage import ingest_scan, read_source, write_cohort_table, write_ingest_report
from storage.layout import clear_staging, open_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did; `entries` is the report stored with the cohort."""

    report_key: str
    entries: list[dict[str, Any]]

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e["status"] == status)

    @property
    def failed(self) -> int:
        return self.count("failed")


def run_ingest(
    source: str | Path, store: str | Path, *, workers: int | None = None, progress: bool = True
) -> IngestSummary:
    """Ingest every scan of `source` into `store`; bad scans are reported, never fatal.

    Raises `ManifestError` only when the source as a whole can't be read.
    """
    records, problems = read_source(source)
    open_root(store, create=True)
    tasks = [dask.delayed(ingest_scan, pure=False)(str(store), rec) for rec in records]
    workers = workers or default_workers(len(tasks))
    if progress:
        print(f"ingest: {len(tasks)} scans into {store}")
        with dask_progress("ingest", minimum=0.5):
            outcomes = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    else:
        outcomes = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    entries = [o.as_dict() for o in outcomes]
    entries += [
        {
            "subject": p.subject,
            "visit": p.visit,
            "path": p.path,
            "status": "failed" if p.level == "error" else "warning",
            "message": p.message,
            "sha256": None,
        }
        for p in problems
    ]
    write_cohort_table(store)
    key = write_ingest_report(store, source, entries)
    clear_staging(store)
    return IngestSummary(key, entries)
