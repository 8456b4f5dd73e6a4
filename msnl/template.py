"""The embedded anatomy: nilearn's bundled MNI152 template and tissue maps (no download)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from msnl.scan import LabelMap, Scan

# FLAIR-like intensities per tissue, relative to grey matter: CSF is nulled, white matter a
# little darker than grey matter, as on a 3 T FLAIR (ours; read off the Lesjak scans).
FLAIR_CSF, FLAIR_GM, FLAIR_WM = 0.10, 1.0, 0.78


@dataclass(frozen=True, eq=False)
class Anatomy:
    """A skull-stripped head in MNI space: FLAIR-like image, brain mask, tissue probabilities."""

    flair: Scan
    brain: LabelMap
    gm: np.ndarray
    wm: np.ndarray
    name: str = "mni152"
    lesions: LabelMap | None = None  # expert lesion mask, for anatomies from real patients


def mni152(resolution: Literal[1, 2] = 2) -> tuple[Scan, LabelMap]:
    """The MNI152 T1 template and its brain mask, from nilearn's wheel."""
    from nilearn import datasets  # heavy import, only when asked

    template = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    return (
        Scan(np.asarray(template.get_fdata(), dtype=np.float32), template.affine),
        LabelMap(np.asarray(mask.get_fdata()) > 0, mask.affine),
    )


@lru_cache(maxsize=2)
def mni152_anatomy(resolution: Literal[1, 2] = 1) -> Anatomy:
    """FLAIR-like MNI152 anatomy, built from nilearn's grey- and white-matter templates."""
    from nilearn import datasets

    _, brain = mni152(resolution)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), dtype=np.float32)
    gm, wm = gm * brain.data, wm * brain.data
    csf = np.clip(brain.data - gm - wm, 0, 1)
    flair = (FLAIR_CSF * csf + FLAIR_GM * gm + FLAIR_WM * wm).astype(np.float32)
    return Anatomy(Scan(flair, brain.affine), brain, gm, wm)


def anatomy_from_real(name: str, flair: Scan, lesions: LabelMap, reference: Anatomy) -> Anatomy:
    """A real, skull-stripped FLAIR in MNI space as anatomy; tissue maps come from `reference`.

    Intensities are scaled so that normal brain sits where the embedded anatomy's does.
    """
    from scipy import ndimage

    brain = flair.data > 0
    to_ref = np.linalg.inv(reference.flair.affine) @ flair.affine
    tissue = [
        ndimage.affine_transform(t, to_ref[:3, :3], to_ref[:3, 3], output_shape=flair.shape, order=1) * brain
        for t in (reference.gm, reference.wm)
    ]
    normal = brain & ~lesions.data
    scale = FLAIR_GM / float(np.percentile(flair.data[normal], 75))
    return Anatomy(
        Scan((flair.data * scale).astype(np.float32), flair.affine), LabelMap(brain, flair.affine),
        tissue[0].astype(np.float32), tissue[1].astype(np.float32), name, LabelMap(lesions.data.astype(bool), flair.affine),
    )
