"""Resampling label maps between grids with an ITK affine transform file (ANTs)."""

from __future__ import annotations

from pathlib import Path

import ants
import numpy as np

from msnl.antsio import to_ants
from msnl.scan import LabelMap, Scan


def resample_labels(labels: LabelMap, reference: LabelMap, transform: str | Path | None = None,
                    invert: bool = False) -> LabelMap:
    """`labels` on `reference`'s grid, nearest neighbour. `transform` maps reference points
    to `labels`' space (ITK convention, used as read; `invert` uses its inverse), or None for
    the identity (resampling through world coordinates)."""
    moving = to_ants(Scan(labels.data.astype(np.float32), labels.affine))
    fixed = to_ants(Scan(np.zeros(reference.shape, np.float32), reference.affine))
    out = ants.apply_transforms(
        fixed, moving, transformlist=[str(transform)] if transform else [], interpolator="nearestNeighbor",
        whichtoinvert=[invert] if transform else None,
    )
    return LabelMap(np.rint(out.numpy()).astype(labels.data.dtype), reference.affine)
