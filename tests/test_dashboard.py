"""The Streamlit app with AppTest: every page on an empty, a partial and a complete store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from streamlit.testing.v1 import AppTest

from dashboard.views import quality_shown
from storage import open_results
from storage.layout import open_root
from storage.pairs import pair_key
from storage.report import RunReport
from storage.results import prediction_result_key, write_prediction
from storage.synthetic import SHAPE, write_synthetic_store

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ("overview", "endpoints", "patient")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    empty = root / "empty.zarr"
    open_root(empty, create=True)
    return {
        "empty": empty,
        "partial": write_synthetic_store(root / "partial.zarr", 10, seed=1, pending_share=0.3, failed_share=0.15),
        "complete": write_synthetic_store(root / "complete.zarr", 12, seed=2),
    }


def run_app(store: Path | str, page: str, monkeypatch, **state) -> AppTest:
    monkeypatch.setenv("MSNL_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = page
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def shown_text(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "info", "warning", "success", "caption", "markdown") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_a_missing_store_gets_a_clear_message(page, tmp_path, monkeypatch):
    at = run_app(tmp_path / "nowhere.zarr", page, monkeypatch)
    assert_clean(at)
    assert "no such store" in shown_text(at) and "msnl run" in shown_text(at)


@pytest.mark.parametrize("page", PAGES)
def test_an_empty_store_says_what_to_do(page, stores, monkeypatch):
    at = run_app(stores["empty"], page, monkeypatch)
    assert_clean(at)
    assert "no cohort" in shown_text(at)


def test_overview_counts_processed_pending_and_failed(stores, monkeypatch):
    results = open_results(stores["partial"])
    status = results.status.values.ravel()
    at = run_app(stores["partial"], "overview", monkeypatch)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Processed"] == str((status == "ok").sum())
    assert metrics["Pending"] == str((status == "pending").sum())
    assert int(metrics["Failed"]) == (status == "registration_failed").sum() > 0
    failures = [d.value for d in at.dataframe if "message" in d.value.columns][0]
    assert (failures.status == "registration_failed").all() and failures.message.str.contains("correlate").all()


def test_registration_quality_under_the_review_limit_never_shows_as_the_limit(stores, monkeypatch):
    at = run_app(stores["complete"], "overview", monkeypatch)
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "registration_quality" in d.value.columns)
    shown = table.registration_quality.to_numpy()
    assert len(shown) and (shown < 0.8).all()
    np.testing.assert_allclose(shown * 1000, np.round(shown * 1000), atol=1e-6)  # three decimals at most
    assert quality_shown(pd.DataFrame({"registration_quality": [0.79996, 0.8, np.nan]})).registration_quality.tolist()[:2] == [0.799, 0.8]


def test_endpoints_show_the_rate_ratio_plots_and_a_download(stores, monkeypatch):
    at = run_app(stores["complete"], "endpoints", monkeypatch)
    assert_clean(at)
    text = shown_text(at)
    assert "rate ratio" in text.lower() and "95% CI" in text
    assert any("active vs placebo" in m.label for m in at.metric)
    table = next(d.value for d in at.dataframe if "mean_ci_low" in d.value.columns)
    assert set(table.arm) == {"active", "placebo"} and list(table.n_left_out) == [0] * len(table)
    assert len(at.get("download_button")) == 2
    assert len(at.get("image")) >= 4  # four endpoint figures


def test_endpoints_on_a_partial_store_say_how_many_are_left_out(stores, monkeypatch):
    at = run_app(stores["partial"], "endpoints", monkeypatch)
    assert_clean(at)
    assert "left out" in shown_text(at)


def test_filters_narrow_every_table(stores, monkeypatch):
    at = run_app(stores["complete"], "endpoints", monkeypatch, arms=["active"])
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "mean_ci_low" in d.value.columns)
    assert set(table.arm) == {"active"}
    assert "A rate ratio needs two arms" in shown_text(at)


@pytest.mark.parametrize("store", ["partial", "complete"])
def test_patient_view_shows_timeline_slices_and_lesions(store, stores, monkeypatch):
    at = run_app(stores[store], "patient", monkeypatch)
    assert_clean(at)
    assert at.selectbox(key="subject").value == "001"
    assert len(at.get("image")) >= 1
    if at.selectbox(key="interval") is not None and store == "complete":
        assert at.slider(key="slice").value == 10  # the middle slice of the 20-slice grid
        assert any("x_mm" in d.value.columns for d in at.dataframe) or "No new lesion" in shown_text(at)


def test_intervals_whose_first_visit_is_coarser_are_flagged_on_the_overview_and_patient_pages(tmp_path, monkeypatch):
    import xarray as xr

    store = write_synthetic_store(tmp_path / "mixed.zarr", 8, seed=3, reoriented_share=0.4)
    cohort = xr.open_zarr(store, group="cohort", zarr_format=3, consolidated=False).load()
    results = open_results(store)
    expected = set()  # sagittal 8 mm slices against axial 8 mm ones: twice as coarse on x or z
    for subject in results.subject.values:
        for interval in results.interval.values:
            row = results.sel(subject=subject, interval=interval)
            if str(row.status.values) == "ok":
                a, b = str(row.from_visit.values), str(row.to_visit.values)
                if cohort.orientation.sel(subject=subject, visit=a).item() != cohort.orientation.sel(subject=subject, visit=b).item():
                    expected.add((str(subject), str(interval)))
    assert 0 < len(expected) < int((results.status == "ok").sum())
    at = run_app(store, "overview", monkeypatch)
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "resolution_ratio" in d.value.columns)
    assert set(zip(table.subject, table.interval)) == expected
    assert (table.resolution_ratio == 2.0).all() and f"{len(expected)} processed interval(s) to review" in shown_text(at)

    subject, interval = sorted(expected)[0]
    at = run_app(store, "patient", monkeypatch, subject=subject, interval=interval)
    assert_clean(at)
    assert "2.0 times coarser" in shown_text(at)


def test_a_store_of_alike_visits_flags_none(stores, monkeypatch):
    at = run_app(stores["complete"], "overview", monkeypatch)
    assert_clean(at)
    assert "No processed interval is flagged: each visit 1" in shown_text(at)


def test_the_slider_and_subject_choice_rerun_cleanly(stores, monkeypatch):
    at = run_app(stores["complete"], "patient", monkeypatch)
    at.selectbox(key="subject").set_value("004").run()
    assert_clean(at)
    assert "arm active" in shown_text(at)  # subjects alternate placebo, active
    at.slider(key="slice").set_value(3).run()
    assert_clean(at)
    assert at.slider(key="slice").value == 3 and len(at.get("image")) == 2


def test_a_lesion_jumps_to_its_slice():
    from dashboard.views import lesion_slice

    affine = np.diag([4.0, 4.0, 8.0, 1.0])
    affine[:3, 3] = [-96, -112, -80]
    row = pd.Series({"x_mm": -96 + 4 * 10, "y_mm": -112 + 4 * 20, "z_mm": -80 + 8 * 7})
    assert lesion_slice(row, affine, (48, 56, 20)) == 7
    far = pd.Series({"x_mm": 0, "y_mm": 0, "z_mm": 900})
    assert lesion_slice(far, affine, (48, 56, 20)) == 19


def test_a_new_result_shows_on_the_next_refresh(tmp_path, monkeypatch):
    store = write_synthetic_store(tmp_path / "live.zarr", 6, seed=3, pending_share=0.5)
    at = run_app(store, "overview", monkeypatch)
    before = int(at.metric[2].value)
    results = open_results(store)
    subject, interval = next((str(s), str(i)) for s in results.subject.values for i in results.interval.values
                             if results.status.sel(subject=s, interval=i).item() == "pending")
    a, b = interval.split("->")
    zarr.open_group(store / pair_key(subject, a, b), mode="w", zarr_format=3).attrs.update(
        {"status": "ok", "affine": np.eye(4).tolist(), "result_key": "step-one"})
    write_prediction(store, subject, a, b, prediction_result_key("step-one", "w"), np.zeros(SHAPE, np.uint8), None,
                     {"status": "ok", "weights_digest": "w", "new_lesion_count": 0, "new_lesion_volume_mm3": 0.0})
    at.run()
    assert int(at.metric[2].value) == before + 1


def test_the_overview_lists_the_runs_and_one_that_did_not_finish(tmp_path, monkeypatch):
    store = write_synthetic_store(tmp_path / "runs.zarr", 4, seed=5, pending_share=0.5)
    assert "Runs" not in shown_text(run_app(store, "overview", monkeypatch))  # no run yet
    done = RunReport(store, [("001", "01", "02"), ("002", "01", "02")])
    done.failed("001", "01->02", "failed", "boom")
    done.finish(done=1)
    RunReport(store, [("003", "01", "02")])
    at = run_app(store, "overview", monkeypatch)
    assert_clean(at)
    assert "Runs" in shown_text(at)
    runs = next(frame.value for frame in at.dataframe if "finished" in frame.value.columns)
    assert list(runs.finished.iloc[:1]) == ["not finished"] and list(runs.failed) == [0, 1] and list(runs.intervals) == [1, 2]


def test_the_app_only_reads(stores, monkeypatch):
    store = stores["complete"]

    def snapshot() -> dict[str, tuple[int, float]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in store.rglob("*")}

    before = snapshot()
    for page in PAGES:
        assert_clean(run_app(store, page, monkeypatch))
    assert snapshot() == before


def test_the_cli_binds_to_localhost_by_default():
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["dashboard", "somewhere.zarr"])
    assert args.host == "localhost"


def test_the_cli_refuses_a_missing_store(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["dashboard", str(tmp_path / "nope.zarr")]) == 2
    assert "no msnl store here" in capsys.readouterr().err


def test_a_store_without_arms_sites_or_dates_says_so_on_every_page(tmp_path, monkeypatch):
    """As from a manifest without those columns, or a public dataset's patient folders."""
    store = write_synthetic_store(tmp_path / "bare.zarr", 4, seed=3, trial_facts=False)
    assert set(open_results(store).arm.values) == {""}
    at = run_app(store, "overview", monkeypatch)
    assert_clean(at)
    assert at.multiselect(key="arms").options == ["not given"] and at.multiselect(key="sites").options == ["not given"]
    counts = [d.value for d in at.dataframe if "all" in d.value.columns][0]
    assert list(counts.index) == ["not given", "all"]
    at = run_app(store, "endpoints", monkeypatch)
    assert_clean(at)
    assert "add an `arm` column to participants.tsv or to the manifest" in shown_text(at)
    assert set(next(d.value for d in at.dataframe if "n_patients" in d.value.columns).arm) == {"not given"}
    per_patient = next(d.value for d in at.dataframe if "follow_up_days" in d.value.columns)
    assert set(per_patient.arm) == set(per_patient.site) == {"not given"}
    at = run_app(store, "patient", monkeypatch)
    assert_clean(at)
    assert "arm not given · site not given" in shown_text(at)


def test_missing_facts_are_named_in_the_figures():
    from dashboard.plots import given, timeline_figure

    assert [given(v) for v in ("", None, float("nan"), "placebo")] == ["not given", "not given", "not given", "placebo"]
    rows = pd.DataFrame({"interval": ["1->2"], "end_date": [np.nan], "new_lesion_count": [3],
                         "new_lesion_volume_mm3": [40.0], "status": ["ok"]})
    labels = [t.get_text() for t in timeline_figure(rows).axes[0].get_xticklabels()]
    assert labels == ["1->2\nno date"]
