"""Moving scans between msnl (nibabel's RAS+ affines) and ANTs images (ITK's LPS+ frame).

ANTs is imported where it is used, here and in the other modules that call it: importing it
takes over a second, and a no-op run, the dashboard and the command line never need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from msnl.scan import Scan, spacing_from_affine

if TYPE_CHECKING:
    import ants

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_ants(scan: Scan) -> ants.ANTsImage:
    """An ANTs image with the same voxels (float32) and the same place in space."""
    import ants

    spacing = np.asarray(spacing_from_affine(scan.affine))
    direction = _RAS_TO_LPS @ (scan.affine[:3, :3] / spacing)
    origin = _RAS_TO_LPS @ scan.affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(scan.data, dtype=np.float32),
        origin=origin.tolist(),
        spacing=spacing.tolist(),
        direction=direction,
    )


def from_ants(image: ants.ANTsImage) -> Scan:
    """The inverse of `to_ants`."""
    spacing = np.asarray(image.spacing)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ np.asarray(image.direction) * spacing
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.origin)
    return Scan(np.asarray(image.numpy(), dtype=np.float32), affine)
