"""Segmentation metrics: voxel Dice, lesion components, and candidate coverage of the truth.

Lesions are 26-connected components; lesions under `min_lesion_mm3` (3 mm³, MSSEG-2) are
not scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msnl.scan import LabelMap

MIN_LESION_MM3 = 3.0  # MSSEG-2 scoring: lesions under 3 mm³ are not scored
DETECTION_FRACTION = 0.10  # a lesion counts as hit when >= 10% of its voxels are covered
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Voxel Dice of two boolean masks; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def lesions(mask: LabelMap, min_lesion_mm3: float = MIN_LESION_MM3) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of `mask`; returns the label map and the labels big enough to score."""
    labels, n = ndimage.label(mask.data.astype(bool), structure=_CONNECTIVITY_26)
    volumes = np.bincount(labels.ravel(), minlength=n + 1) * mask.voxel_volume
    scored = np.flatnonzero(volumes >= min_lesion_mm3)
    return labels, scored[scored > 0]


@dataclass(frozen=True)
class Coverage:
    """How many scored truth lesions have at least `DETECTION_FRACTION` of their voxels covered."""

    covered: int
    total: int

    @property
    def fraction(self) -> float:
        return self.covered / self.total if self.total else 1.0


def coverage(truth: LabelMap, covering: np.ndarray, min_lesion_mm3: float = MIN_LESION_MM3,
             fraction: float = DETECTION_FRACTION) -> Coverage:
    """Truth lesions (>= `min_lesion_mm3`) with at least `fraction` of their voxels in `covering`."""
    labels, scored = lesions(truth, min_lesion_mm3)
    if len(scored) == 0:
        return Coverage(0, 0)
    hit = np.asarray(ndimage.mean(covering.astype(bool), labels, scored))
    return Coverage(int((hit >= fraction).sum()), len(scored))


@dataclass(frozen=True)
class LesionScore:
    """MSSEG-2 style scores of one predicted mask against its truth (same grid)."""

    dice: float
    truth_lesions: int
    detected: int
    predicted_lesions: int
    true_predicted: int
    fp_lesions: int
    fp_volume_mm3: float

    @property
    def sensitivity(self) -> float:
        return self.detected / self.truth_lesions if self.truth_lesions else float("nan")

    @property
    def ppv(self) -> float:
        return self.true_predicted / self.predicted_lesions if self.predicted_lesions else float("nan")

    @property
    def f1(self) -> float:
        s, p = self.sensitivity, self.ppv
        if self.truth_lesions == 0 and self.predicted_lesions == 0:
            return float("nan")
        s, p = (0.0 if np.isnan(s) else s), (0.0 if np.isnan(p) else p)
        return 2 * s * p / (s + p) if s + p else 0.0


def score_lesions(pred: LabelMap, truth: LabelMap, min_lesion_mm3: float = MIN_LESION_MM3,
                  fraction: float = DETECTION_FRACTION) -> LesionScore:
    """A truth lesion is detected when >= `fraction` of its voxels are predicted; a predicted
    lesion is true when >= `fraction` of its voxels are in the truth. Lesions under
    `min_lesion_mm3` are not scored (either side). 26-connectivity."""
    p, t = pred.data.astype(bool), truth.data.astype(bool)
    t_labels, t_scored = lesions(truth, min_lesion_mm3)
    p_labels, p_scored = lesions(pred, min_lesion_mm3)
    detected = int((np.asarray(ndimage.mean(p, t_labels, t_scored)) >= fraction).sum()) if len(t_scored) else 0
    true_frac = np.asarray(ndimage.mean(t, p_labels, p_scored)) if len(p_scored) else np.zeros(0)
    false = p_scored[true_frac < fraction]
    fp_volume = float(np.isin(p_labels, false).sum() * pred.voxel_volume) if len(false) else 0.0
    return LesionScore(dice(p, t), len(t_scored), detected, len(p_scored), int((true_frac >= fraction).sum()), len(false), fp_volume)
