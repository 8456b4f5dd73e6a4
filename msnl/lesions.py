"""Synthetic MS lesions: soft-edged ovoids in white matter, drawn once, rendered exactly.

A lesion's soft profile is 0.5 exactly on its ellipsoid's surface, so "the lesion" (profile
> 0.5) is a known set, and the truth masks follow from the same profile as the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from msnl.template import Anatomy

# Where MS lesions sit, and how often (ours, from the usual MS distribution).
LOCATIONS = {"periventricular": 0.45, "deep_white_matter": 0.25, "juxtacortical": 0.15, "infratentorial": 0.15}
EDGE_WIDTH = 0.15  # width of the soft edge, as a fraction of the radius
VOLUME_MM3 = (4.0, 4000.0)  # a few mm³ to a few cm³
_INFRATENTORIAL_Z_MM = -20.0  # MNI z below which white matter is brainstem or cerebellum


@dataclass(frozen=True)
class Lesion:
    """One lesion in template (MNI, mm) space; `onset` is the first visit (0-based) showing it.

    An enlarging lesion has `growth_visit` (when it grows) and `growth` (radius factor).
    """

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    contrast: float  # intensity multiplier at the lesion's core
    onset: int
    location: str
    growth_visit: int | None = None
    growth: float = 1.0
    extra: dict = field(default_factory=dict)

    def radii_at(self, visit: int) -> np.ndarray:
        grown = self.growth_visit is not None and visit >= self.growth_visit
        return np.asarray(self.radii_mm) * (self.growth if grown else 1.0)

    def present_at(self, visit: int) -> bool:
        return visit >= self.onset

    def as_dict(self) -> dict:
        return asdict(self)


def profile(lesion: Lesion, visit: int, affine: np.ndarray, shape: tuple[int, int, int],
            box_visit: int | None = None) -> tuple[tuple[slice, ...], np.ndarray]:
    """The soft profile (0..1, 0.5 on the surface) of a lesion at a visit, in a bounding box
    sized for the lesion at `box_visit` (default: the same visit)."""
    radii = lesion.radii_at(visit)
    box_radii = lesion.radii_at(visit if box_visit is None else box_visit)
    rotation = Rotation.from_euler("xyz", lesion.angles_deg, degrees=True).as_matrix()
    centre_vox = np.linalg.solve(affine, [*lesion.centre_mm, 1.0])[:3]
    reach = (max(radii.max(), box_radii.max()) * (1 + 4 * EDGE_WIDTH)) / np.abs(np.diag(affine)[:3])
    lo = np.maximum(np.floor(centre_vox - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + reach).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3] - np.asarray(lesion.centre_mm)
    local = world @ rotation / radii
    rho = np.sqrt((local**2).sum(-1))
    return box, (1.0 / (1.0 + np.exp((rho - 1.0) / EDGE_WIDTH))).astype(np.float32)


def paint(flair: np.ndarray, affine: np.ndarray, lesions: list[Lesion], visit: int) -> np.ndarray:
    """`flair` with every lesion present at `visit` (brightest lesion wins where they overlap)."""
    factor = np.ones_like(flair)
    for lesion in lesions:
        if lesion.present_at(visit):
            box, p = profile(lesion, visit, affine, flair.shape)
            factor[box] = np.maximum(factor[box], 1.0 + (lesion.contrast - 1.0) * p)
    return flair * factor


def soft_mask(lesions: list[Lesion], visit: int, affine: np.ndarray, shape, new_only: bool) -> np.ndarray:
    """Soft truth map: all lesions present at `visit`, or only what is new since `visit - 1`.

    New means a lesion whose onset is `visit`, or the grown rim of an enlarging lesion.
    """
    out = np.zeros(shape, np.float32)
    for lesion in lesions:
        if not lesion.present_at(visit):
            continue
        box, p = profile(lesion, visit, affine, shape)
        if new_only:
            if lesion.onset == visit:
                pass
            elif lesion.growth_visit == visit:
                _, before = profile(lesion, visit - 1, affine, shape, box_visit=visit)
                p = np.minimum(p, 1.0 - before)
            else:
                continue
        out[box] = np.maximum(out[box], p)
    return out


def _candidate_voxels(anatomy: Anatomy) -> dict[str, np.ndarray]:
    wm = anatomy.wm > 0.8
    csf = anatomy.brain.data & (anatomy.gm + anatomy.wm < 0.3)
    z = np.arange(wm.shape[2]) * anatomy.brain.affine[2, 2] + anatomy.brain.affine[2, 3]
    infra = np.broadcast_to(z < _INFRATENTORIAL_Z_MM, wm.shape)
    near_csf = ndimage.binary_dilation(csf, iterations=5)
    near_gm = ndimage.binary_dilation(anatomy.gm > 0.5, iterations=3)
    deep = ndimage.binary_erosion(anatomy.brain.data, iterations=8)
    supra = wm & ~infra & deep
    return {
        "periventricular": np.argwhere(supra & near_csf),
        "deep_white_matter": np.argwhere(supra & ~near_csf & ~near_gm),
        "juxtacortical": np.argwhere(supra & near_gm),
        "infratentorial": np.argwhere(wm & infra & deep),
    }


_CANDIDATES: dict[int, dict[str, np.ndarray]] = {}


def draw_lesion(rng: np.random.Generator, anatomy: Anatomy, onset: int, enlarging_at: int | None = None) -> Lesion:
    """Draw one lesion: location class, a white-matter voxel of that class, size, shape, contrast."""
    key = id(anatomy)
    if key not in _CANDIDATES:
        _CANDIDATES[key] = _candidate_voxels(anatomy)
    places = _CANDIDATES[key]
    names = [n for n in LOCATIONS if len(places[n])]
    probs = np.array([LOCATIONS[n] for n in names])
    location = names[rng.choice(len(names), p=probs / probs.sum())]
    voxel = places[location][rng.integers(len(places[location]))]
    centre = anatomy.brain.affine[:3, :3] @ voxel + anatomy.brain.affine[:3, 3] + rng.uniform(-0.5, 0.5, 3)
    log_lo, log_hi = np.log(VOLUME_MM3[0]), np.log(VOLUME_MM3[1])
    volume = float(np.exp(np.clip(rng.normal(np.log(60.0), 1.2), log_lo, log_hi)))
    if location == "juxtacortical":
        volume = min(volume, 300.0)
    elongation = rng.uniform(1.0, 2.2)  # ovoid: one long axis
    r = (3 * volume / (4 * np.pi * elongation)) ** (1 / 3)
    return Lesion(
        centre_mm=tuple(float(c) for c in centre),
        radii_mm=(float(r * elongation), float(r), float(r * rng.uniform(0.8, 1.0))),
        angles_deg=tuple(float(a) for a in rng.uniform(0, 180, 3)),
        contrast=float(rng.uniform(1.45, 1.9)),
        onset=onset,
        location=location,
        growth_visit=enlarging_at,
        growth=float(rng.uniform(1.3, 1.6)) if enlarging_at is not None else 1.0,
    )
