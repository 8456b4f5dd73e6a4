"""Ingest and run reports, stored with the cohort so every failure and warning stays on record."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import zarr

from storage.layout import (REPORTS, group_attrs, new_staging_dir, open_root, publish, replace_group_attrs, store_path,
                            write_group_json)

RUN_PREFIX = "run-"
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
FAILURE_LOG = "failures.jsonl"


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime(STAMP_FORMAT)


def write_ingest_report(store: str | Path, source: str | Path, entries: list[dict[str, Any]]) -> str:
    """Store one run's report under `reports/ingest-<UTC time>`; returns that key."""
    root = open_root(store, create=True)
    stamp = _stamp()
    key = f"{REPORTS}/ingest-{stamp}"
    group = root.require_group(key)
    group.attrs.update({"source": str(Path(source).resolve()), "finished": stamp, "entries": entries})
    return key


def read_ingest_reports(store: str | Path) -> list[dict[str, Any]]:
    """Every stored ingest report, oldest first."""
    root = open_root(store)
    reports: zarr.Group = root[REPORTS]  # type: ignore[assignment]
    return [dict(reports[name].attrs) for name in sorted(reports.group_keys()) if name.startswith("ingest-")]


class RunReport:
    """The record of one `msnl run`, under `reports/run-<UTC time>`: the intervals it set out to
    process, and those that failed in a task (an unexpected error, a child process that died or
    was stopped, the CNN). Such failures leave no result in the store, so without this record
    they would read as "pending".

    The group's attributes (the intervals, when the run started and finished) are written when
    the run starts and when it finishes. Each failure is appended as one JSON line to
    `failures.jsonl` beside them the moment it is recorded, so a run that crashes keeps every
    failure recorded before it, and recording one costs the same however many came before."""

    def __init__(self, store: str | Path, intervals: list[tuple[str, str, str]],
                 found_done: Sequence[tuple[str, str, str]] = ()) -> None:
        """`intervals`: those this run processes; `found_done`: those it found done with its
        config and weights although an earlier run had failed them, whose failures it clears."""
        self.store = str(store)
        stamp = _stamp()
        self.key = f"{REPORTS}/{RUN_PREFIX}{stamp}"
        self.attrs: dict[str, Any] = {"started": stamp, "finished": None,
                                      "intervals": [[s, f"{a}->{b}"] for s, a, b in intervals],
                                      "found_done": [[s, f"{a}->{b}"] for s, a, b in found_done]}
        staged = new_staging_dir(self.store)
        write_group_json(staged, self.attrs)
        publish(self.store, staged, self.key)
        self._log = _log_path(store, self.key)

    def failed(self, subject: str, interval: str, status: str, message: str, stored_result: str | None = None,
               traceback: str = "") -> None:
        """Record a failure; `stored_result` is the result key of the prediction the interval
        had in the store when it failed, which this failure supersedes; `traceback`, where the
        task's error was raised."""
        line = json.dumps({"subject": subject, "interval": interval, "status": status, "message": message,
                           "stored_result": stored_result, "traceback": traceback}) + "\n"
        data = line.encode()
        fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A write may stop short (a disk filling up) and the next one raise: the line is
            # then the log's last, cut short, and the run stops on that error.
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def finish(self, done: int) -> None:
        self.attrs.update({"finished": _stamp(), "done": done})
        replace_group_attrs(self.store, self.key, self.attrs)


def _log_path(store: str | Path, key: str) -> Path:
    return store_path(store) / key / FAILURE_LOG


def failure_log(store: str | Path, key: str) -> Path | None:
    """The failure log of the run report at `key`, or None when that run recorded no task
    failure."""
    log = _log_path(store, key)
    return log if log.exists() else None


def run_report_files(store: str | Path) -> list[Path]:
    """The zarr.json of every stored run report, oldest first."""
    return sorted((store_path(store) / REPORTS).glob(f"{RUN_PREFIX}*/zarr.json"))


def run_reports_mtime(store: str | Path) -> float:
    """When any run report last changed (its attributes or its failure log); 0 with none."""
    stamps = [0.0]
    for path in (store_path(store) / REPORTS).glob(f"{RUN_PREFIX}*/*"):
        try:
            stamps.append(path.stat().st_mtime)
        except FileNotFoundError:  # being replaced this instant
            pass
    return max(stamps)


def _logged_failures(report: Path) -> list[dict[str, Any]]:
    """A report's failure log; a last line cut short by a crash is left out."""
    try:
        lines = (report / FAILURE_LOG).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    failures = []
    for line in lines:
        try:
            failures.append(json.loads(line))
        except ValueError:
            continue
    return failures


def _signature(report: Path) -> tuple[tuple[int, int, int] | None, ...] | None:
    """What identifies the content of a report's zarr.json and failure log: inode, mtime and
    size of each (None for an absent log); None when its zarr.json is absent (being replaced
    this instant). Attributes are replaced by a rename (a new inode) and the log only grows, so
    content that changed has another signature."""
    stats = []
    for name in ("zarr.json", FAILURE_LOG):
        try:
            st = (report / name).stat()
        except FileNotFoundError:
            stats.append(None)
        else:
            stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return None if stats[0] is None else tuple(stats)


# store's reports folder -> {report folder: (signature, attributes)}; one entry per report
# present at the last read, so a long-lived reader (the dashboard) rereads only the reports
# that changed since.
_read_cache: dict[Path, dict[Path, tuple[tuple, dict[str, Any]]]] = {}


def _read_report(report: Path) -> dict[str, Any] | None:
    attrs = group_attrs(report)
    if attrs is None:
        return None
    attrs["failures"] = tuple(attrs.get("failures", []) + _logged_failures(report))
    attrs["intervals"] = tuple(map(tuple, attrs.get("intervals", [])))
    attrs["found_done"] = tuple(map(tuple, attrs.get("found_done", [])))
    return attrs


def read_run_reports(store: str | Path) -> list[dict[str, Any]]:
    """Every stored run report's attributes, oldest first, with its `failures` (from its log,
    and from its attributes in reports written before the log); one being replaced this instant
    is skipped. `intervals` and `found_done` hold (subject, interval) tuples.

    Each report is parsed again only when its files changed since this process last read it:
    a run report lists every interval its run took on, so a store with many large runs would
    otherwise cost seconds at every read."""
    folder = store_path(store).resolve() / REPORTS
    cached = _read_cache.get(folder, {})
    fresh: dict[Path, tuple[tuple, dict[str, Any]]] = {}
    reports = []
    for meta in run_report_files(store):
        report = meta.parent.resolve()
        signature = _signature(report)
        if signature is None:
            continue
        hit = cached.get(report)
        attrs = hit[1] if hit is not None and hit[0] == signature else _read_report(report)
        if attrs is None:
            continue
        fresh[report] = (signature, attrs)
        reports.append({**attrs, "failures": [dict(f) for f in attrs["failures"]],
                        "intervals": list(attrs["intervals"]), "found_done": list(attrs["found_done"])})
    _read_cache[folder] = fresh
    return reports


def run_failures(store: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(subject, interval) -> the failure recorded by the latest run that took that interval
    on, for intervals whose latest run failed them; an interval that a later run took on again
    (and may still be processing), or found done, is not listed."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reversed(read_run_reports(store)):
        failures = {(f["subject"], f["interval"]): f for f in report["failures"]}
        for subject, interval in report["intervals"] + report["found_done"]:
            key = (subject, interval)
            if key not in latest:
                latest[key] = failures.get(key, {})
    return {key: failure for key, failure in latest.items() if failure}


def run_history(store: str | Path) -> pd.DataFrame:
    """One row per `msnl run` that had work to do, newest first: when it started and finished
    (UTC; NaT when no finish is recorded: still running, or stopped), the minutes between, the
    intervals it took on, how many it completed, and how many failed in a task."""
    reports = list(reversed(read_run_reports(store)))
    started, finished = (pd.to_datetime([r.get(field) for r in reports], format=STAMP_FORMAT, utc=True)
                         for field in ("started", "finished"))
    return pd.DataFrame({
        "started": started, "finished": finished, "minutes": (finished - started).total_seconds() / 60,
        "intervals": [len(r["intervals"]) for r in reports],
        "done": pd.array([r.get("done") for r in reports], dtype="Int64"),
        "failed": [len(r["failures"]) for r in reports],
    })
