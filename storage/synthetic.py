"""A synthetic results store: the real layout filled with drawn results, no imaging run.

For dashboard tests and `benchmarks/dashboard.py` (a 500-patient store in a minute): the
cohort table, step-one groups with small images, and predictions with lesion tables, written
with the same functions `msnl run` uses. Some intervals are left pending or failed on purpose.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from storage.cohort import write_cohort_table
from storage.layout import new_staging_dir, open_root, publish
from storage.pairs import pair_key
from storage.results import prediction_result_key, write_prediction
from storage.scans import write_array

SHAPE = (48, 56, 20)
SPACING = (4.0, 4.0, 8.0)  # mm: a coarse grid, only for looking at


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.85, 0.9])[:, None, None, None]) ** 2).sum(0))
    brain = radius < 1
    image = np.where(brain, 800 + 200 * np.cos(6 * radius) + rng.normal(0, 20, SHAPE), 0).astype(np.float32)
    return image, brain


def write_synthetic_store(store: str | Path, subjects: int, visits: int = 3, seed: int = 0,
                          pending_share: float = 0.0, failed_share: float = 0.0, arms: tuple[str, ...] = ("placebo", "active"),
                          rates: tuple[float, ...] = (3.0, 1.0), sites: int = 3, reoriented_share: float = 0.0,
                          trial_facts: bool = True) -> Path:
    """Write `subjects` x `visits` drawn results into a new store; returns its path.

    A `reoriented_share` of visits are recorded as sagittal slices instead of axial ones, so
    their intervals differ in acquisition. Without `trial_facts`, scans have no arm, site or
    date, as from a manifest without those columns or a public dataset's patient folders (the
    draws are the same).
    """
    rng = np.random.default_rng(seed)
    store = Path(store)
    open_root(store, create=True)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * np.array(SPACING) / 2
    rows = []
    for index in range(subjects):
        subject = f"{index + 1:03d}"
        arm, rate = arms[index % len(arms)], rates[index % len(rates)]
        site = f"site-{int(rng.integers(sites)) + 1}"
        start = date(2020, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
        dates = [start + timedelta(days=365 * v + int(rng.integers(-20, 21))) for v in range(visits)]
        for v, when in enumerate(dates):
            # Drawn only when asked for, so stores made without it keep their draws.
            orientation = "ASR" if reoriented_share and rng.random() < reoriented_share else "RAS"
            rows.append({"subject": subject, "visit": f"{v + 1:02d}", "sha256": f"{index:060d}{v:04d}", "source_path": "",
                         "orientation": orientation, "spacing": list(SPACING),
                         **({"acquired_on": when.isoformat(), "arm": arm, "site": site} if trial_facts
                            else {"acquired_on": None, "arm": None, "site": None})})
        for v in range(1, visits):
            a, b = f"{v:02d}", f"{v + 1:02d}"
            draw = rng.random()
            if draw < pending_share:
                continue
            status = "registration_failed" if draw < pending_share + failed_share else "ok"
            _write_pair(store, subject, a, b, status, affine, rng)
            if status == "ok":
                _write_prediction(store, subject, a, b, affine, int(rng.negative_binomial(0.7, 0.7 / (0.7 + rate))), rng)
    write_cohort_table(store, rows)
    return store


def _write_pair(store: Path, subject: str, a: str, b: str, status: str, affine: np.ndarray, rng: np.random.Generator) -> None:
    staged_path = new_staging_dir(store)
    group = zarr.open_group(staged_path, mode="w", zarr_format=3)
    correlation = float(rng.uniform(0.75, 0.98)) if status == "ok" else 0.3
    attrs = {"subject": subject, "from_visit": a, "to_visit": b, "status": status, "result_key": "synthetic",
             "message": "" if status == "ok" else "after registration, visit 1 and visit 2 correlate at 0.30 (synthetic)",
             "affine": affine.tolist(), "qc": {"registration_correlation": correlation},
             "n_candidates": int(rng.integers(200, 1500)), "config_digest": "synthetic"}
    if status == "ok":
        image, brain = _head(rng)
        write_array(group, "flair1", image)
        write_array(group, "flair2", image * np.float32(rng.uniform(0.95, 1.05)))
        write_array(group, "brain", brain.astype(np.uint8))
    group.attrs.update(attrs)
    publish(store, staged_path, pair_key(subject, a, b))


def _write_prediction(store: Path, subject: str, a: str, b: str, affine: np.ndarray, count: int, rng: np.random.Generator) -> None:
    mask = np.zeros(SHAPE, np.uint8)
    rows = []
    for n in range(count):
        centre = rng.integers([12, 14, 5], [36, 42, 15])
        mask[tuple(slice(c - 1, c + 1) for c in centre)] = 1
        xyz = affine[:3, :3] @ centre + affine[:3, 3]
        rows.append({"lesion": n + 1, "x_mm": xyz[0], "y_mm": xyz[1], "z_mm": xyz[2],
                     "volume_mm3": float(8 * np.prod(SPACING)), "mean_probability": float(rng.uniform(0.75, 1)),
                     "infratentorial": bool(centre[2] < 7)})
    lesions = pd.DataFrame(rows, columns=["lesion", "x_mm", "y_mm", "z_mm", "volume_mm3", "mean_probability", "infratentorial"]).astype(
        {"lesion": np.int64, "x_mm": float, "y_mm": float, "z_mm": float, "volume_mm3": float, "mean_probability": float,
         "infratentorial": bool})
    write_prediction(store, subject, a, b, prediction_result_key("synthetic", "synthetic"), mask, lesions, {
        "status": "ok", "message": "", "weights_digest": "synthetic", "new_lesion_count": count,
        "new_lesion_volume_mm3": float(lesions.volume_mm3.sum()) if count else 0.0,
    })
