"""Trial endpoints from the per-interval results: pure functions on the results Dataset.

The input is `storage.open_results`' Dataset over (subject, interval), with the variables
`new_lesion_count`, `new_lesion_volume_mm3` and `status`, and the coordinates `arm`, `site`,
`start`, `end` and `interval_days`. Only intervals whose status is "ok" count; every table
says how many intervals it left out (failed, pending or QC-flagged).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

log = logging.getLogger(__name__)

DAYS_PER_YEAR = 365.25
Z95 = float(stats.norm.ppf(0.975))


def _text(values: np.ndarray) -> np.ndarray:
    """Labels as plain Python strings, whatever string dtype they were stored with."""
    return np.array([str(v) for v in np.asarray(values).ravel()], dtype=object).reshape(np.shape(values))


def usable(results: xr.Dataset) -> xr.DataArray:
    """True where an interval was processed and passed QC."""
    return results.status == "ok"


def expected(results: xr.Dataset) -> xr.DataArray:
    """True where a subject has this interval at all (the (subject, interval) grid is ragged)."""
    return results.status.notnull() & (results.status != "")


def interval_rows(results: xr.Dataset, names: list[str]) -> pd.DataFrame:
    """One row per interval a subject has (the ragged grid's holes left out, as `expected`),
    with `subject`, `interval`, `status` and the variables or coordinates in `names`."""
    frame = results.reset_coords()[["status", *(n for n in names if n != "status")]].to_dataframe()
    return frame[expected(results).to_series().reindex(frame.index)].reset_index()


def interval_order(results: xr.Dataset) -> list[str]:
    """Interval labels in trial order: by their median start date, then by label."""
    labels = [str(v) for v in results.interval.values]
    raw = results.start.transpose("subject", "interval").values
    start = np.where(np.isnat(raw), np.nan, raw.astype("datetime64[D]").astype(float))
    median = [np.nanmedian(col) if np.isfinite(col).any() else np.inf for col in start.T]
    return [label for _, label in sorted(zip(median, labels))]


def filter_results(results: xr.Dataset, arms: list[str] | None = None, sites: list[str] | None = None,
                   start: np.datetime64 | str | None = None, end: np.datetime64 | str | None = None) -> xr.Dataset:
    """Subjects in `arms` and `sites`; intervals whose later visit falls in [start, end] stay usable.

    Intervals outside the date range get the status "out_of_range", so they are neither
    counted nor reported as failures.
    """
    keep = np.ones(results.sizes["subject"], bool)
    if arms:
        keep &= np.isin(_text(results.arm.values), list(arms))
    if sites:
        keep &= np.isin(_text(results.site.values), list(sites))
    out = results.isel(subject=np.flatnonzero(keep))
    if start is not None or end is not None:
        lo = np.datetime64(start or "1900-01-01", "ns")
        hi = np.datetime64(end or "2300-01-01", "ns")
        inside = (out.end >= lo) & (out.end <= hi + np.timedelta64(1, "D") - np.timedelta64(1, "ns"))
        out = out.assign(status=xr.where(expected(out) & ~inside, "out_of_range", out.status))
    return out


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean with a 95% Student-t interval (nan bounds for fewer than 2 values).

    The values are lesion counts, never negative, so the lower bound is clipped at 0: the
    clipped interval holds the true mean whenever the plain one does, and a dashboard never
    shows "-1.4 new lesions"."""
    values = np.asarray(values, float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, max(mean - half, 0.0), mean + half


def _summary(arm: str, interval: str, counts: np.ndarray, volumes: np.ndarray, left_out: int) -> dict:
    mean, lo, hi = mean_interval(counts)
    free = int((counts == 0).sum())
    free_lo, free_hi = wilson_interval(free, len(counts))
    return {
        "arm": arm, "interval": interval, "n_patients": len(counts), "n_left_out": left_out,
        "mean_new_lesions": mean, "mean_ci_low": lo, "mean_ci_high": hi,
        "free_share": free / len(counts) if len(counts) else math.nan, "free_ci_low": free_lo, "free_ci_high": free_hi,
        "mean_volume_mm3": float(volumes.mean()) if len(volumes) else math.nan,
        "median_volume_mm3": float(np.median(volumes)) if len(volumes) else math.nan,
    }


def per_arm_interval(results: xr.Dataset) -> pd.DataFrame:
    """Per arm and interval: mean new lesions per patient (95% t CI, clipped at 0), share free
    of new lesions (Wilson CI), new-lesion volume, and the number of intervals left out."""
    ok, present = usable(results), expected(results)
    rows = []
    for arm in sorted({str(a) for a in results.arm.values}):
        in_arm = results.arm == arm
        for interval in interval_order(results):
            sel = dict(interval=interval)
            use = (ok.sel(**sel) & in_arm).values
            left_out = int((present.sel(**sel) & ~ok.sel(**sel) & in_arm & (results.status.sel(**sel) != "out_of_range")).sum())
            counts = results.new_lesion_count.sel(**sel).values[use].astype(float)
            volumes = results.new_lesion_volume_mm3.sel(**sel).values[use].astype(float)
            rows.append(_summary(arm, interval, counts, volumes, left_out))
    return pd.DataFrame(rows)


def cumulative(results: xr.Dataset) -> pd.DataFrame:
    """Cumulative new lesions per patient, per arm, through each interval in trial order.

    A patient counts through interval k only when all of their intervals up to k are usable;
    the others are left out at k and later, and counted in `n_left_out`.
    """
    order = interval_order(results)
    ordered = results.sel(interval=order)
    ok = usable(ordered).values
    present = expected(ordered).values & (ordered.status.values != "out_of_range")
    counts = np.where(ok, ordered.new_lesion_count.values, 0).astype(float)
    volumes = np.where(ok, np.nan_to_num(ordered.new_lesion_volume_mm3.values.astype(float)), 0.0)
    # through k: usable when every interval the subject has up to k is ok
    bad_so_far = np.cumsum(present & ~ok, axis=1) > 0
    has_any = np.cumsum(present, axis=1) > 0
    cum_counts, cum_volumes = np.cumsum(counts, axis=1), np.cumsum(volumes, axis=1)
    arms = _text(ordered.arm.values)
    rows = []
    for arm in sorted(set(arms)):
        in_arm = arms == arm
        for k, interval in enumerate(order):
            use = in_arm & has_any[:, k] & ~bad_so_far[:, k]
            left_out = int((in_arm & has_any[:, k] & bad_so_far[:, k]).sum())
            rows.append(_summary(arm, interval, cum_counts[use, k], cum_volumes[use, k], left_out))
    return pd.DataFrame(rows)


def per_patient(results: xr.Dataset) -> pd.DataFrame:
    """One row per patient: totals over usable intervals, follow-up, and a NEDA-style flag.

    `no_new_lesion` is True when every interval is usable and none has a new lesion, False as
    soon as one usable interval has one, and missing (pd.NA) when it can't be told.
    """
    ok = usable(results).values
    present = expected(results).values & (results.status.values != "out_of_range")
    counts = np.where(ok, results.new_lesion_count.values, 0).astype(int)
    volumes = np.where(ok, np.nan_to_num(results.new_lesion_volume_mm3.values.astype(float)), 0.0)
    days = np.where(ok, np.nan_to_num(results.interval_days.values.astype(float)), 0.0)
    total = counts.sum(axis=1)
    complete = (present & ~ok).sum(axis=1) == 0
    flag = pd.array([False if t > 0 else (True if c and p else pd.NA) for t, c, p in zip(total, complete, present.any(axis=1))],
                    dtype="boolean")
    return pd.DataFrame({
        "subject": _text(results.subject.values), "arm": _text(results.arm.values),
        "site": _text(results.site.values), "intervals_used": ok.sum(axis=1),
        "intervals_left_out": (present & ~ok).sum(axis=1), "follow_up_days": days.sum(axis=1),
        "new_lesions": total, "new_lesion_volume_mm3": volumes.sum(axis=1), "no_new_lesion": flag,
    })


@dataclass(frozen=True)
class RateRatio:
    """Rate ratio of new lesions, `arm` against `reference`, from a negative-binomial model."""

    arm: str
    reference: str
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float  # NB2 dispersion: variance = mu + alpha mu^2
    n_patients: int
    n_left_out: int
    message: str = ""


def rate_ratios(results: xr.Dataset, reference: str | None = None) -> list[RateRatio]:
    """Negative-binomial regression of each patient's new lesions on arm, with log follow-up
    (years, usable intervals only) as offset. One RateRatio per non-reference arm.

    The reference defaults to the arm with the highest crude rate (placebo in most trials).
    Where the model can't be fitted (one arm, no lesions at all, too few patients) the ratio is
    nan and `message` says why.
    """
    import statsmodels.api as sm

    table = per_patient(results)
    used = table[table.follow_up_days > 0]
    left_out = int(table.intervals_left_out.sum())
    arms = sorted(used.arm.unique())
    if len(arms) < 2:
        return []
    years = used.follow_up_days.to_numpy() / DAYS_PER_YEAR
    if reference is None:
        crude = {a: used.new_lesions[used.arm == a].sum() / years[(used.arm == a).to_numpy()].sum() for a in arms}
        reference = max(arms, key=lambda a: (crude[a], a))
    others = [a for a in arms if a != reference]
    X = np.column_stack([np.ones(len(used))] + [(used.arm == a).to_numpy(float) for a in others])
    y = used.new_lesions.to_numpy(float)

    def failed(why: str) -> list[RateRatio]:
        return [RateRatio(a, reference, math.nan, math.nan, math.nan, math.nan, math.nan, len(used), left_out, why) for a in others]

    if y.sum() == 0:
        return failed("no new lesions in any arm: the rate ratio is undefined")
    if len(used) <= X.shape[1] + 1:
        return failed(f"only {len(used)} patients with follow-up: too few to fit the model")
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter: judged below instead
        try:
            fit = sm.NegativeBinomial(y, X, exposure=years, loglike_method="nb2").fit(disp=False, maxiter=200)
            params, bse, pvalues = np.asarray(fit.params), np.asarray(fit.bse), np.asarray(fit.pvalues)
            good = fit.mle_retvals.get("converged", False) and np.isfinite(bse).all()
        except (np.linalg.LinAlgError, ValueError):
            good = False
        if not good:
            # No overdispersion to estimate (alpha at its bound of 0): the Poisson model is the limit.
            note = "no overdispersion could be estimated; Poisson regression used"
            log.info("rate ratio: %s", note)
            fit = sm.GLM(y, X, family=sm.families.Poisson(), exposure=years).fit()
            params, bse, pvalues = np.append(fit.params, 0.0), np.append(fit.bse, 0.0), np.append(fit.pvalues, 1.0)
    alpha = float(params[-1])
    out = []
    for i, arm in enumerate(others, start=1):
        if not np.isfinite(bse[i]) or bse[i] > 1e3:
            out.append(failed(f"arm {arm}: the standard error is not finite (no lesions in one arm?)")[0])
            continue
        out.append(RateRatio(arm, reference, math.exp(params[i]), math.exp(params[i] - Z95 * bse[i]),
                             math.exp(params[i] + Z95 * bse[i]), float(pvalues[i]), alpha, len(used), left_out, note))
    return out
