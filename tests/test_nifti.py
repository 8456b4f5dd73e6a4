"""Reading and checking one NIfTI file: every bad input gets a clear, file-naming error."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from msnl.errors import BadScanError
from msnl.nifti import read_nifti, sha256_file
from tests.conftest import aniso_affine, blob_volume


def test_good_scan_keeps_voxels_dtype_and_header(make_nifti):
    path = make_nifti()
    scan = read_nifti(path)
    ref = nib.load(path)
    assert scan.data.dtype == np.int16
    np.testing.assert_array_equal(scan.data, np.asarray(ref.dataobj.get_unscaled()))
    np.testing.assert_allclose(scan.affine, ref.affine)
    assert scan.spacing == pytest.approx((0.7, 0.7, 3.0))
    assert scan.orientation == "RAS"
    assert scan.sha256 == sha256_file(path)
    assert scan.affine_source == "sform"
    assert scan.notes == ()
    assert scan.to_scan().voxel_volume == pytest.approx(0.7 * 0.7 * 3.0)


def test_scaling_is_kept_apart_from_raw_voxels(make_nifti, tmp_path):
    img = nib.Nifti1Image(blob_volume(), aniso_affine())
    img.header.set_slope_inter(2.0, 5.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    scan = read_nifti(path)
    assert (scan.scl_slope, scan.scl_inter) == (2.0, 5.0)
    np.testing.assert_allclose(scan.to_scan().data, nib.load(path).get_fdata(), rtol=1e-6)


def _expect(path, *words):
    with pytest.raises(BadScanError) as info:
        read_nifti(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def test_truncated_gzip(make_nifti):
    path = make_nifti()
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _expect(path, "truncated", "copy")


def test_corrupt_gzip(make_nifti):
    path = make_nifti()
    raw = bytearray(path.read_bytes())
    raw[200:260] = b"\x00" * 60
    path.write_bytes(bytes(raw))
    _expect(path, "corrupt")


def test_truncated_uncompressed_voxels(make_nifti):
    path = make_nifti("plain.nii")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 500])
    _expect(path, "truncated")


def test_not_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
    _expect(path, "not a NIfTI", "dcm2niix")


def test_gz_name_but_not_gzip(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"hello")
    _expect(path, "not gzip")


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 1), (10, 10, 6, 3)])
def test_2d_and_4d_are_refused(make_nifti, shape):
    path = make_nifti(data=np.ones(shape, dtype=np.int16))
    _expect(path, "3D")


def test_4d_with_one_volume_is_accepted(make_nifti):
    path = make_nifti(data=blob_volume()[..., None])
    assert read_nifti(path).data.shape == (24, 20, 12)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_bad_voxel_sizes(make_nifti, bad):
    path = make_nifti("plain.nii")
    raw = bytearray(path.read_bytes())
    # pixdim is 8 float32s from byte 76 of a NIfTI-1 header; pixdim[2] is the j spacing.
    raw[84:88] = np.float32(bad).tobytes()
    path.write_bytes(bytes(raw))
    _expect(path, "voxel sizes", "positive")


def test_singular_affine(make_nifti):
    affine = aniso_affine()
    affine[:3, 2] = affine[:3, 1]  # two axes point the same way
    path = make_nifti(affine=affine, qform_code=0)
    _expect(path, "singular")


def test_all_zero_image(make_nifti):
    _expect(make_nifti(data=np.zeros((10, 10, 6), dtype=np.int16)), "all zeros")


def test_constant_image(make_nifti):
    _expect(make_nifti(data=np.full((10, 10, 6), 7, dtype=np.int16)), "same value (7) in every voxel")


def test_a_normalised_image_is_refused_but_resampling_s_few_negative_voxels_are_not(make_nifti):
    data = blob_volume(dtype=np.float32)
    zscored = (data - data.mean()) / data.std()
    _expect(make_nifti(data=zscored), "below 0", "not a magnitude FLAIR")
    ringing = data.copy()
    ringing.flat[:: ringing.size // 20] = -15.0  # 0.4 % of the voxels
    assert read_nifti(make_nifti(data=ringing)).data.min() == -15.0


def test_a_negative_intercept_is_applied_before_the_magnitude_check(make_nifti, tmp_path):
    img = nib.Nifti1Image(blob_volume(), aniso_affine())
    img.header.set_slope_inter(1.0, -200.0)
    path = tmp_path / "offset.nii.gz"
    nib.save(img, path)
    _expect(path, "below 0", "down to -200")


def test_nan_voxels(make_nifti):
    data = blob_volume(dtype=np.float32)
    data[3, 4, 5] = np.nan
    _expect(make_nifti(data=data), "NaN")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "does not exist")


def test_qform_sform_disagreement_is_noted_with_the_choice(make_nifti):
    path = make_nifti()
    img = nib.load(path)
    moved = img.affine.copy()
    moved[0, 3] += 5.0
    img.set_sform(moved, code=2)
    nib.save(img, path)
    scan = read_nifti(path)
    assert scan.affine_source == "sform"
    np.testing.assert_allclose(scan.affine, moved)
    assert len(scan.notes) == 1
    assert "disagree" in scan.notes[0] and "using the sform" in scan.notes[0] and str(path) in scan.notes[0]


def test_no_orientation_is_noted(make_nifti):
    scan = read_nifti(make_nifti(qform_code=0, sform_code=0))
    assert scan.affine_source == "pixdim"
    assert "orientation is unknown" in scan.notes[0]
