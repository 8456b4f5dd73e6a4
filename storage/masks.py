"""Finding mask files: one NIfTI, or a folder of BIDS-named masks matched by subject and session."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from msnl.errors import InputError
from msnl.scan import LabelMap

_ENTITIES = re.compile(r"sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?")


def find_masks(path: str | Path, desc: str | None = None) -> dict[tuple[str, str], Path]:
    """(subject, session) -> mask file. A single file maps from ("", ""). In a folder, `desc`
    keeps only the masks named with that BIDS `desc-` label (a simulated cohort's derivatives
    hold both `desc-lesions` and `desc-newlesions` masks)."""
    path = Path(path)
    if path.is_file():
        return {("", ""): path}
    if not path.is_dir():
        raise InputError("does not exist. Give a NIfTI mask or a folder of BIDS-named masks.", path)
    found: dict[tuple[str, str], Path] = {}
    for f in sorted(path.rglob("*.nii*")):
        m = _ENTITIES.search(f.name)
        if not m or (desc is not None and not re.search(rf"_desc-{re.escape(desc)}[_.]", f.name)):
            continue
        key = (m["subject"], m["session"] or "")
        if key in found:
            raise InputError(f"holds two masks for sub-{key[0]} ses-{key[1]}: {found[key].name} and {f.name}. Keep "
                             "one, or choose by the desc- label in their names (msnl evaluate --desc newlesions).", path)
        found[key] = f
    if not found:
        which = "BIDS-named masks" if desc is None else f"BIDS-named masks with desc-{desc}"
        raise InputError(f"holds no {which} (sub-<id>[_ses-<id>]_..._mask.nii.gz).", path)
    return found


def read_mask(path: Path) -> LabelMap:
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"cannot be read as a NIfTI mask ({exc}).", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"is not a 3D mask (shape {data.shape}).", path)
    return LabelMap(data > 0, img.affine)
