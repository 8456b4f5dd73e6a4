"""Write a BIDS dataset of FLAIR visits: the layout `msnl ingest` and `msnl run` read back."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple

import nibabel as nib
import numpy as np

from msnl.scan import Scan
from storage.manifest import check_id


class BidsVisit(NamedTuple):
    subject: str
    visit: str
    scan: Scan
    acquired_on: str
    arm: str
    site: str


def flair_path(root: Path, subject: str, visit: str) -> Path:
    return root / f"sub-{subject}" / f"ses-{visit}" / "anat" / f"sub-{subject}_ses-{visit}_FLAIR.nii.gz"


def save_nifti(scan: Scan, path: Path) -> None:
    """Save a scan as int16 NIfTI (as scanners do) with both qform and sform set (code 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.clip(np.rint(scan.data), -32768, 32767).astype(np.int16), scan.affine)
    img.set_qform(scan.affine, code=1)
    img.set_sform(scan.affine, code=1)
    nib.save(img, path)


def write_bids(root: str | Path, visits: Iterable[BidsVisit]) -> Path:
    """Write FLAIRs, participants.tsv and each subject's sessions.tsv under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    participants: dict[str, tuple[str, str]] = {}
    sessions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for v in visits:
        check_id(v.subject, "subject")
        check_id(v.visit, "visit")
        save_nifti(v.scan, flair_path(root, v.subject, v.visit))
        participants[v.subject] = (v.arm, v.site)
        sessions[v.subject].append((v.visit, v.acquired_on))
    with open(root / "participants.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["participant_id", "arm", "site"])
        for subject, (arm, site) in sorted(participants.items()):
            w.writerow([f"sub-{subject}", arm, site])
    for subject, rows in sessions.items():
        with open(root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["session_id", "acq_time"])
            for visit, when in sorted(rows):
                w.writerow([f"ses-{visit}", when])
    (root / "dataset_description.json").write_text(
        '{"Name": "msnl cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw"}\n'
    )
    return root
