"""Per-interval new-lesion results (step two) in the store, and the xarray view over them.

    predictions/<subject>/<from-visit>/<to-visit>/
        attrs      status, message, result_key (`prediction_result_key` of step one's key and
                   the weights digest), counts, volumes, weights digest
        newlesions uint8 mask on visit 2's grid
        lesions    the lesion table, one row per new lesion (storage.tables)

A stored prediction counts only while it is current: made from the step-one result stored now,
and not failed since by a run that took its interval on again. Otherwise it is superseded, and
readers neither show its counts nor list its lesions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from msnl.errors import StoreError
from msnl.qc import acquisition_label, resolution_ratio
from storage.cohort import COHORT
from storage.layout import group_attrs, new_staging_dir, open_root, publish, store_path
from storage.pairs import PAIRS, pair_key
from storage.report import run_failures, run_reports_mtime
from storage.scans import lazy_array, write_array
from storage.tables import read_table, write_table

PREDICTIONS = "predictions"


def prediction_key(subject: str, from_visit: str, to_visit: str) -> str:
    return f"{PREDICTIONS}/{subject}/{from_visit}/{to_visit}"


def prediction_result_key(step_one_key: str, weights_digest: str) -> str:
    """The key of a prediction: what it was made from (step one's result key) and by (the
    weights)."""
    return hashlib.sha256(f"{step_one_key}:{weights_digest}".encode()).hexdigest()


def current_prediction(pred: dict[str, Any] | None, step_one: dict[str, Any] | None,
                       failure: dict[str, Any] | None) -> dict[str, Any] | None:
    """`pred` (a prediction's attributes) when it still stands, None when it is superseded:
    made from another step-one result than `step_one` (a re-run with another config, inputs or
    software replaced it, or failed to), or failed since (`failure`, from the run reports,
    names the prediction that was stored when its run failed the interval)."""
    if not pred or not step_one:
        return None
    if pred.get("result_key") != prediction_result_key(step_one.get("result_key", ""), pred.get("weights_digest", "")):
        return None
    if failure and failure.get("stored_result") == pred.get("result_key"):
        return None
    return pred


def read_prediction_attrs(store: str | Path, subject: str, from_visit: str, to_visit: str) -> dict[str, Any] | None:
    return group_attrs(store_path(store) / prediction_key(subject, from_visit, to_visit))


def write_prediction(store: str | Path, subject: str, from_visit: str, to_visit: str, key: str,
                     mask: np.ndarray | None, lesions: pd.DataFrame | None, attrs: dict[str, Any]) -> None:
    """Store one interval's result (or its failure, with `mask` None) atomically."""
    staged_path = new_staging_dir(store)
    group = zarr.open_group(staged_path, mode="w", zarr_format=3)
    if mask is not None:
        write_array(group, "newlesions", mask.astype(np.uint8))
    group.attrs.update({"subject": subject, "from_visit": from_visit, "to_visit": to_visit, "result_key": key, **attrs})
    if lesions is not None:
        write_table(group, "lesions", lesions)
    publish(store, staged_path, prediction_key(subject, from_visit, to_visit))


def read_prediction_mask(store: str | Path, subject: str, from_visit: str, to_visit: str) -> np.ndarray:
    path = store_path(store) / prediction_key(subject, from_visit, to_visit)
    return np.asarray(zarr.open_group(path, mode="r", zarr_format=3)["newlesions"][...]) > 0


class _CohortGrid:
    """The cohort table's per-visit fields as plain arrays, looked up by (subject, visit): a
    fraction of xarray's label selection, which counts when a store has thousands of subjects."""

    def __init__(self, cohort: xr.Dataset) -> None:
        self.subjects = [str(s) for s in cohort.subject.values]
        self.visits = [str(v) for v in cohort.visit.values]
        self._row = {s: i for i, s in enumerate(self.subjects)}
        self._col = {v: j for j, v in enumerate(self.visits)}
        grid = cohort.transpose("subject", "visit", ...)
        self.present = grid.present.values.astype(bool)
        self.acquired_on = grid.acquired_on.values
        self.orientation = grid.orientation.values
        self.spacing = grid.spacing.values

    def at(self, subject: str, visit: str) -> tuple[int, int]:
        return self._row[subject], self._col[visit]


def _intervals(grid: _CohortGrid) -> list[tuple[str, str, str]]:
    out = []
    for i, s in enumerate(grid.subjects):
        dates = grid.acquired_on[i]
        present = [j for j in range(len(grid.visits)) if grid.present[i, j]]
        ordered = sorted(present, key=lambda j: (np.isnat(dates[j]), dates[j] if not np.isnat(dates[j]) else 0, grid.visits[j]))
        out += [(s, grid.visits[j], grid.visits[k]) for j, k in zip(ordered, ordered[1:])]
    return out


def intervals(store: str | Path) -> list[tuple[str, str, str]]:
    """Each subject's consecutive visit pairs, ordered by acquisition date (then label)."""
    path = store_path(store)
    return _intervals(_CohortGrid(xr.open_zarr(path, group=COHORT, zarr_format=3, consolidated=False).load()))


def single_visit_subjects(store: str | Path) -> list[str]:
    """Subjects with fewer than two stored visits: there is no interval to compare."""
    path = store_path(store)
    cohort = xr.open_zarr(path, group=COHORT, zarr_format=3, consolidated=False).load()
    counts = cohort.present.sum("visit")
    return [str(s) for s in cohort.subject.values[counts.values < 2]]


def open_results(store: str | Path) -> xr.Dataset:
    """Per-interval results over (subject, interval), with arm, site, dates and interval length.

    An interval is named "<from-visit>-><to-visit>". Status is "pending" until processed. A
    failure stored with the step-one result gives its status; a task that failed without a
    result (recorded in the latest run report that took the interval on) gives the status
    that run reported, until a run processes it. A superseded prediction (see the module's
    docstring) is not shown: the interval reads as its step-one failure, its task failure, or
    pending.
    `from_acquisition` and `to_acquisition` say how each visit was acquired ("axial 3.0 mm
    slices", "3D 1.0 mm"); `resolution_ratio` is how many times coarser visit 1 is sampled than
    visit 2 along a head axis (see `msnl.qc.REVIEW_RESOLUTION_RATIO`).
    """
    path = store_path(store)
    open_root(path)
    if not (path / COHORT / "zarr.json").exists():
        raise StoreError(f"{path}: no cohort in this store yet. Run `msnl run SOURCE {path}`.")
    cohort = xr.open_zarr(path, group=COHORT, zarr_format=3, consolidated=False).load()
    rows = []
    task_failures = run_failures(path)
    grid = _CohortGrid(cohort)
    for subject, a, b in _intervals(grid):
        step_one = group_attrs(path / pair_key(subject, a, b)) or {}
        task = task_failures.get((subject, f"{a}->{b}"), {})
        pred = current_prediction(read_prediction_attrs(path, subject, a, b), step_one, task) or {}
        status = (pred.get("status") or (step_one.get("status") if step_one.get("status") not in (None, "ok") else None)
                  or task.get("status") or "pending")
        qc = step_one.get("qc", {})
        at_a, at_b = grid.at(subject, a), grid.at(subject, b)
        orient_a, spacing_a, start = str(grid.orientation[at_a]), grid.spacing[at_a], grid.acquired_on[at_a]
        orient_b, spacing_b, end = str(grid.orientation[at_b]), grid.spacing[at_b], grid.acquired_on[at_b]
        rows.append({
            "subject": subject, "interval": f"{a}->{b}", "from_visit": a, "to_visit": b,
            "new_lesion_count": pred.get("new_lesion_count", -1) if status == "ok" else -1,
            "new_lesion_volume_mm3": pred.get("new_lesion_volume_mm3", np.nan) if status == "ok" else np.nan,
            "n_candidates": step_one.get("n_candidates", -1),
            "status": status, "message": pred.get("message") or step_one.get("message") or task.get("message", ""),
            "registration_quality": qc.get("registration_correlation", np.nan),
            "from_acquisition": acquisition_label(orient_a, spacing_a), "to_acquisition": acquisition_label(orient_b, spacing_b),
            "resolution_ratio": resolution_ratio(orient_a, spacing_a, orient_b, spacing_b),
            "config_hash": step_one.get("config_digest", ""), "weights_hash": pred.get("weights_digest", ""),
            "start": start, "end": end,
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return xr.Dataset(coords={"subject": np.array([], object), "interval": np.array([], object)})
    ds = frame.set_index(["subject", "interval"]).to_xarray()
    ds = ds.assign_coords(
        arm=("subject", np.array([str(v) for v in cohort.arm.sel(subject=ds.subject).values], dtype=object)),
        site=("subject", np.array([str(v) for v in cohort.site.sel(subject=ds.subject).values], dtype=object)),
        interval_days=(ds.end - ds.start) / np.timedelta64(1, "D"),
    )
    return ds.set_coords(["from_visit", "to_visit", "start", "end"])


def open_lesions(store: str | Path, subject: str | None = None, interval: str | None = None) -> pd.DataFrame:
    """Every new lesion of every interval with a current prediction (as `open_results` counts
    them): subject, interval, centroid, volume, probability. `subject` and `interval`
    ("01->02") narrow it, and read only those tables."""
    path = store_path(store)
    tables = []
    task_failures = run_failures(path)
    a, b = interval.split("->") if interval else ("*", "*")
    for meta in sorted((path / PREDICTIONS).glob(f"{subject or '*'}/{a}/{b}/lesions/zarr.json")):
        group = meta.parent.parent
        attrs = group_attrs(group) or {}
        s, v1, v2 = attrs.get("subject"), attrs.get("from_visit"), attrs.get("to_visit")
        if current_prediction(attrs, group_attrs(path / pair_key(s, v1, v2)), task_failures.get((s, f"{v1}->{v2}"))) is None:
            continue
        table = read_table(group / "lesions")
        if len(table):
            table.insert(0, "interval", f"{v1}->{v2}")
            table.insert(0, "subject", s)
            tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # absent, or being replaced this instant
        return 0.0


def results_stamp(store: str | Path) -> tuple[int, int, float]:
    """A cheap fingerprint of the results: it changes whenever a result is published.

    (number of step-one results, number of predictions, latest modification time, run
    reports included). Readers such as the dashboard use it to reload only when a run has
    written something new.
    """
    path = store_path(store)
    stamps = []
    for top in (PAIRS, PREDICTIONS):
        metas = list((path / top).glob("*/*/*/zarr.json"))
        stamps.append((len(metas), max((m.stat().st_mtime for m in metas), default=0.0)))
    latest = max(stamps[0][1], stamps[1][1], _mtime(path / COHORT / "zarr.json"), run_reports_mtime(path))
    return stamps[0][0], stamps[1][0], latest


def open_interval(store: str | Path, subject: str, from_visit: str, to_visit: str) -> xr.Dataset:
    """One interval's images on the later visit's grid, lazily (Dask): `flair1` (registered and
    histogram-matched), `flair2` (N4-corrected), `brain` and `newlesions` (when a current
    prediction is stored).

    The affine (voxel -> scanner mm) of that grid is in the attributes.
    """
    path = store_path(store) / pair_key(subject, from_visit, to_visit)
    attrs = group_attrs(path)
    if attrs is None or attrs.get("status") != "ok":
        state = "not processed yet" if attrs is None else f"{attrs.get('status')}: {attrs.get('message')}"
        raise StoreError(f"{path}: sub-{subject} {from_visit}->{to_visit} has no images ({state}).")
    group = zarr.open_group(path, mode="r", zarr_format=3)
    dims = ("i", "j", "k")
    data = {name: (dims, lazy_array(group[name])) for name in ("flair1", "flair2", "brain")}
    pred = store_path(store) / prediction_key(subject, from_visit, to_visit)
    failure = run_failures(store).get((subject, f"{from_visit}->{to_visit}"))
    if (current_prediction(group_attrs(pred), attrs, failure) is not None
            and (pred / "newlesions" / "zarr.json").exists()):
        data["newlesions"] = (dims, lazy_array(zarr.open_group(pred, mode="r", zarr_format=3)["newlesions"]))
    return xr.Dataset(data, attrs={"affine": attrs["affine"], "subject": subject,
                                   "from_visit": from_visit, "to_visit": to_visit})
