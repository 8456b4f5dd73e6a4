"""Shared fixtures: seeded factories for tiny NIfTI files and BIDS cohorts, and the real data."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LONGITUDINAL = SHARED_DATA / "lesjak-longitudinal"


def aniso_affine(spacing=(0.7, 0.7, 3.0), origin=(-90.0, -120.0, -60.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def blob_volume(shape=(24, 20, 12), seed=0, dtype=np.int16) -> np.ndarray:
    """A head-like blob: a bright ellipsoid with noise, on a dark background."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, dtype=float) - 1)[:, None, None, None] / 2
    radius = np.asarray(shape, dtype=float)[:, None, None, None] / 2.5
    inside = (((grid - centre) / radius) ** 2).sum(0) < 1
    data = np.where(inside, 400, 20) + rng.normal(0, 10, shape)
    return np.clip(data, 0, None).astype(dtype)


@pytest.fixture
def make_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Write a small NIfTI file and return its path; every header field can be overridden."""

    def make(
        name: str = "scan.nii.gz",
        data: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        seed: int = 0,
        qform_code: int = 1,
        sform_code: int = 1,
    ) -> Path:
        data = blob_volume(seed=seed) if data is None else data
        affine = aniso_affine() if affine is None else affine
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=qform_code)
        img.set_sform(affine, code=sform_code)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, path)
        return path

    return make


def write_bids_cohort(root: Path, n_subjects: int = 2, n_visits: int = 2, shape=(24, 20, 12)) -> Path:
    """A tiny BIDS cohort of blob scans, with participants.tsv and sessions.tsv."""
    lines = ["participant_id\tarm\tsite"]
    for s in range(1, n_subjects + 1):
        subject = f"{s:03d}"
        lines.append(f"sub-{subject}\t{'placebo' if s % 2 else 'active'}\tsite-{s % 3}")
        sessions = ["session_id\tacq_time"]
        for v in range(1, n_visits + 1):
            anat = root / f"sub-{subject}" / f"ses-{v:02d}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(blob_volume(shape, seed=100 * s + v), aniso_affine())
            img.set_qform(img.affine, code=1)
            img.set_sform(img.affine, code=1)
            nib.save(img, anat / f"sub-{subject}_ses-{v:02d}_FLAIR.nii.gz")
            sessions.append(f"ses-{v:02d}\t{2020 + v}-03-0{s % 9 + 1}")
        (root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv").write_text("\n".join(sessions) + "\n")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def bids_cohort(tmp_path: Path) -> Path:
    return write_bids_cohort(tmp_path / "bids")


@pytest.fixture(scope="session")
def longitudinal() -> Path:
    if not LONGITUDINAL.exists():
        pytest.skip(f"real patients not found at {LONGITUDINAL} (../shared is absent on a fresh clone)")
    return LONGITUDINAL
