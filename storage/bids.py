"""Write BIDS datasets of FLAIR visits (and simulator truth under derivatives/).

    OUT/participants.tsv                               participant_id, arm, site
    OUT/sub-<s>/sub-<s>_sessions.tsv                   session_id, acq_time
    OUT/sub-<s>/ses-<v>/anat/sub-<s>_ses-<v>_FLAIR.nii.gz
    OUT/derivatives/msnl-simulate/sub-<s>/ses-<v>/anat/sub-<s>_ses-<v>_desc-lesions_mask.nii.gz
    OUT/derivatives/msnl-simulate/sub-<s>/ses-<v>/anat/sub-<s>_ses-<v>_desc-newlesions_mask.nii.gz
    OUT/derivatives/msnl-simulate/sub-<s>/sub-<s>_desc-simulation_params.json

Files are written to a temporary name and renamed, and gzip carries no timestamp, so the same
inputs give bit-identical files.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple

import nibabel as nib
import numpy as np

from msnl.scan import LabelMap, Scan
from storage.manifest import check_id

DERIVATIVES = Path("derivatives") / "msnl-simulate"


class BidsVisit(NamedTuple):
    subject: str
    visit: str
    scan: Scan
    acquired_on: str
    arm: str
    site: str


def flair_path(root: Path, subject: str, visit: str) -> Path:
    return root / f"sub-{subject}" / f"ses-{visit}" / "anat" / f"sub-{subject}_ses-{visit}_FLAIR.nii.gz"


def truth_path(root: Path, subject: str, visit: str, desc: str) -> Path:
    return root / DERIVATIVES / f"sub-{subject}" / f"ses-{visit}" / "anat" / f"sub-{subject}_ses-{visit}_desc-{desc}_mask.nii.gz"


def atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def save_image(img: nib.Nifti1Image, path: Path) -> None:
    """Save a NIfTI image as .nii.gz, atomically and with no timestamp in the gzip header."""
    atomic_write(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save with qform and sform both set (code 1: scanner), deterministically."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    save_image(img, path)


def save_flair(scan: Scan, path: Path) -> None:
    """A FLAIR as int16, as scanners store them."""
    save_nifti(np.clip(np.rint(scan.data), -32768, 32767).astype(np.int16), scan.affine, path)


def save_mask(mask: LabelMap, path: Path) -> None:
    save_nifti(mask.data.astype(np.uint8), mask.affine, path)


def write_sessions(root: Path, subject: str, sessions: Iterable[tuple[str, str]]) -> None:
    rows = "".join(f"ses-{visit}\t{when}\n" for visit, when in sorted(sessions))
    atomic_write(root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", f"session_id\tacq_time\n{rows}".encode())


def write_participants(root: Path, participants: dict[str, tuple[str, str]]) -> None:
    rows = "".join(f"sub-{s}\t{arm}\t{site}\n" for s, (arm, site) in sorted(participants.items()))
    atomic_write(root / "participants.tsv", f"participant_id\tarm\tsite\n{rows}".encode())
    atomic_write(root / "dataset_description.json", b'{"Name": "msnl cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw"}\n')


def write_params(root: Path, subject: str, params: dict) -> None:
    path = root / DERIVATIVES / f"sub-{subject}" / f"sub-{subject}_desc-simulation_params.json"
    atomic_write(path, json.dumps(params, indent=1, sort_keys=True).encode())
    atomic_write(root / DERIVATIVES / "dataset_description.json",
                  b'{"Name": "msnl-simulate truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}\n')


def write_bids(root: str | Path, visits: Iterable[BidsVisit]) -> Path:
    """Write FLAIRs, participants.tsv and each subject's sessions.tsv under `root`."""
    root = Path(root)
    participants: dict[str, tuple[str, str]] = {}
    sessions: dict[str, list[tuple[str, str]]] = {}
    for v in visits:
        check_id(v.subject, "subject")
        check_id(v.visit, "visit")
        save_flair(v.scan, flair_path(root, v.subject, v.visit))
        participants[v.subject] = (v.arm, v.site)
        sessions.setdefault(v.subject, []).append((v.visit, v.acquired_on))
    for subject, rows in sessions.items():
        write_sessions(root, subject, rows)
    write_participants(root, participants)
    return root
