"""The cohort table (subjects x visits) and the lazy xarray view of a whole cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from msnl.errors import StoreError
from storage.layout import COHORT, new_staging_dir, open_root, publish, store_path
from storage.scans import lazy_scan, list_scans

_AXIS = ["i", "j", "k"]


def _subject_fact(rows: list[dict], subject: str, key: str) -> str:
    values = {r.get(key) for r in rows if r["subject"] == subject and r.get(key)}
    return sorted(values)[-1] if values else ""


def _strings(values: list[str]) -> np.ndarray:
    # Object arrays become Zarr v3's variable-length UTF-8 strings, which have a stable spec;
    # numpy's fixed-width unicode does not.
    return np.array(values, dtype=object)


def cohort_table(store: str | Path) -> xr.Dataset:
    """Build the cohort table from the attributes of every complete scan in the store."""
    return cohort_table_from_rows(list_scans(store))


def cohort_table_from_rows(rows: list[dict]) -> xr.Dataset:
    """The cohort table from scan attributes (subject, visit, sha256, source_path,
    orientation, spacing, and optionally acquired_on, arm, site)."""
    subjects = sorted({r["subject"] for r in rows})
    visits = sorted({r["visit"] for r in rows})
    shape = (len(subjects), len(visits))
    acquired = np.full(shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    present = np.zeros(shape, dtype=bool)
    text = {k: np.full(shape, "", dtype=object) for k in ("sha256", "source_path", "orientation")}
    spacing = np.full(shape + (3,), np.nan)
    for r in rows:
        s, v = subjects.index(r["subject"]), visits.index(r["visit"])
        present[s, v] = True
        for k in text:
            text[k][s, v] = r[k]
        spacing[s, v] = r["spacing"]
        if r.get("acquired_on"):
            acquired[s, v] = pd.Timestamp(r["acquired_on"]).tz_localize(None).to_datetime64()
    dims = ("subject", "visit")
    ds = xr.Dataset(
        {
            "present": (dims, present, {"description": "a complete scan of this visit is stored"}),
            **{k: (dims, v) for k, v in text.items()},
            "spacing": (dims + ("axis",), spacing, {"units": "mm"}),
        },
        coords={
            "subject": _strings(subjects),
            "visit": _strings(visits),
            "axis": _strings(_AXIS),
            "acquired_on": (dims, acquired),
            "arm": ("subject", _strings([_subject_fact(rows, s, "arm") for s in subjects])),
            "site": ("subject", _strings([_subject_fact(rows, s, "site") for s in subjects])),
        },
        attrs={"description": "msnl cohort table: one row per subject, one column per visit"},
    )
    return ds


def write_cohort_table(store: str | Path, rows: list[dict] | None = None) -> xr.Dataset:
    """Rebuild the stored cohort table from the scans (or from `rows` of scan attributes);
    atomic, so a crash leaves the old one."""
    open_root(store)
    ds = cohort_table(store) if rows is None else cohort_table_from_rows(rows)
    staged = new_staging_dir(store)
    ds.to_zarr(staged, mode="w", zarr_format=3, consolidated=False)
    publish(store, staged, COHORT)
    return ds


def open_cohort(store: str | Path) -> xr.DataTree:
    """A lazy xarray view of the cohort. Reads the small table and scan headers, never voxels.

    The root node is the cohort table over (subject, visit), with coordinates arm, site and
    acquired_on. Each scan is a child node `scans/<subject>/<visit>` holding `flair`, a
    Dask-backed DataArray of the raw voxels over (i, j, k), with the affine, spacing and
    scaling in its attributes.
    """
    path = store_path(store)
    open_root(path)
    if not (path / COHORT / "zarr.json").exists():
        raise StoreError(f"{path}: the store has no cohort table yet. Run `msnl ingest SOURCE {path}`.")
    table = xr.open_zarr(path, group=COHORT, zarr_format=3, consolidated=False).load()
    nodes: dict[str, xr.Dataset] = {"/": table}
    for subject in table.subject.values:
        for visit in table.visit.values:
            if not bool(table.present.sel(subject=subject, visit=visit)):
                continue
            voxels, attrs = lazy_scan(path, str(subject), str(visit))
            flair = xr.DataArray(voxels, dims=_AXIS, name="flair", attrs=attrs)
            nodes[f"/scans/{subject}/{visit}"] = xr.Dataset({"flair": flair})
    return xr.DataTree.from_dict(nodes)
