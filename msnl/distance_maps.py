"""The three anatomical distance maps of paper §1, in millimetres, oriented from the affine.

- DM: distance from the brain's surface (pial side) into its depth.
- DMz: distance below the brain's highest point (vertex to neck), along the scanner's S axis.
- DMx: distance in front of the brain's most posterior point (occiput to nose), along A.

Both directions come from the affine (RAS+ world coordinates), so they mean the same thing
whatever the voxel order or orientation of the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msnl.scan import LabelMap


@dataclass(frozen=True)
class DistanceMaps:
    dm: np.ndarray
    dmz: np.ndarray
    dmx: np.ndarray


def world_axis(shape: tuple[int, ...], affine: np.ndarray, axis: int) -> np.ndarray:
    """World coordinate (mm, RAS+) along `axis` (0 R, 1 A, 2 S) of every voxel centre."""
    row = affine[axis]
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    return (
        row[0] * i[:, None, None] + row[1] * j[None, :, None] + row[2] * k[None, None, :] + row[3]
    ).astype(np.float32)


def distance_maps(brain: LabelMap) -> DistanceMaps:
    """DM, DMz and DMx over the whole grid (zero outside the brain for DM)."""
    dm = ndimage.distance_transform_edt(brain.data, sampling=brain.spacing).astype(np.float32)
    superior = world_axis(brain.shape, brain.affine, 2)
    anterior = world_axis(brain.shape, brain.affine, 1)
    if brain.data.any():
        vertex = float(superior[brain.data].max())
        occiput = float(anterior[brain.data].min())
    else:
        vertex, occiput = float(superior.max()), float(anterior.min())
    return DistanceMaps(dm=dm, dmz=(vertex - superior).astype(np.float32), dmx=(anterior - occiput).astype(np.float32))
