"""Matplotlib figures for the app: endpoints with their CIs, a patient's timeline, slices."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def given(value: object, missing: str = "not given") -> str:
    """An arm, site or date as shown: `missing` where the source had none (a manifest without
    that column, a public dataset's patient folders)."""
    text = "" if value is None else str(value)
    return missing if text in ("", "nan", "NaT", "None") else text


def endpoint_figure(table: pd.DataFrame, value: str, low: str, high: str, ylabel: str, title: str) -> Figure:
    """One line per arm over intervals (in trial order), with its CI as error bars."""
    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    order = list(dict.fromkeys(table.interval))
    x = np.arange(len(order))
    arms = sorted(table.arm.unique())
    width = 0.08 * (len(arms) - 1)
    for n, arm in enumerate(arms):
        rows = table[table.arm == arm].set_index("interval").reindex(order)
        shift = (n / max(len(arms) - 1, 1) - 0.5) * width
        y = rows[value].to_numpy(float)
        err = np.vstack([y - rows[low].to_numpy(float), rows[high].to_numpy(float) - y])
        ax.errorbar(x + shift, y, yerr=np.nan_to_num(np.clip(err, 0, None)), marker="o", capsize=4, label=f"arm {given(arm)}")
    ax.set_xticks(x, order)
    ax.set_xlabel("interval")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def timeline_figure(rows: pd.DataFrame) -> Figure:
    """A patient's new-lesion count (bars) and volume (line) per interval."""
    fig, ax = plt.subplots(figsize=(6, 2.6), layout="constrained")
    x = np.arange(len(rows))
    ax.bar(x, rows.new_lesion_count.clip(lower=0), color="#4477aa", label="new lesions")
    ax.set_xticks(x, [f"{a}\n{given(d, 'no date')}" for a, d in zip(rows.interval, rows.end_date)])
    ax.set_ylabel("new lesions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    twin = ax.twinx()
    twin.plot(x, rows.new_lesion_volume_mm3, color="#cc6677", marker="o", label="volume")
    twin.set_ylabel("volume (mm³)")
    for xi, status in zip(x, rows.status):
        if status != "ok":
            ax.annotate(status, (xi, 0), ha="center", va="bottom", fontsize=8, color="#aa3377")
    return fig


def slice_figure(images: dict[str, np.ndarray], spacing: tuple[float, float], title: str) -> Figure:
    """Visit 1, visit 2 and visit 2 with the new-lesion overlay, side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), layout="constrained")
    brain = images.get("brain")
    top = float(np.percentile(images["flair2"][brain > 0], 99.5)) if brain is not None and brain.any() else None
    aspect = spacing[1] / spacing[0]
    for ax, (name, label) in zip(axes, (("flair1", "visit 1 (registered)"), ("flair2", "visit 2"), ("flair2", "new lesions"))):
        ax.imshow(images[name].T, cmap="gray", origin="lower", vmin=0, vmax=top, aspect=aspect)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    mask = images.get("newlesions")
    if mask is not None and mask.any():
        axes[2].imshow(np.ma.masked_equal(mask.T.astype(float), 0), cmap="autumn", origin="lower", alpha=0.8,
                       aspect=aspect, vmin=0, vmax=1)
    fig.suptitle(title, fontsize=10)
    return fig
