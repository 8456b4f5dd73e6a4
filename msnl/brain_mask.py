"""Brain masks with deepbet, whose weights ship inside its wheel (no download at run time).

The paper used FSL's bet, which has no wheel; deepbet gave Dice 0.96 against the reference
mask of Lesjak patient01 (docs/benchmarks.md has both real patients).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from importlib.metadata import version

import nibabel as nib
import numpy as np

from msnl.scan import LabelMap, Scan

_LOCK = threading.Lock()


def mask_model_version() -> str:
    return f"deepbet {version('deepbet')}"


@lru_cache(maxsize=1)
def _model():  # loading the TorchScript models takes ~1 s: once per process
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def brain_mask(scan: Scan, threshold: float = 0.5) -> LabelMap:
    """The brain of one FLAIR, on its own grid."""
    image = nib.Nifti1Image(np.asarray(scan.data, dtype=np.float32), scan.affine)
    with _LOCK:  # deepbet keeps per-call state (its bounding box) on the model object
        try:
            _, mask, _ = _model().run(image, threshold=threshold)
        except ValueError as exc:
            # deepbet's first pass found no brain at all and fails taking its largest component;
            # an empty mask lets the brain-volume check say so for the pair
            if "empty sequence" not in str(exc):
                raise
            return LabelMap(np.zeros(scan.shape, dtype=bool), scan.affine)
    return LabelMap(np.asarray(mask.dataobj) > 0, scan.affine)
