"""Training sources: simulated cohorts and real pairs in the Lesjak and MSSEG-2 forms become
pairs with truth."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from msnl.errors import InputError
from msnl.metrics import dice
from msnl.resample import resample_labels
from msnl.scan import LabelMap
from msnl.simulate import SimOptions
from pipelines.simulate import run_simulate
from storage.training_data import read_truth, training_pairs


def test_simulated_cohort_gives_consecutive_pairs_with_truth_on_visit_2s_grid(tmp_path):
    root = run_simulate(tmp_path / "sim", 2, 3, seed=4, opts=SimOptions(), progress=False)
    pairs = training_pairs(root, tmp_path / "store.zarr")
    assert [(p.subject, p.from_visit, p.to_visit) for p in pairs] == [
        ("001", "01", "02"), ("001", "02", "03"), ("002", "01", "02"), ("002", "02", "03")
    ]
    flair = nib.load(root / "sub-002/ses-02/anat/sub-002_ses-02_FLAIR.nii.gz")
    truth = read_truth(pairs[2], LabelMap(np.zeros(flair.shape, bool), flair.affine))
    assert truth.shape == flair.shape and truth.any()  # subject 2 always has new lesions


def test_a_folder_without_truth_is_refused(tmp_path):
    (tmp_path / "sub-01/ses-01/anat").mkdir(parents=True)
    with pytest.raises(InputError, match="no truth"):
        training_pairs(tmp_path, tmp_path / "s.zarr")


def test_lesjak_pairs_and_their_truth(longitudinal, tmp_path):
    pairs = training_pairs(longitudinal, tmp_path / "s.zarr")
    assert [(p.subject, p.from_visit, p.to_visit) for p in pairs] == [("patient01", "1", "2"), ("patient12", "1", "2")]
    assert pairs[0].transform == str(longitudinal / "patient01" / "study2_FLAIR_to_common_space.txt")
    study2 = nib.load(longitudinal / "patient01" / "study2_FLAIR.nii.gz")
    truth = read_truth(pairs[0], LabelMap(np.zeros(study2.shape, bool), study2.affine))
    common = nib.load(longitudinal / "patient01" / "newlesions.nii.gz")
    voxel2 = float(np.prod(study2.header.get_zooms()[:3]))
    voxelc = float(np.prod(common.header.get_zooms()[:3]))
    # the truth keeps its volume (within resampling error) on visit 2's grid
    assert truth.sum() * voxel2 == pytest.approx((np.asarray(common.dataobj) > 0).sum() * voxelc, rel=0.25)
    # and in the right place: taken back to the common grid, it lies on the original
    back = resample_labels(LabelMap(truth.astype(np.uint8), study2.affine),
                           LabelMap(np.zeros(common.shape, bool), common.affine), pairs[0].transform)
    assert dice(back.data > 0, np.asarray(common.dataobj) > 0) > 0.6


def test_msseg2_patient_folders_give_pairs_whose_truth_is_on_visit_2s_own_grid(tmp_path, make_nifti):
    for patient in ("013", "015"):
        for name in ("flair_time01_on_middle_space.nii.gz", "flair_time02_on_middle_space.nii.gz"):
            make_nifti(f"msseg2/{patient}/{name}")
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[4:7, 4:7, 4:7] = 1
    make_nifti("msseg2/013/ground_truth.nii.gz", data=truth, affine=np.eye(4))
    make_nifti("msseg2/015/ground_truth.nii.gz", data=np.zeros_like(truth), affine=np.eye(4))
    pairs = training_pairs(tmp_path / "msseg2", tmp_path / "s.zarr")
    assert [(p.subject, p.from_visit, p.to_visit, p.transform) for p in pairs] == [("013", "01", "02", None), ("015", "01", "02", None)]
    on_grid = read_truth(pairs[0], LabelMap(np.zeros((12, 12, 12), bool), np.eye(4)))
    assert on_grid.sum() == 27 and on_grid[5, 5, 5]
