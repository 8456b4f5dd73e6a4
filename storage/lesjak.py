"""Reading real pairs in the Lesjak longitudinal form (../shared/data/lesjak-longitudinal)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from msnl.errors import InputError
from msnl.nifti import read_nifti
from msnl.scan import LabelMap, Scan


@dataclass(frozen=True)
class LesjakPair:
    """Two raw FLAIRs in their own scanner spaces, and the truth on the common grid."""

    name: str
    flair1: Scan
    flair2: Scan
    brainmask: LabelMap  # common grid
    newlesions: LabelMap  # common grid
    transform2: Path  # maps common-grid points to visit 2's space (used as read)


NEW_LESIONS = "newlesions.nii.gz"
VISIT2_TO_COMMON = "study2_FLAIR_to_common_space.txt"


def _labels(path: Path) -> LabelMap:
    img = nib.load(path)
    return LabelMap(np.asarray(img.dataobj) > 0, img.affine)


def read_lesjak_pair(folder: str | Path) -> LesjakPair:
    folder = Path(folder)
    needed = ["study1_FLAIR.nii.gz", "study2_FLAIR.nii.gz", "brainmask.nii.gz", NEW_LESIONS, VISIT2_TO_COMMON]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise InputError(f"is not a Lesjak-form pair: missing {', '.join(missing)}.", folder)
    return LesjakPair(
        name=folder.name,
        flair1=read_nifti(folder / "study1_FLAIR.nii.gz").to_scan(),
        flair2=read_nifti(folder / "study2_FLAIR.nii.gz").to_scan(),
        brainmask=_labels(folder / "brainmask.nii.gz"),
        newlesions=_labels(folder / NEW_LESIONS),
        transform2=folder / VISIT2_TO_COMMON,
    )


def read_cross_sectional(folder: str | Path) -> list[tuple[str, Scan, LabelMap]]:
    """Real FLAIRs with expert lesion masks, one per patient sub-folder (Lesjak MNI form)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder. Expected patient sub-folders holding FLAIR.nii.gz and lesions.nii.gz.", folder)
    out = []
    for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
        missing = [n for n in ("FLAIR.nii.gz", "lesions.nii.gz") if not (patient / n).exists()]
        if missing:
            raise InputError(f"lacks {', '.join(missing)}; each patient folder needs FLAIR.nii.gz and lesions.nii.gz.", patient)
        out.append((patient.name, read_nifti(patient / "FLAIR.nii.gz").to_scan(), _labels(patient / "lesions.nii.gz")))
    if not out:
        raise InputError("holds no patient folders. Expected sub-folders with FLAIR.nii.gz and lesions.nii.gz.", folder)
    return out
