"""Inpainting lesions with the surrounding normal-appearing tissue, to make an earlier visit."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def inpaint(image: np.ndarray, hole: np.ndarray, avoid: np.ndarray | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill `hole` from the voxels around it (normalised convolution at growing scales).

    `avoid` marks voxels that must not be used as a source (other lesions, background).
    Texture is restored with noise of the surroundings' spread.
    """
    known = ~hole if avoid is None else ~(hole | avoid)
    out = image.astype(np.float32).copy()
    todo = hole.copy()
    for sigma in (1.5, 3.0, 6.0, 12.0):
        num = ndimage.gaussian_filter(np.where(known, image, 0).astype(np.float32), sigma)
        den = ndimage.gaussian_filter(known.astype(np.float32), sigma)
        ready = todo & (den > 0.05)
        out[ready] = num[ready] / den[ready]
        todo &= ~ready
        if not todo.any():
            break
    ring = ndimage.binary_dilation(hole, iterations=3) & known
    if rng is not None and ring.sum() > 8:
        spread = float(np.std(image[ring] - ndimage.gaussian_filter(image, 1.5)[ring]))
        out[hole] += rng.normal(0, spread, int(hole.sum())).astype(np.float32)
    return out
