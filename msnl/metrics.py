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
