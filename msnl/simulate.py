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


def flair_like(template: Scan, brain: LabelMap) -> Scan:
    """A crude FLAIR contrast from the T1 template: dark CSF and background, bright tissue."""
    t1 = template.data / np.percentile(template.data[brain.data], 99)
    flair = np.where(brain.data, np.clip(t1, 0, 1.2), 0.15 * np.clip(t1, 0, 1))
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
