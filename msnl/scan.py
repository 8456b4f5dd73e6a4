"""The scan data model: an intensity image is an array plus its affine, and knows its spacing.

A label map is a different type (`LabelMap`), so a mask can't be passed where an intensity
image is expected, and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


def spacing_from_affine(affine: npt.NDArray[np.floating]) -> tuple[float, float, float]:
    """Voxel size in millimetres along each array axis: the column norms of the affine."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class _Volume:
    data: np.ndarray
    affine: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {self.data.shape}")
        affine = np.asarray(self.affine, dtype=float)
        if affine.shape != (4, 4):
            raise ValueError(f"expected a 4x4 affine, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return spacing_from_affine(self.affine)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))


@dataclass(frozen=True, eq=False)
class Scan(_Volume):
    """A 3D intensity image (float voxels in scanner units) and its voxel-to-mm affine."""


@dataclass(frozen=True, eq=False)
class LabelMap(_Volume):
    """A 3D boolean or integer label image on some scan's grid."""
