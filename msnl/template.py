"""The embedded anatomy: nilearn's bundled MNI152 template, so a fresh machine needs no download."""

from __future__ import annotations

from typing import Literal

import numpy as np

from msnl.scan import LabelMap, Scan


def mni152(resolution: Literal[1, 2] = 2) -> tuple[Scan, LabelMap]:
    """The MNI152 T1 template and its brain mask, from nilearn's wheel (no network)."""
    from nilearn import datasets  # heavy import, only when asked

    template = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    return (
        Scan(np.asarray(template.get_fdata(), dtype=np.float32), template.affine),
        LabelMap(np.asarray(mask.get_fdata()) > 0, mask.affine),
    )
