"""The three pages of the app and the sidebar filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import streamlit as st
import xarray as xr

from dashboard.data import interval_geometry, load_lesions, load_results, load_runs, load_slice, store_state
from dashboard.plots import endpoint_figure, given, slice_figure, timeline_figure
from msnl.endpoints import cumulative, filter_results, interval_rows, per_arm_interval, per_patient, rate_ratios
from msnl.errors import MsnlError
from msnl.qc import REVIEW_REGISTRATION_CORRELATION, REVIEW_RESOLUTION_RATIO, coarser_visit_one

PAGES = {"overview": "Cohort overview", "endpoints": "Endpoints", "patient": "Patient view"}
SETTLED = ("ok", "pending", "out_of_range")


@dataclass(frozen=True)
class Filters:
    arms: tuple[str, ...]
    sites: tuple[str, ...]
    start: date | None
    end: date | None

    def apply(self, results: xr.Dataset) -> xr.Dataset:
        return filter_results(results, list(self.arms), list(self.sites), self.start and np.datetime64(self.start),
                              self.end and np.datetime64(self.end))


def _dates(results: xr.Dataset) -> tuple[date, date] | None:
    ends = results.end.values[~np.isnat(results.end.values)] if "end" in results else np.array([])
    if not len(ends):
        return None
    return pd.Timestamp(ends.min()).date(), pd.Timestamp(ends.max()).date()


def filter_widgets(results: xr.Dataset) -> Filters:
    st.sidebar.subheader("Filters")
    arms = sorted({str(a) for a in results.arm.values}) if "arm" in results.coords else []
    sites = sorted({str(s) for s in results.site.values}) if "site" in results.coords else []
    chosen_arms = st.sidebar.multiselect("Arm", arms, default=arms, key="arms", format_func=given)
    chosen_sites = st.sidebar.multiselect("Site", sites, default=sites, key="sites", format_func=given)
    span = _dates(results)
    start = end = None
    if span:
        picked = st.sidebar.date_input("Later visit between", value=span, key="dates")
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            start, end = picked
    return Filters(tuple(chosen_arms), tuple(chosen_sites), start, end)


def render_page(page: str, store: str, filters: Filters) -> None:
    state = store_state(store)
    if state.problem:
        st.info(state.problem)
        return
    results = load_results(store, state.stamp)
    st.caption(f"{results.sizes.get('subject', 0)} subjects in the store · refreshed {pd.Timestamp.now():%H:%M:%S}")
    if results.sizes.get("interval", 0) == 0:
        st.title(PAGES[page])
        st.info(f"{store}: no intervals yet. Subjects need two visits; run `msnl run SOURCE {store}`.")
        return
    shown = filters.apply(results)
    {"overview": overview, "endpoints": endpoints, "patient": patient}[page](store, state.stamp, shown)


def _long(results: xr.Dataset) -> pd.DataFrame:
    """The (subject, interval) grid as rows, only where a subject has that interval."""
    return interval_rows(results, ["message", "new_lesion_count", "new_lesion_volume_mm3", "n_candidates",
                                   "registration_quality", "from_acquisition", "to_acquisition", "arm", "site", "end"])


def overview(store: str, stamp: tuple, results: xr.Dataset) -> None:
    st.title("Cohort overview")
    rows = _long(results)
    rows = rows[rows.status != "out_of_range"]
    failed = rows[~rows.status.isin(SETTLED)]
    cols = st.columns(5)
    cols[0].metric("Subjects", int(rows.subject.nunique()))
    cols[1].metric("Intervals", len(rows))
    cols[2].metric("Processed", int((rows.status == "ok").sum()))
    cols[3].metric("Pending", int((rows.status == "pending").sum()))
    cols[4].metric("Failed", len(failed))
    if len(failed):
        st.subheader("Failed intervals")
        st.dataframe(failed[["subject", "interval", "status", "message"]], hide_index=True, width="stretch")
    runs_shown(load_runs(store, stamp))
    st.subheader("Registration quality")
    low = rows[(rows.status == "ok") & (rows.registration_quality < REVIEW_REGISTRATION_CORRELATION)]
    st.caption(f"Correlation of the registered visits inside the brain. Intervals under "
               f"{REVIEW_REGISTRATION_CORRELATION} are flagged for review; under the QC limit they fail.")
    if len(low):
        st.warning(f"{len(low)} processed interval(s) to review.")
        st.dataframe(quality_shown(low[["subject", "interval", "registration_quality", "n_candidates"]]), hide_index=True)
    else:
        st.success("No processed interval is flagged.")
    measured = rows[rows.registration_quality.notna()]
    if len(measured):
        st.bar_chart(measured.set_index(measured.subject + " " + measured.interval).registration_quality,
                     y_label="correlation", height=220)
    acquisition_review(results)
    st.subheader("Counts by arm and site")
    shown = rows.assign(arm=rows.arm.map(given), site=rows.site.map(given))
    subjects = shown.drop_duplicates("subject")
    left, right = st.columns(2)
    left.caption("Subjects")
    left.dataframe(pd.crosstab(subjects.arm, subjects.site, margins=True, margins_name="all"))
    right.caption("Intervals by status")
    right.dataframe(pd.crosstab([shown.arm, shown.site], shown.status))


RUNS_SHOWN = 10


def runs_shown(runs: pd.DataFrame) -> None:
    """The latest runs of `msnl run` that had work to do, newest first."""
    if runs.empty:
        return
    st.subheader("Runs")
    st.caption(f"The latest {min(len(runs), RUNS_SHOWN)} of {len(runs)} `msnl run` calls that had work to do "
               "(UTC). A run with no finish is still running, or was stopped; running it again completes it.")
    shown = runs.head(RUNS_SHOWN)
    table = pd.DataFrame({
        "started": shown.started.dt.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": shown.finished.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("not finished"),
        "minutes": shown.minutes.round(1),
        "intervals": shown.intervals, "done": shown.done, "failed": shown.failed,
    })
    st.dataframe(table, hide_index=True)


def quality_shown(rows: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """`rows` with registration_quality rounded *down* for display: a table cell rounds to a
    few digits, and 0.79996 shown as "0.8" would read as "not under the review limit"."""
    scale = 10.0**decimals
    return rows.assign(registration_quality=np.floor(rows.registration_quality * scale) / scale)


def acquisition_review(results: xr.Dataset) -> None:
    """Intervals whose visit 1 is sampled much coarser than visit 2: the CNN's known weak spot."""
    st.subheader("Acquisition changes between visits")
    st.caption(f"Intervals whose visit 1 is sampled at least {REVIEW_RESOLUTION_RATIO} times coarser than visit 2 "
               "along a head axis (e.g. axial 3 mm slices, then sagittal ones). On simulated lesion-free pairs the "
               "shipped CNN found false new lesions only in such intervals (docs/model_card.md in msnl's source): "
               "check their lesions by eye before counting them.")
    flagged = coarser_visit_one(results)
    if len(flagged):
        st.warning(f"{len(flagged)} processed interval(s) to review: visit 1 coarser than visit 2.")
        st.dataframe(flagged, hide_index=True, width="stretch")
    else:
        st.success("No processed interval is flagged: each visit 1 is sampled about as finely as its visit 2, or finer.")


def endpoints(store: str, stamp: tuple, results: xr.Dataset) -> None:
    st.title("Endpoints")
    table = per_arm_interval(results)
    cum = cumulative(results)
    left_out = int(table.n_left_out.sum())
    if left_out:
        st.warning(f"{left_out} failed or pending interval(s) are left out of these figures.")
    if table.n_patients.sum() == 0:
        st.info("No processed interval yet: the endpoints appear as intervals finish.")
        return
    st.subheader("Rate ratio (negative-binomial regression, follow-up as exposure)")
    ratios = rate_ratios(results)
    if not ratios and not any(given(a, "") for a in table.arm):
        st.info("The source gives no subject an arm: add an `arm` column to participants.tsv or to the manifest, "
                "and run `msnl ingest` again, to compare arms.")
    elif not ratios:
        st.info("A rate ratio needs two arms with processed intervals.")
    for rr in ratios:
        arm, reference = given(rr.arm), given(rr.reference)
        if np.isfinite(rr.ratio):
            st.metric(f"{arm} vs {reference}", f"{rr.ratio:.2f}",
                      help=f"95% CI {rr.ci_low:.2f}–{rr.ci_high:.2f}, p = {rr.p_value:.3g}, {rr.n_patients} patients")
            st.write(f"**{arm} vs {reference}:** rate ratio {rr.ratio:.2f} (95% CI {rr.ci_low:.2f}–{rr.ci_high:.2f}), "
                     f"p = {rr.p_value:.3g}, {rr.n_patients} patients. {rr.message}")
        else:
            st.info(f"{arm} vs {reference}: no rate ratio ({rr.message}).")
    left, right = st.columns(2)
    left.pyplot(endpoint_figure(table, "mean_new_lesions", "mean_ci_low", "mean_ci_high", "new lesions / patient",
                                "Mean new lesions per patient (95% CI)"))
    right.pyplot(endpoint_figure(table, "free_share", "free_ci_low", "free_ci_high", "share of patients",
                                 "Free of new lesions (Wilson 95% CI)"))
    left.pyplot(endpoint_figure(cum, "mean_new_lesions", "mean_ci_low", "mean_ci_high", "new lesions / patient",
                                "Cumulative new lesions per patient (95% CI)"))
    right.pyplot(endpoint_figure(table, "mean_volume_mm3", "mean_volume_mm3", "mean_volume_mm3", "mm³",
                                 "Mean new-lesion volume per patient"))
    st.subheader("Per arm and interval")
    st.dataframe(table.assign(arm=table.arm.map(given)), hide_index=True, width="stretch")
    patients = per_patient(results)
    st.download_button("Download the per-arm table (CSV)", table.to_csv(index=False), "msnl-endpoints.csv", "text/csv")
    st.subheader("Per patient (NEDA-style: no new lesion)")
    st.dataframe(patients.assign(arm=patients.arm.map(given), site=patients.site.map(given)), hide_index=True, width="stretch")
    st.download_button("Download the per-patient table (CSV)", patients.to_csv(index=False), "msnl-patients.csv", "text/csv")


def lesion_slice(row: pd.Series, affine: np.ndarray, shape: tuple[int, ...]) -> int:
    """The slice index (third voxel axis) through a lesion's centroid given in scanner mm."""
    voxel = np.linalg.inv(affine) @ np.array([row.x_mm, row.y_mm, row.z_mm, 1.0])
    return int(np.clip(round(voxel[2]), 0, shape[2] - 1))


def patient(store: str, stamp: tuple, results: xr.Dataset) -> None:
    st.title("Patient view")
    subjects = [str(s) for s in results.subject.values]
    if not subjects:
        st.info("No subject matches the filters.")
        return
    requested = st.query_params.get("subject")
    subject = st.selectbox("Subject", subjects, index=subjects.index(requested) if requested in subjects else 0, key="subject")
    rows = _long(results.sel(subject=[subject]))
    rows = rows.assign(end_date=pd.to_datetime(rows.end).dt.strftime("%Y-%m-%d"))
    row0 = results.sel(subject=subject)
    st.caption(f"arm {given(row0.arm.item())} · site {given(row0.site.item())}")
    st.pyplot(timeline_figure(rows))
    st.dataframe(quality_shown(rows[["interval", "end_date", "status", "new_lesion_count", "new_lesion_volume_mm3", "n_candidates",
                                     "registration_quality", "from_acquisition", "to_acquisition", "message"]]),
                 hide_index=True, width="stretch")
    done = rows[rows.status == "ok"]
    if done.empty:
        st.info("No processed interval for this subject yet.")
        return
    interval = st.selectbox("Interval", list(done.interval), key="interval")
    from_visit, to_visit = interval.split("->")
    flagged = coarser_visit_one(results.sel(subject=[subject]))
    if interval in set(flagged.interval):
        chosen = flagged[flagged.interval == interval].iloc[0]
        st.warning(f"Visit {from_visit} ({chosen.from_acquisition}) is sampled {chosen.resolution_ratio:.1f} times coarser "
                   f"than visit {to_visit} ({chosen.to_acquisition}) along a head axis: the CNN is known to find false "
                   "new lesions in such intervals. Check each lesion by eye.")
    try:
        shape, affine = interval_geometry(store, stamp, subject, from_visit, to_visit)
    except MsnlError as exc:
        st.warning(f"The images of this interval can't be shown: {exc}")
        return
    mine = load_lesions(store, stamp, subject, interval)
    picked = st.session_state.get("lesion_table")
    rows_picked = list(picked.selection.rows) if picked is not None and hasattr(picked, "selection") else []
    if rows_picked and rows_picked[0] < len(mine) and st.session_state.get("jumped") != (interval, rows_picked[0]):
        st.session_state["slice"] = lesion_slice(mine.iloc[rows_picked[0]], affine, shape)
        st.session_state["jumped"] = (interval, rows_picked[0])
    if "slice" not in st.session_state or st.session_state["slice"] >= shape[2]:
        st.session_state["slice"] = shape[2] // 2
    k = st.slider("Slice (later visit's grid)", 0, shape[2] - 1, key="slice")
    images = load_slice(store, stamp, subject, from_visit, to_visit, k)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :2], axis=0))
    st.pyplot(slice_figure(images, spacing, f"sub-{subject} {interval}, slice {k}"))
    st.subheader("New lesions")
    if mine.empty:
        st.info("No new lesion in this interval.")
        return
    st.caption("Select a lesion to jump to its slice.")
    st.dataframe(mine.drop(columns=["subject", "interval"]), hide_index=True, on_select="rerun",
                 selection_mode="single-row", key="lesion_table", width="stretch")
