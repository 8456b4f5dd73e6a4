"""A seeded factory of small synthetic pairs with a planted new lesion of known volume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msnl.candidates import ellipsoid
from msnl.scan import LabelMap


def affine_for(spacing, flip=(False, False, False)) -> np.ndarray:
    affine = np.diag([*(-s if f else s for s, f in zip(spacing, flip)), 1.0])
    affine[:3, 3] = [-40.0, -50.0, -30.0]
    return affine


def ellipsoid_brain(shape, spacing, radii_mm=(30.0, 36.0, 28.0)) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii_mm)) <= 1


@dataclass(frozen=True)
class LevelPair:
    levels1: np.ndarray
    levels2: np.ndarray
    brain: LabelMap
    lesion: np.ndarray  # the planted new lesion, exactly

    @property
    def lesion_mm3(self) -> float:
        return float(self.lesion.sum()) * self.brain.voxel_volume


def level_pair(spacing=(0.7, 0.7, 3.0), shape=(96, 110, 22), core=(4, 4, 1), seed=0) -> LevelPair:
    """Grey-level images (3 in the brain at both visits) with one new lesion (level 5).

    The lesion is a core box dilated by the 1 mm opening's own footprint, so the opening
    leaves it exactly as planted and its volume is known to the voxel.
    """
    rng = np.random.default_rng(seed)
    brain = ellipsoid_brain(shape, spacing)
    centre = np.array(shape) // 2 + rng.integers(-3, 4, 3) * np.array([1, 1, 0])
    lesion = np.zeros(shape, bool)
    lesion[tuple(slice(c, c + n) for c, n in zip(centre, core))] = True
    lesion = ndimage.binary_dilation(lesion, ellipsoid(1.0, spacing))
    levels1 = np.where(brain, 3, 0).astype(np.uint8)
    levels2 = levels1.copy()
    levels2[lesion] = 5
    return LevelPair(levels1, levels2, LabelMap(brain, affine_for(spacing)), lesion)
