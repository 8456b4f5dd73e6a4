"""Finding mask files: one NIfTI, a folder of BIDS-named masks matched by subject and session,
or the truth of a public longitudinal dataset's patient folders (Lesjak, MSSEG-2)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from msnl.errors import InputError
from msnl.scan import LabelMap
from storage.lesjak import NEW_LESIONS, VISIT2_TO_COMMON
from storage.manifest import PAIR_FOLDER_FORMS

_ENTITIES = re.compile(r"sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?")


# The new-lesion truth in a patient folder of a public longitudinal dataset (`PAIR_FOLDER_FORMS`):
# its file, the session it belongs to (the second visit, as `msnl ingest` names it), and the
# transform from its grid to visit 2's space, or None when it lies on the FLAIRs' own grid.
DATASET_TRUTHS = {
    "Lesjak longitudinal": (NEW_LESIONS, PAIR_FOLDER_FORMS["Lesjak longitudinal"][1][0], VISIT2_TO_COMMON),  # a common grid
    "MSSEG-2": ("ground_truth.nii.gz", PAIR_FOLDER_FORMS["MSSEG-2"][1][0], None),  # the middle space of both FLAIRs
}


def dataset_truths(path: str | Path) -> dict[tuple[str, str], tuple[Path, Path | None]] | None:
    """(patient, session) -> (new-lesion mask, transform from its grid to visit 2's space, or
    None) for a dataset folder of patient folders in a form of `DATASET_TRUTHS`, one such
    patient folder, or the truth file in one; None for anything else."""
    path = Path(path)
    names = {name for name, _, _ in DATASET_TRUTHS.values()}
    if path.is_file():
        folders = [path.parent] if path.name in names else []
    elif any((path / name).exists() for name in names):
        folders = [path]
    else:
        folders = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    found = {}
    for folder in folders:
        for name, session, transform in DATASET_TRUTHS.values():
            if (folder / name).exists():
                if transform is not None and not (folder / transform).exists():
                    raise InputError(f"holds {name} but not {transform}: its truth lies on a grid of its own, "
                                     f"which only that transform relates to visit 2's. Restore the file.", folder)
                found[(folder.name, session)] = (folder / name, folder / transform if transform else None)
                break
    return found or None


def dataset_truth_forms() -> str:
    """The public datasets' truth forms `dataset_truths` reads, for messages."""
    return " or ".join(f"{form} ({name})" for form, (name, _, _) in DATASET_TRUTHS.items()) + " patient folders"


def find_masks(path: str | Path, desc: str | None = None, also: str = "") -> dict[tuple[str, str], Path]:
    """(subject, session) -> mask file. A single file maps from ("", ""). In a folder, `desc`
    keeps only the masks named with that BIDS `desc-` label (a simulated cohort's derivatives
    hold both `desc-lesions` and `desc-newlesions` masks). `also` names other forms the caller
    accepts, for the messages when there is no mask."""
    path = Path(path)
    if path.is_file():
        return {("", ""): path}
    if not path.is_dir():
        forms = f"a NIfTI mask, a folder of BIDS-named masks, or a folder of {also}" if also else "a NIfTI mask or a folder of BIDS-named masks"
        raise InputError(f"does not exist. Give {forms}.", path)
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
        raise InputError(f"holds no {which} (sub-<id>[_ses-<id>]_..._mask.nii.gz)" + (f", and no {also}" if also else "") + ".", path)
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
