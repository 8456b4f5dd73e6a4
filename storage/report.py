"""Ingest reports, stored with the cohort so every failure and warning stays on record."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zarr

from storage.layout import REPORTS, open_root


def write_ingest_report(store: str | Path, source: str | Path, entries: list[dict[str, Any]]) -> str:
    """Store one run's report under `reports/ingest-<UTC time>`; returns that key."""
    root = open_root(store, create=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{REPORTS}/ingest-{stamp}"
    group = root.require_group(key)
    group.attrs.update({"source": str(Path(source).resolve()), "finished": stamp, "entries": entries})
    return key


def read_ingest_reports(store: str | Path) -> list[dict[str, Any]]:
    """Every stored ingest report, oldest first."""
    root = open_root(store)
    reports: zarr.Group = root[REPORTS]  # type: ignore[assignment]
    return [dict(reports[name].attrs) for name in sorted(reports.group_keys()) if name.startswith("ingest-")]
