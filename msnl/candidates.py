"""Candidate new-lesion ROIs (paper §1): ratio above threshold, opening, components, patches.

Arrays in, a label map and a table out. Every spatial size is in millimetres and becomes a
voxel footprint through the voxel spacing, so thick-slice scans are handled correctly: a 1 mm
opening on 0.7 x 0.7 x 3 mm voxels is an in-plane cross and never erodes across slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from msnl.config import StepOneConfig
from msnl.distance_maps import DistanceMaps
from msnl.scan import LabelMap

PATCH_CHANNELS = ("flair1", "flair2", "dm", "dmz", "dmx")


def ellipsoid(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel offsets within `radius_mm` of the centre, as a structuring element."""
    reach = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(reach, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def ratio_map(levels1: np.ndarray, levels2: np.ndarray) -> np.ndarray:
    """Visit 2 over visit 1, voxel by voxel; where visit 1 is 0 and visit 2 isn't, infinite."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = levels2.astype(np.float32) / levels1.astype(np.float32)
    return np.nan_to_num(ratio, nan=0.0, posinf=np.inf)


@dataclass(frozen=True)
class Candidates:
    """Candidate components on visit 2's grid: a label map (0 = none) and one row per label."""

    labels: LabelMap
    table: pd.DataFrame


def detect_candidates(
    levels1: np.ndarray, levels2: np.ndarray, brain: LabelMap, maps: DistanceMaps, cfg: StepOneConfig
) -> Candidates:
    """Voxels brighter at visit 2 by more than `cfg.ratio_threshold`, cleaned into components.

    The ratio map is restricted to the brain eroded by `brain_erosion_mm`, opened with a
    `opening_radius_mm` ball, split into 26-connected components, and components smaller than
    `min_component_mm3` are dropped.
    """
    spacing = brain.spacing
    inner = ndimage.binary_erosion(brain.data, ellipsoid(cfg.brain_erosion_mm, spacing))
    hot = (ratio_map(levels1, levels2) > cfg.ratio_threshold) & inner
    opened = ndimage.binary_opening(hot, ellipsoid(cfg.opening_radius_mm, spacing))
    labels, n = ndimage.label(opened, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = brain.voxel_volume
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts * voxel_mm3 >= cfg.min_component_mm3)
    keep = keep[keep > 0]
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    labels = remap[labels]
    return Candidates(LabelMap(labels, brain.affine), _table(labels, len(keep), brain, maps, cfg))


def _table(labels: np.ndarray, n: int, brain: LabelMap, maps: DistanceMaps, cfg: StepOneConfig) -> pd.DataFrame:
    columns = ["label", "lo_i", "lo_j", "lo_k", "hi_i", "hi_j", "hi_k", "x_mm", "y_mm", "z_mm",
               "volume_mm3", "dmz_mm", "infratentorial"]
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "infratentorial" else float) for c in columns})
    index = np.arange(1, n + 1)
    slices = ndimage.find_objects(labels, max_label=n)
    lo = np.array([[s.start for s in sl] for sl in slices])
    hi = np.array([[s.stop for s in sl] for sl in slices])
    centroid_vox = np.array(ndimage.center_of_mass(labels > 0, labels, index))
    centroid_mm = centroid_vox @ brain.affine[:3, :3].T + brain.affine[:3, 3]
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    dmz = np.array(ndimage.mean(maps.dmz, labels, index))
    table = pd.DataFrame(
        {
            "label": index,
            "lo_i": lo[:, 0], "lo_j": lo[:, 1], "lo_k": lo[:, 2],
            "hi_i": hi[:, 0], "hi_j": hi[:, 1], "hi_k": hi[:, 2],
            "x_mm": centroid_mm[:, 0], "y_mm": centroid_mm[:, 1], "z_mm": centroid_mm[:, 2],
            "volume_mm3": counts * brain.voxel_volume,
            "dmz_mm": dmz,
            "infratentorial": dmz > cfg.infratentorial_dmz_mm,
        }
    )
    return widen_boxes(table, cfg.patch_padding_voxels, labels.shape)


def patch_box(row) -> tuple[slice, slice, slice]:
    """A candidates-table row's padded bounding box, as slices of the pair's grid."""
    return slice(row.lo_i, row.hi_i), slice(row.lo_j, row.hi_j), slice(row.lo_k, row.hi_k)


def widen_boxes(table: pd.DataFrame, voxels: int, shape: tuple[int, int, int]) -> pd.DataFrame:
    """The table with every padded bounding box grown by `voxels` on each side, within the grid:
    the boxes step one draws with `voxels` more padding."""
    table = table.copy()
    for axis, dim in zip("ijk", shape):
        table[f"lo_{axis}"] = np.maximum(table[f"lo_{axis}"] - voxels, 0)
        table[f"hi_{axis}"] = np.minimum(table[f"hi_{axis}"] + voxels, dim)
    return table


def crop_patches(table: pd.DataFrame, arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """One float32 array per candidate: `arrays` as channels x its padded bounding box."""
    return [np.stack([np.asarray(a[patch_box(row)], dtype=np.float32) for a in arrays]) for row in table.itertuples()]


def extract_patches(
    table: pd.DataFrame, levels1: np.ndarray, levels2: np.ndarray, maps: DistanceMaps
) -> list[np.ndarray]:
    """One float32 array per candidate, channels `PATCH_CHANNELS` x its padded bounding box."""
    return crop_patches(table, (levels1, levels2, maps.dm, maps.dmz, maps.dmx))


def with_flair_channels(table: pd.DataFrame, patches: list[np.ndarray], flair1: np.ndarray, flair2: np.ndarray) -> list[np.ndarray]:
    """The same patches with their two FLAIR channels cropped from other images of the pair's
    grid (e.g. continuous levels instead of grey levels); the distance maps are kept."""
    return [np.concatenate([flairs, patch[2:]]) for flairs, patch in zip(crop_patches(table, (flair1, flair2)), patches)]
