"""Step one's image preprocessing: N4, rigid-then-affine registration, intensity matching.

Each function takes and returns `Scan`s (arrays plus affines); ANTs does the heavy lifting.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import ndimage

from msnl.antsio import from_ants, to_ants
from msnl.scan import LabelMap, Scan


def n4(scan: Scan, shrink_factor: int = 4) -> Scan:
    """N4 bias-field correction (paper §1), on the whole head (no mask is known yet)."""
    import ants

    corrected = ants.n4_bias_field_correction(to_ants(scan), shrink_factor=shrink_factor)
    return from_ants(corrected)


@dataclass(frozen=True)
class Registration:
    """Visit 1 resampled onto visit 2's grid, and the affine that did it (ITK, LPS+ frame)."""

    moved: Scan
    matrix: np.ndarray  # 4x4, maps fixed (visit 2) physical points to moving (visit 1) points


@contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """ANTsPy passes `--random-seed` to antsRegistration from this package setting (0.6 has no
    per-call argument); set it for one registration and put the old value back."""
    import ants.config

    saved = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = saved


def register_rigid_then_affine(moving: Scan, fixed: Scan, seed: int = 1) -> Registration:
    """Rigid, then affine registration of `moving` onto `fixed` (paper §1), linear resampling.

    `seed` fixes ANTs' random sampling of metric points, so a run can be repeated exactly.
    """
    import ants

    fixed_img, moving_img = to_ants(fixed), to_ants(moving)
    with tempfile.TemporaryDirectory(prefix="msnl-reg-") as tmp, _ants_seed(seed):
        rigid = ants.registration(fixed_img, moving_img, type_of_transform="Rigid", outprefix=f"{tmp}/rigid_")
        affine = ants.registration(
            fixed_img,
            moving_img,
            type_of_transform="Affine",
            initial_transform=rigid["fwdtransforms"][0],
            outprefix=f"{tmp}/affine_",
        )
        transforms = affine["fwdtransforms"]
        moved = ants.apply_transforms(fixed_img, moving_img, transformlist=transforms, interpolator="linear")
        matrix = _compose(transforms)
    return Registration(from_ants(moved), matrix)


def _compose(transform_files: list[str]) -> np.ndarray:
    import ants

    total = np.eye(4)
    for path in transform_files:  # ANTs applies the last in the list first
        tx = ants.read_transform(path)
        params = np.asarray(tx.parameters)
        centre = np.asarray(tx.fixed_parameters)
        m = np.eye(4)
        m[:3, :3] = params[:9].reshape(3, 3)
        m[:3, 3] = params[9:12] + centre - m[:3, :3] @ centre
        total = total @ m
    return total


def voxel_reach_mm(affine: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """How far one voxel of the grid `affine` reaches along each unit vector (rows of
    `directions`), in mm: its spacing along an axis it is aligned with."""
    return np.abs(directions @ affine[:3, :3]).sum(axis=1)


def box_weights(width: float) -> np.ndarray:
    """A box `width` voxels wide centred on a voxel, as weights per voxel (the end voxels get
    the part they overlap), summing to 1."""
    reach = int(np.ceil(width / 2 - 0.5))
    k = np.arange(-reach, reach + 1)
    overlap = np.clip(np.minimum(k + 0.5, width / 2) - np.maximum(k - 0.5, -width / 2), 0.0, None)
    return overlap / overlap.sum()


def match_resolution(fine: Scan, coarse: Scan, min_ratio: float) -> Scan:
    """`fine` box-averaged along each of its voxel axes where `coarse`'s voxels reach at least
    `min_ratio` times further, over the length of `coarse`'s reach, so both scans hold the same
    partial volume across thick slices. Affine unchanged; the small head rotation between
    visits is ignored."""
    spacing = np.linalg.norm(fine.affine[:3, :3], axis=0)
    ratios = voxel_reach_mm(coarse.affine, (fine.affine[:3, :3] / spacing).T) / spacing
    data = fine.data
    for axis, ratio in enumerate(ratios):
        if ratio >= min_ratio:
            data = ndimage.correlate1d(data, box_weights(float(ratio)), axis=axis, mode="nearest")
    return Scan(data.astype(np.float32, copy=False), fine.affine)


def histogram_match(source: Scan, reference: Scan, brain: LabelMap, bins: int = 255, points: int = 64) -> Scan:
    """Match `source`'s brain intensities to `reference`'s (paper §1, visit 2 is the reference)."""
    import ants

    src = Scan(np.where(brain.data, source.data, 0).astype(np.float32), source.affine)
    ref = Scan(np.where(brain.data, reference.data, 0).astype(np.float32), reference.affine)
    matched = ants.histogram_match_image(to_ants(src), to_ants(ref), number_of_histogram_bins=bins, number_of_match_points=points)
    return Scan(np.where(brain.data, matched.numpy(), 0).astype(np.float32), source.affine)


def grey_level_edges(reference: Scan, brain: LabelMap, levels: int, percentile: float) -> np.ndarray:
    """Equal-width level edges from 0 to a high percentile of the reference's brain voxels."""
    top = float(np.percentile(reference.data[brain.data], percentile)) if brain.data.any() else 1.0
    return np.linspace(0.0, max(top, 1e-6), levels + 1)


def discretise(scan: Scan, brain: LabelMap, edges: np.ndarray) -> np.ndarray:
    """Grey levels 1..N inside the brain (paper §1: "discretized on 6 levels"), 0 outside."""
    levels = np.clip(np.digitize(scan.data, edges[1:-1]) + 1, 1, len(edges) - 1).astype(np.uint8)
    return np.where(brain.data, levels, 0).astype(np.uint8)


# Continuous levels stop this far above the top level: brighter voxels are vessels and artefacts.
CONTINUOUS_HEADROOM = 2.0


def continuous_levels(image: np.ndarray, brain: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The intensities behind `discretise`, in grey-level units: a level's bin centre reads as
    that level (1..N), so rounding half up gives back the grey level within 1..N; voxels above
    the top edge keep their excess up to N + CONTINUOUS_HEADROOM. 0 outside the brain."""
    width = float(edges[1] - edges[0])
    top = len(edges) - 1 + CONTINUOUS_HEADROOM
    values = np.clip(image / width + 0.5, 0.5, top)
    return np.where(brain, values, 0).astype(np.float32)


def continuous_flairs(flair1: Scan, flair2: Scan, brain: LabelMap, levels: int, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Both FLAIRs of a pair in continuous grey-level units, with the level edges step one
    draws from visit 2 (`grey_level_edges`)."""
    edges = grey_level_edges(flair2, brain, levels, percentile)
    return continuous_levels(flair1.data, brain.data, edges), continuous_levels(flair2.data, brain.data, edges)
