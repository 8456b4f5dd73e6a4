"""`msnl run` on a real local Dask cluster: results, a bad subject among good ones, and a no-op re-run."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.demo import make_demo_source
from storage.results import open_lesions, open_results, read_prediction_mask

pytestmark = pytest.mark.slow


def test_run_processes_the_cohort_records_a_bad_subject_and_reruns_as_a_no_op(tmp_path, capsys):
    source = make_demo_source(tmp_path / "bids", subjects=2, visits=2)
    bad = source / "sub-003" / "ses-01" / "anat"
    bad.mkdir(parents=True)
    (bad / "sub-003_ses-01_FLAIR.nii.gz").write_bytes(b"not an image")
    store = tmp_path / "store.zarr"
    assert main(["run", "-q", str(source), str(store)]) == 1  # the bad subject fails alone
    err = capsys.readouterr().err
    assert "sub-003_ses-01_FLAIR.nii.gz" in err
    results = open_results(store)
    assert list(results.subject.values) == ["001", "002"]
    assert (results.status.values == "ok").all()
    counts = results.new_lesion_count.values.ravel()
    assert (counts >= 0).all() and results.n_candidates.values.min() > 0
    assert results.interval_days.values.min() > 300 and set(results.arm.values) == {"placebo", "active"}
    mask = read_prediction_mask(store, "002", "01", "02")
    lesions = open_lesions(store)
    assert mask.sum() > 0 or len(lesions) == 0
    assert int(results.new_lesion_count.sel(subject="002").sum()) == int((lesions.subject == "002").sum())
    assert np.isfinite(results.registration_quality.values).all()
    assert not (store / ".staging").exists()
    assert main(["run", "-q", str(source), str(store)]) == 1
    out = capsys.readouterr().out
    assert "0 processed, 2 already done" in out


def test_export_writes_masks_with_the_source_header(tmp_path, capsys):
    import nibabel as nib

    source = make_demo_source(tmp_path / "bids", subjects=2, visits=2)
    store = tmp_path / "store.zarr"
    main(["run", "-q", str(source), str(store)])
    assert main(["export", str(store), str(tmp_path / "out")]) == 0
    mask = tmp_path / "out/sub-002/ses-02/sub-002_ses-02_desc-newlesions_mask.nii.gz"
    flair = nib.load(source / "sub-002/ses-02/anat/sub-002_ses-02_FLAIR.nii.gz")
    img = nib.load(mask)
    assert img.shape == flair.shape
    np.testing.assert_allclose(img.get_qform(), flair.get_qform())
    np.testing.assert_allclose(img.get_sform(), flair.get_sform())
    assert int(img.header["sform_code"]) == int(flair.header["sform_code"])
    assert (tmp_path / "out/intervals.csv").read_text().startswith("subject,interval")
    assert (tmp_path / "out/lesions.csv").exists()
