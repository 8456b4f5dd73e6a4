"""The real Lesjak pairs, laid out as BIDS, ingested and compared with nibabel voxel for voxel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipelines.ingest import run_ingest
from storage import open_cohort

pytestmark = pytest.mark.real_data


def test_real_pairs_round_trip_exactly(longitudinal, tmp_path):
    root = tmp_path / "bids"
    sources = {}
    for patient in ("patient01", "patient12"):
        for study in (1, 2):
            src = longitudinal / patient / f"study{study}_FLAIR.nii.gz"
            anat = root / f"sub-{patient}" / f"ses-{study}" / "anat"
            anat.mkdir(parents=True)
            (anat / f"sub-{patient}_ses-{study}_FLAIR.nii.gz").symlink_to(src)
            sources[(patient, str(study))] = src
    store = tmp_path / "store.zarr"
    summary = run_ingest(root, store, progress=False)
    assert summary.failed == 0 and summary.count("ingested") == 4
    cohort = open_cohort(store)
    for (patient, visit), src in sources.items():
        ref = nib.load(src)
        flair = cohort[f"scans/{patient}/{visit}"].flair
        assert flair.dtype == ref.get_data_dtype() and flair.shape == ref.shape
        np.testing.assert_array_equal(flair.values, np.asarray(ref.dataobj.get_unscaled()))
        np.testing.assert_allclose(flair.attrs["affine"], ref.affine)
        np.testing.assert_allclose(flair.attrs["qform"], ref.get_qform())
        np.testing.assert_allclose(flair.attrs["sform"], ref.get_sform())
        assert flair.attrs["qform_code"] == int(ref.header["qform_code"])
        assert flair.attrs["sform_code"] == int(ref.header["sform_code"])
        assert flair.attrs["orientation"] == "".join(nib.aff2axcodes(ref.affine))
