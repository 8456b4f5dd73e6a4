"""Trial endpoints against hand-worked examples and against statsmodels on known data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from msnl.endpoints import (cumulative, filter_results, interval_order, interval_rows, mean_interval, per_arm_interval,
                            per_patient, rate_ratios, wilson_interval)


def make_results(counts, arms, statuses=None, sites=None, starts=("2021-01-01", "2022-01-01"), days=365.0):
    """A results Dataset shaped like storage.open_results' over (subject, interval)."""
    counts = np.asarray(counts, float)
    n, k = counts.shape
    statuses = np.asarray(statuses if statuses is not None else [["ok"] * k] * n, dtype=object)
    labels = [f"{i + 1:02d}->{i + 2:02d}" for i in range(k)]
    start = np.array([[np.datetime64(starts[j], "ns") for j in range(k)] for _ in range(n)])
    end = start + np.timedelta64(int(days), "D")
    ok = statuses == "ok"
    return xr.Dataset(
        {
            "new_lesion_count": (("subject", "interval"), np.where(ok, counts, -1)),
            "new_lesion_volume_mm3": (("subject", "interval"), np.where(ok, counts * 10.0, np.nan)),
            "status": (("subject", "interval"), statuses),
        },
        coords={
            "subject": [f"{i:03d}" for i in range(n)], "interval": labels,
            "arm": ("subject", np.asarray(arms, object)),
            "site": ("subject", np.asarray(sites if sites is not None else ["site-1"] * n, object)),
            "start": (("subject", "interval"), start), "end": (("subject", "interval"), end),
            "interval_days": (("subject", "interval"), np.full((n, k), days)),
        },
    )


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_mean_interval_is_the_student_t_interval():
    mean, lo, hi = mean_interval(np.array([10, 12, 14]))
    half = 4.302653 * 2 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == 12 and lo == pytest.approx(12 - half, rel=1e-5) and hi == pytest.approx(12 + half, rel=1e-5)


def test_mean_interval_never_goes_below_zero():
    mean, lo, hi = mean_interval(np.array([0, 2, 4]))  # the plain t interval would start at -2.97
    half = 4.302653 * 2 / math.sqrt(3)
    assert mean == 2 and lo == 0.0 and hi == pytest.approx(2 + half, rel=1e-5)


def test_per_arm_interval_leaves_out_failed_intervals_and_says_how_many():
    results = make_results(
        [[0, 1], [2, 0], [4, 3], [0, 0], [0, 5], [1, 0], [9, 9]],
        ["placebo"] * 3 + ["active"] * 4,
        statuses=[["ok", "ok"]] * 3 + [["ok", "ok"], ["ok", "ok"], ["ok", "pending"], ["failed", "failed"]],
    )
    table = per_arm_interval(results).set_index(["arm", "interval"])
    placebo = table.loc[("placebo", "01->02")]
    assert placebo.n_patients == 3 and placebo.n_left_out == 0 and placebo.mean_new_lesions == 2.0
    assert placebo.free_share == pytest.approx(1 / 3) and placebo.mean_volume_mm3 == pytest.approx(20.0)
    active = table.loc[("active", "01->02")]
    assert active.n_patients == 3 and active.n_left_out == 1  # the failed subject's 9 lesions do not count
    assert active.mean_new_lesions == pytest.approx(1 / 3) and active.free_share == pytest.approx(2 / 3)
    assert (active.free_ci_low, active.free_ci_high) == pytest.approx(wilson_interval(2, 3))
    later = table.loc[("active", "02->03")]
    assert later.n_patients == 2 and later.n_left_out == 2 and later.mean_new_lesions == 2.5


def test_cumulative_counts_a_patient_only_while_every_interval_so_far_is_usable():
    results = make_results([[1, 2], [0, 3], [5, 1]], ["a", "a", "a"], statuses=[["ok", "ok"], ["ok", "ok"], ["failed", "ok"]])
    table = cumulative(results).set_index("interval")
    assert table.loc["01->02"].n_patients == 2 and table.loc["01->02"].mean_new_lesions == 0.5
    assert table.loc["02->03"].n_patients == 2 and table.loc["02->03"].n_left_out == 1
    assert table.loc["02->03"].mean_new_lesions == 3.0  # (1+2 + 0+3) / 2


def test_intervals_are_ordered_by_date_not_label():
    results = make_results([[1, 2]], ["a"], starts=("2022-06-01", "2021-01-01"))
    assert interval_order(results) == ["02->03", "01->02"]


def test_per_patient_flag_is_true_false_or_unknown():
    results = make_results([[0, 0], [0, 1], [0, 0], [3, 0]], ["a"] * 4,
                           statuses=[["ok", "ok"], ["ok", "ok"], ["ok", "failed"], ["ok", "pending"]])
    table = per_patient(results).set_index("subject")
    assert table.no_new_lesion["000"] == True  # noqa: E712 (pandas' nullable boolean)
    assert table.no_new_lesion["001"] == False  # noqa: E712
    assert table.no_new_lesion.isna()["002"]  # a failed interval could hide a lesion
    assert table.no_new_lesion["003"] == False  # noqa: E712 (a lesion already seen)
    assert table.follow_up_days["002"] == 365.0 and table.intervals_left_out["002"] == 1


def test_filters_by_arm_site_and_date_range():
    results = make_results([[1, 2], [3, 4], [5, 6]], ["a", "b", "a"], sites=["s1", "s1", "s2"])
    assert list(filter_results(results, arms=["a"]).subject.values) == ["000", "002"]
    assert list(filter_results(results, sites=["s1"], arms=["a"]).subject.values) == ["000"]
    first_year = filter_results(results, end="2022-01-01")
    assert list(first_year.status.sel(interval="02->03").values) == ["out_of_range"] * 3
    table = per_arm_interval(first_year).set_index(["arm", "interval"])
    assert table.loc[("a", "02->03")].n_patients == 0 and table.loc[("a", "02->03")].n_left_out == 0


def _nb_cohort(rng, n_per_arm, rates, alpha):
    counts, arms = [], []
    for arm, rate in rates.items():
        mu = rate * 1.0  # one year of follow-up
        counts += list(rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu), n_per_arm))
        arms += [arm] * n_per_arm
    return make_results(np.array(counts)[:, None], arms)


def test_rate_ratio_recovers_a_known_ratio_and_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    results = _nb_cohort(rng, 400, {"placebo": 3.0, "active": 1.2}, alpha=0.7)
    (rr,) = rate_ratios(results)
    assert rr.reference == "placebo" and rr.arm == "active"
    assert rr.ci_low < 0.4 < rr.ci_high and rr.p_value < 1e-6
    assert rr.alpha == pytest.approx(0.7, abs=0.2)
    table = per_patient(results)
    y = table.new_lesions.to_numpy(float)
    X = sm.add_constant((table.arm == "active").to_numpy(float))
    fit = sm.NegativeBinomial(y, X, exposure=table.follow_up_days.to_numpy() / 365.25).fit(disp=False)
    assert rr.ratio == pytest.approx(math.exp(fit.params[1]), rel=1e-6)
    assert rr.p_value == pytest.approx(fit.pvalues[1], rel=1e-4)


def test_rate_ratio_uses_follow_up_as_exposure():
    # same lesions, but the active arm was followed twice as long: half the rate
    results = make_results([[2, 2], [4, 0], [1, 1], [4, 0], [0, 4], [2, 0]], ["placebo"] * 3 + ["active"] * 3)
    results = results.assign_coords(interval_days=results.interval_days * xr.DataArray(
        [1, 1, 1, 2, 2, 2], dims="subject"))
    (rr,) = rate_ratios(results)
    assert rr.ratio == pytest.approx(0.5, rel=1e-3)


def test_rate_ratio_says_why_it_cannot_be_fitted():
    results = make_results([[0], [0], [0], [0]], ["a", "a", "b", "b"])
    (rr,) = rate_ratios(results)
    assert math.isnan(rr.ratio) and "no new lesions" in rr.message
    assert rate_ratios(make_results([[1], [2]], ["a", "a"])) == []
    failed = make_results([[1], [2], [0], [3], [1]], ["a", "a", "b", "b", "b"], statuses=[["ok"], ["ok"], ["ok"], ["ok"], ["failed"]])
    assert rate_ratios(failed)[0].n_left_out == 1


def test_endpoints_take_pandas_friendly_output():
    results = make_results([[1, 0], [0, 2]], ["a", "b"])
    assert isinstance(per_arm_interval(results), pd.DataFrame)
    assert set(per_arm_interval(results).arm) == {"a", "b"}


def test_interval_rows_are_the_intervals_subjects_have_with_the_columns_asked_for():
    # subjects 000 and 002 have two visits only: their second interval is a hole ("" or missing), not a result
    results = make_results([[1, 0], [2, 3], [0, 0]], ["placebo", "active", "placebo"],
                           statuses=[["ok", ""], ["ok", "failed"], ["pending", None]])
    rows = interval_rows(results, ["new_lesion_count", "arm"])
    assert list(zip(rows.subject, rows.interval, rows.status)) == [
        ("000", "01->02", "ok"), ("001", "01->02", "ok"), ("001", "02->03", "failed"), ("002", "01->02", "pending")]
    assert list(rows.columns) == ["subject", "interval", "status", "new_lesion_count", "arm"]
    assert list(rows.arm) == ["placebo", "active", "active", "placebo"]
