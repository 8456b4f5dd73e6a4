"""Intervals come from the cohort table: each subject's stored visits in acquisition order
(undated visits last, then by label), consecutive pairs only; `open_results` gives each
interval the acquisitions and dates of its own two visits."""

from __future__ import annotations

import numpy as np

from storage.cohort import write_cohort_table
from storage.layout import open_root
from storage.results import intervals, open_results


def _row(subject, visit, when, orientation="RAS", spacing=(1.0, 1.0, 3.0)):
    return {"subject": subject, "visit": visit, "sha256": f"{subject}{visit}", "source_path": "", "orientation": orientation,
            "spacing": list(spacing), "acquired_on": when, "arm": "placebo", "site": "site-1"}


def test_intervals_follow_acquisition_dates_with_undated_visits_last(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    write_cohort_table(store, [
        # labels out of date order: 03 was acquired first
        _row("a", "01", "2021-06-01"), _row("a", "02", "2022-06-01"), _row("a", "03", "2020-06-01"),
        # b has no visit 02, and its visit 04 is undated
        _row("b", "01", "2020-01-01"), _row("b", "03", "2021-01-01"), _row("b", "04", None),
        # c has a single visit: no interval
        _row("c", "02", "2020-01-01"),
        # d: two undated visits, ordered by label
        _row("d", "02", None), _row("d", "01", None),
    ])
    assert intervals(store) == [("a", "03", "01"), ("a", "01", "02"), ("b", "01", "03"), ("b", "03", "04"), ("d", "01", "02")]


def test_each_interval_reads_its_own_visits_acquisitions_and_dates(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    write_cohort_table(store, [
        _row("a", "01", "2020-01-01", "ASR", (1.0, 1.0, 4.0)), _row("a", "02", "2020-12-31", "RAS", (1.0, 1.0, 1.0)),
        _row("b", "01", "2021-01-01"), _row("b", "02", "2021-03-02", "RAS", (1.0, 1.0, 5.0)),
    ])
    results = open_results(store)
    a, b = results.sel(subject="a", interval="01->02"), results.sel(subject="b", interval="01->02")
    assert a.interval_days.item() == 365 and b.interval_days.item() == 60
    assert str(a.start.values)[:10] == "2020-01-01" and str(b.end.values)[:10] == "2021-03-02"
    assert a.from_acquisition.item() != b.from_acquisition.item()
    assert "4.0 mm" in a.from_acquisition.item() and "3D 1.0 mm" in a.to_acquisition.item()
    assert "5.0 mm" in b.to_acquisition.item()
    assert np.isclose(a.resolution_ratio.item(), 4.0) and np.isclose(b.resolution_ratio.item(), 1.0)
