"""`msnl evaluate` on hand-made NIfTI masks: single files, BIDS folders, JSON, and bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from msnl.errors import InputError
from msnl.inference import load_weights
from pipelines.cli import main


def _save(path, mask, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4) if affine is None else affine), path)
    return path


def _cube(shape, *slices):
    m = np.zeros(shape, bool)
    for s in slices:
        m[s] = True
    return m


def test_single_files_and_json(tmp_path, capsys):
    truth = _save(tmp_path / "t.nii.gz", _cube((20, 20, 20), np.s_[2:6, 2:6, 2:6], np.s_[12:16, 12:16, 12:16]))
    pred = _save(tmp_path / "p.nii.gz", _cube((20, 20, 20), np.s_[2:6, 2:6, 2:6]))
    assert main(["evaluate", str(pred), str(truth)]) == 0
    out = capsys.readouterr().out
    assert "sensitivity 0.500, PPV 1.000, F1 0.667" in out
    assert "lesion-free pairs: none, so no false-positive count" in out and "nan" not in out
    assert main(["evaluate", "--json", str(pred), str(truth)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["lesion_f1"] == pytest.approx(2 / 3)
    assert report["pairs"][0]["dice"] == pytest.approx(2 * 64 / (64 + 128))


def test_bids_folders_match_by_subject_and_session_and_count_fps_on_lesion_free_pairs(tmp_path, capsys):
    shape = (16, 16, 16)
    lesion = _cube(shape, np.s_[2:6, 2:6, 2:6])
    fp = _cube(shape, np.s_[10:13, 10:13, 10:13])
    _save(tmp_path / "truth/sub-01/ses-02/sub-01_ses-02_desc-newlesions_mask.nii.gz", lesion)
    _save(tmp_path / "truth/sub-02/ses-02/sub-02_ses-02_desc-newlesions_mask.nii.gz", np.zeros(shape, bool))
    _save(tmp_path / "pred/sub-01_ses-02_desc-newlesions_mask.nii.gz", lesion)
    _save(tmp_path / "pred/sub-02_ses-02_desc-newlesions_mask.nii.gz", fp)
    assert main(["evaluate", "--json", str(tmp_path / "pred"), str(tmp_path / "truth")]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["lesion_free_pairs"] == 1 and summary["fp_lesions_per_lesion_free_pair"] == 1.0
    assert summary["fp_volume_mm3_per_lesion_free_pair"] == 27.0
    assert summary["lesion_sensitivity"] == 1.0 and summary["lesion_ppv"] == 0.5


def test_desc_picks_the_new_lesion_masks_of_a_simulated_cohorts_derivatives(tmp_path, capsys):
    shape = (16, 16, 16)
    new, old = _cube(shape, np.s_[2:6, 2:6, 2:6]), _cube(shape, np.s_[10:13, 10:13, 10:13])
    truth = tmp_path / "derivatives/msnl-simulate/sub-01"
    _save(truth / "ses-01/anat/sub-01_ses-01_desc-lesions_mask.nii.gz", old)
    _save(truth / "ses-02/anat/sub-01_ses-02_desc-lesions_mask.nii.gz", new | old)  # every lesion at visit 2
    _save(truth / "ses-02/anat/sub-01_ses-02_desc-newlesions_mask.nii.gz", new)
    _save(tmp_path / "pred/sub-01_ses-02_desc-newlesions.nii.gz", new)  # desc- may end the name
    args = ["evaluate", "--json", str(tmp_path / "pred"), str(truth.parent)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds two masks for sub-01 ses-02" in err and "--desc newlesions" in err
    assert main(args + ["--desc", "newlesions"]) == 0
    pair = json.loads(capsys.readouterr().out)["pairs"][0]
    assert pair["truth"].endswith("sub-01_ses-02_desc-newlesions_mask.nii.gz") and pair["dice"] == 1.0
    assert main(args + ["--desc", "enhancing"]) == 2
    assert "holds no BIDS-named masks with desc-enhancing" in capsys.readouterr().err


def test_prediction_on_another_grid_is_resampled_through_world_coordinates(tmp_path, capsys):
    truth = _save(tmp_path / "t.nii.gz", _cube((20, 20, 20), np.s_[4:8, 4:8, 4:8]))
    shifted = np.eye(4)
    shifted[:3, 3] = [2, 0, 0]  # the prediction's grid starts 2 mm further along x
    pred = _save(tmp_path / "p.nii.gz", _cube((20, 20, 20), np.s_[2:6, 4:8, 4:8]), shifted)
    assert main(["evaluate", "--json", str(pred), str(truth)]) == 0
    pair = json.loads(capsys.readouterr().out)["pairs"][0]
    assert pair["resampled"] == "prediction" and pair["dice"] == pytest.approx(1.0)


def _lesjak_truth(folder, truth, shift_mm):
    """A patient folder of the Lesjak form: its truth on the common grid, and the transform
    from that grid to visit 2's space, a translation by `shift_mm` along z (the same axis in
    ITK's LPS and NIfTI's RAS)."""
    import ants

    _save(folder / "newlesions.nii.gz", truth)
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=(0, 0, shift_mm))
    ants.write_transform(transform, str(folder / "study2_FLAIR_to_common_space.txt"))


def test_lesjak_truth_is_brought_onto_the_predictions_grid_through_the_patients_transform(tmp_path, capsys):
    truth = _cube((24, 24, 24), np.s_[4:10, 4:10, 4:10], np.s_[14:18, 14:18, 14:18])
    _lesjak_truth(tmp_path / "lesjak" / "patient01", truth, 3)
    pred = np.roll(truth, 3, axis=2)  # where visit 2 sees them: 3 mm further along z
    _save(tmp_path / "out/sub-patient01/ses-2/sub-patient01_ses-2_desc-newlesions_mask.nii.gz", pred)
    for given in ("lesjak", "lesjak/patient01", "lesjak/patient01/newlesions.nii.gz"):
        assert main(["evaluate", "--json", str(tmp_path / "out"), str(tmp_path / given)]) == 0
        [pair] = json.loads(capsys.readouterr().out)["pairs"]
        assert pair["resampled"] == "truth" and pair["dice"] == pytest.approx(1.0) and pair["f1"] == 1.0, given
    # the same masks compared through world coordinates miss by the 3 mm
    plain = _save(tmp_path / "plain/newlesions_copy.nii.gz", truth)
    assert main(["evaluate", "--json", str(tmp_path / "out"), str(plain)]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"][0]["dice"] < 0.6


def test_a_missing_prediction_is_named_before_a_problem_in_the_truth(tmp_path, capsys):
    _save(tmp_path / "truth/sub-01_ses-02_desc-a_mask.nii.gz", _cube((8, 8, 8)))
    _save(tmp_path / "truth/sub-01_ses-02_desc-b_mask.nii.gz", _cube((8, 8, 8)))  # two truths for one pair
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "truth")]) == 2
    err = capsys.readouterr().err
    assert "pred.nii.gz: does not exist" in err and "holds two masks" not in err


def test_missing_predictions_and_bad_weights_are_clear_errors(tmp_path, capsys):
    _save(tmp_path / "truth/sub-01_ses-02_mask.nii.gz", _cube((8, 8, 8)))
    _save(tmp_path / "pred/sub-09_ses-02_mask.nii.gz", _cube((8, 8, 8)))
    _save(tmp_path / "truth/sub-03_ses-02_mask.nii.gz", _cube((8, 8, 8)))
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth")]) == 2
    assert "no prediction for sub-01 ses-02" in capsys.readouterr().err
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="not an msnl weights file"):
        load_weights(bad)
    with pytest.raises(InputError, match="no such weights file"):
        load_weights(tmp_path / "none.pt")


def test_msseg2_truth_is_matched_by_patient_and_scored_on_its_own_grid(tmp_path, capsys):
    truth = _cube((20, 20, 20), np.s_[3:7, 3:7, 3:7], np.s_[12:16, 12:16, 12:16])
    _save(tmp_path / "msseg2/013/ground_truth.nii.gz", truth)
    _save(tmp_path / "msseg2/015/ground_truth.nii.gz", np.zeros((20, 20, 20), bool))  # lesion-free
    _save(tmp_path / "out/sub-013/ses-02/sub-013_ses-02_desc-newlesions_mask.nii.gz", _cube((20, 20, 20), np.s_[3:7, 3:7, 3:7]))
    _save(tmp_path / "out/sub-015/ses-02/sub-015_ses-02_desc-newlesions_mask.nii.gz", np.zeros((20, 20, 20), bool))
    assert main(["evaluate", "--json", str(tmp_path / "out"), str(tmp_path / "msseg2")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(p["subject"], p["session"], p["resampled"], p["detected"], p["truth_lesions"]) for p in report["pairs"]] == [
        ("013", "02", None, 1, 2), ("015", "02", None, 0, 0)]
    assert report["summary"]["lesion_free_pairs"] == 1


def test_lesjak_truth_without_its_transform_is_a_clear_error(tmp_path, capsys):
    _save(tmp_path / "lesjak/patient01/newlesions.nii.gz", _cube((8, 8, 8), np.s_[2:4, 2:4, 2:4]))
    _save(tmp_path / "pred.nii.gz", _cube((8, 8, 8)))
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "lesjak")]) == 2
    err = capsys.readouterr().err
    assert "patient01: holds newlesions.nii.gz but not study2_FLAIR_to_common_space.txt" in err and "Restore the file" in err


def test_truth_that_holds_nothing_to_score_names_every_truth_form(tmp_path, capsys):
    _save(tmp_path / "pred/sub-01_ses-02_mask.nii.gz", _cube((8, 8, 8)))
    (tmp_path / "truth/patient01").mkdir(parents=True)  # e.g. a dataset folder whose truth files were left behind
    for truth, said in ((tmp_path / "truth", "holds no BIDS-named masks"), (tmp_path / "nowhere", "does not exist")):
        assert main(["evaluate", str(tmp_path / "pred"), str(truth)]) == 2
        err = capsys.readouterr().err
        assert f"{truth}: {said}" in err
        assert "Lesjak longitudinal (newlesions.nii.gz) or MSSEG-2 (ground_truth.nii.gz) patient folders" in err
    assert main(["evaluate", str(tmp_path / "nowhere"), str(tmp_path / "pred")]) == 2  # predictions come from msnl export
    assert "Give a NIfTI mask or a folder of BIDS-named masks." in capsys.readouterr().err
