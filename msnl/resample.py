"""Resampling label maps between grids with an ITK affine transform file (ANTs)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from msnl.antsio import to_ants
from msnl.scan import LabelMap, Scan


def resample_labels(labels: LabelMap, reference: LabelMap, transform: str | Path | None = None,
                    invert: bool = False) -> LabelMap:
    """`labels` on `reference`'s grid, nearest neighbour. `transform` maps reference points
    to `labels`' space (ITK convention, used as read; `invert` uses its inverse), or None for
    the identity (resampling through world coordinates)."""
    import ants

    moving = to_ants(Scan(labels.data.astype(np.float32), labels.affine))
    fixed = to_ants(Scan(np.zeros(reference.shape, np.float32), reference.affine))
    with tempfile.TemporaryDirectory(prefix="msnl-tx-") as tmp:
        transforms = []
        if transform and invert:  # ANTs inverts only .mat files, so write the inverse as one
            inverse = Path(tmp) / "inverse.mat"
            ants.write_transform(ants.read_transform(str(transform)).invert(), str(inverse))
            transforms = [str(inverse)]
        elif transform:
            transforms = [str(transform)]
        out = ants.apply_transforms(fixed, moving, transformlist=transforms, interpolator="nearestNeighbor")
    return LabelMap(np.rint(out.numpy()).astype(labels.data.dtype), reference.affine)
