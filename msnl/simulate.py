"""Simulated longitudinal FLAIR-like visits from the embedded template.

Random parameters are drawn once, from a seeded generator, and stored with what they produced;
the operations that apply them are deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from msnl.scan import LabelMap, Scan


@dataclass(frozen=True)
class VisitParams:
    """Acquisition nuisances of one simulated visit."""

    shift_mm: tuple[float, float, float]
    intensity_scale: float
    noise_sigma: float

    def as_dict(self) -> dict:
        return asdict(self)


def draw_visit_params(rng: np.random.Generator, max_shift_mm: float = 3.0) -> VisitParams:
    return VisitParams(
        shift_mm=tuple(float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3)),  # type: ignore[arg-type]
        intensity_scale=float(rng.uniform(0.8, 1.2)),
        noise_sigma=float(rng.uniform(0.01, 0.03)),
    )


# T1 intensity (brain 99th percentile = 1) -> FLAIR-like intensity: CSF dark, grey matter
# brighter than white matter, as on FLAIR. Knots read off the MNI152 T1 histogram.
_T1_KNOTS = (0.0, 0.3, 0.6, 0.9, 1.2)
_FLAIR_KNOTS = (0.05, 0.1, 0.7, 0.55, 0.55)


def flair_like(template: Scan, brain: LabelMap) -> Scan:
    """A FLAIR-like contrast from the T1 template: dark CSF, grey matter over white matter."""
    t1 = template.data / np.percentile(template.data[brain.data], 99)
    flair = np.interp(t1, _T1_KNOTS, _FLAIR_KNOTS)
    flair = np.where(brain.data, flair, 0.3 * flair)
    return Scan(flair.astype(np.float32), template.affine)


def apply_visit(base: Scan, params: VisitParams, seed: int) -> Scan:
    """Shift, scale and add Rician noise to `base`, deterministically from `params` and `seed`."""
    shift_vox = np.asarray(params.shift_mm) / np.asarray(base.spacing)
    moved = ndimage.shift(base.data, shift_vox, order=1, mode="constant")
    rng = np.random.default_rng(seed)
    sigma = params.noise_sigma
    real = moved + rng.normal(0, sigma, moved.shape)
    imag = rng.normal(0, sigma, moved.shape)
    noisy = np.hypot(real, imag) * params.intensity_scale
    return Scan((noisy * 1000).astype(np.float32), base.affine)
