"""`msnl status STORE`: where a store stands, as text, for a terminal without a browser (a
cluster's login node): intervals processed, pending and failed, the failures with their
messages, intervals flagged for review, and the latest runs. `--tracebacks` prints where each
task failure was raised instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from msnl.endpoints import interval_rows
from msnl.errors import StoreError
from msnl.qc import REVIEW_REGISTRATION_CORRELATION, coarser_visit_one
from storage import open_results, run_history
from storage.report import run_failures

RUNS_SHOWN = 3


def _run_line(run) -> str:
    when = f"{run.started:%Y-%m-%d %H:%M:%S} UTC"
    if pd.isna(run.finished):
        return f"  run started {when}, not finished (still running, or stopped): {run.intervals} interval(s), {run.failed} failed"
    return f"  run started {when}, took {run.minutes:.1f} min: {run.intervals} interval(s), {run.done} done, {run.failed} failed"


def _existing(store: str | Path) -> Path:
    path = Path(store)
    if not path.exists():
        raise StoreError(f"{path}: no such store. Check the path, or create it with `msnl run SOURCE {path}`.")
    return path


def status_report(store: str | Path, failures_shown: int = 20) -> str:
    """The text `msnl status` prints; `failures_shown` caps the failures listed."""
    path = _existing(store)
    results = open_results(path)
    lines = [f"status: {path}"]
    if not results.sizes.get("interval"):
        return "\n".join(lines + [f"  {results.sizes.get('subject', 0)} subjects, no intervals yet (subjects need two visits)"])
    rows = interval_rows(results, ["message", "new_lesion_count", "registration_quality"])
    failed = rows[~rows.status.isin(("ok", "pending"))]
    done = rows[rows.status == "ok"]
    lines.append(f"  {rows.subject.nunique()} subjects, {len(rows)} intervals: {len(done)} processed, "
                 f"{int((rows.status == 'pending').sum())} pending, {len(failed)} failed")
    if len(done):
        lines.append(f"  new lesions in the processed intervals: {int(done.new_lesion_count.sum())} "
                     f"({int((done.new_lesion_count > 0).sum())} of {len(done)} intervals have any)")
    if len(failed):
        lines.append("  failed:")
        lines += [f"    sub-{r.subject} {r.interval}: {r.status}: {r.message}" for r in failed.head(failures_shown).itertuples()]
        if len(failed) > failures_shown:
            lines.append(f"    … and {len(failed) - failures_shown} more: storage.open_results('{path}')")
    low = done[done.registration_quality < REVIEW_REGISTRATION_CORRELATION]
    coarse = coarser_visit_one(results)
    if len(low) or len(coarse):
        lines.append(f"  to review: {len(low)} processed interval(s) registered under {REVIEW_REGISTRATION_CORRELATION} "
                     f"correlation, {len(coarse)} whose visit 1 is sampled much coarser than visit 2 "
                     "(the CNN finds false new lesions there; the dashboard lists them)")
    runs = run_history(path)
    lines += [_run_line(run) for run in runs.head(RUNS_SHOWN).itertuples()]
    if len(runs) > RUNS_SHOWN:
        lines.append(f"  … and {len(runs) - RUNS_SHOWN} earlier run(s): storage.run_history('{path}')")
    return "\n".join(lines)


def tracebacks_report(store: str | Path, subject: str | None = None) -> str:
    """The text `msnl status --tracebacks` prints: each interval that failed in a task (an
    error, a child process that died, the CNN) and still shows as failed, with the traceback
    its run recorded; `subject` narrows it to one subject. Failures stored with a step-one
    result (a failed registration, no brain) are expected outcomes with a message, not errors,
    and have none."""
    path = _existing(store)
    results = open_results(path)
    shows = results.status.to_series().dropna().to_dict() if results.sizes.get("interval") else {}
    shown = []
    for (s, interval), failure in sorted(run_failures(path).items()):
        if subject is not None and s != subject:
            continue
        if shows.get((s, interval)) in (None, "ok"):
            continue  # a result published since the failure stands, or the interval left the cohort
        trace = failure.get("traceback", "").rstrip() or "(no traceback recorded: the task reported this failure itself, or its run predates tracebacks)"
        shown.append(f"sub-{s} {interval}: {failure['status']}: {failure['message']}\n{trace}")
    if not shown:
        who = f" for sub-{subject}" if subject is not None else ""
        return f"status: {path}: no task failure{who} to show (failures with a step-one result have a message only: msnl status {path})"
    return "\n\n".join(shown)
