"""How each visit was acquired, and the review flag for intervals whose visit 1 is coarser."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from msnl.qc import REVIEW_RESOLUTION_RATIO, acquisition_label, coarser_visit_one, head_axis_steps_mm, resolution_ratio


def grid_affine(axes: tuple[int, int, int], spacing: tuple[float, float, float], flips=(1, 1, 1)) -> np.ndarray:
    """Voxel -> scanner mm with voxel axis i stepping along head axis axes[i]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for column, (axis, step, sign) in enumerate(zip(axes, spacing, flips)):
        affine[axis, column] = sign * step
    return affine


@pytest.mark.parametrize(("axes", "spacing", "flips", "label"), [
    ((0, 1, 2), (0.72, 0.72, 3.0), (1, 1, 1), "axial 3.0 mm slices"),
    ((0, 1, 2), (0.72, 0.72, 3.0), (-1, -1, 1), "axial 3.0 mm slices"),  # LPS, as DICOM-derived files often are
    ((1, 2, 0), (0.9, 0.9, 4.0), (1, 1, 1), "sagittal 4.0 mm slices"),
    ((0, 2, 1), (0.7, 0.7, 3.0), (1, -1, 1), "coronal 3.0 mm slices"),
    ((0, 1, 2), (1.0, 1.0, 1.0), (1, 1, 1), "3D 1.0 mm"),
    ((2, 0, 1), (0.9, 1.0, 1.2), (1, 1, 1), "3D 1.2 mm"),  # within 1.5 times: no slice direction
])
def test_the_label_follows_the_header_as_nibabel_reads_it(axes, spacing, flips, label):
    affine = grid_affine(axes, spacing, flips)
    codes = "".join(nib.aff2axcodes(affine))
    assert acquisition_label(codes, spacing) == label
    steps = head_axis_steps_mm(codes, spacing)
    np.testing.assert_allclose(steps[list(axes)], spacing)


@pytest.mark.parametrize("codes", ["", "RA", "RRS", "RAX", "RASP"])
def test_unusable_axis_codes_give_unknown_not_a_guess(codes):
    assert np.isnan(head_axis_steps_mm(codes, (1.0, 1.0, 3.0))).all()
    assert acquisition_label(codes, (1.0, 1.0, 3.0)) == "unknown"
    assert math.isnan(resolution_ratio(codes, (1.0, 1.0, 3.0), "RAS", (1.0, 1.0, 1.0)))


@pytest.mark.parametrize(("first", "second", "ratio"), [
    (("ASR", (0.9, 0.9, 3.0)), ("RAS", (1.0, 1.0, 1.0)), 3.0),  # sagittal slices, then 3D: x is 3 times coarser
    (("RAS", (0.72, 0.72, 3.0)), ("ASR", (0.9, 0.9, 4.0)), 3.0 / 0.9),  # axial, then sagittal: z
    (("RSA", (0.7, 0.7, 3.0)), ("RAS", (0.72, 0.72, 3.0)), 3.0 / 0.72),  # coronal, then axial: y
    (("RAS", (1.0, 1.0, 1.0)), ("RAS", (0.9, 0.9, 3.0)), 1.0 / 0.9),  # 3D, then thick slices: visit 1 is finer
    (("RAS", (0.72, 0.72, 3.0)), ("LPS", (0.7, 0.7, 4.0)), 0.72 / 0.7),  # thicker slices at visit 2 only
    (("RAS", (0.72, 0.72, 4.0)), ("RAS", (0.72, 0.72, 4.0)), 1.0),
])
def test_resolution_ratio_is_the_widest_gap_where_visit_one_is_coarser(first, second, ratio):
    assert resolution_ratio(*first, *second) == pytest.approx(ratio)


def results(status, ratio) -> xr.Dataset:
    """A results Dataset shaped like storage.open_results' over (subject, interval)."""
    dims = ("subject", "interval")
    status = np.asarray(status, dtype=object)
    return xr.Dataset(
        {
            "status": (dims, status),
            "resolution_ratio": (dims, np.asarray(ratio, float)),
            "from_acquisition": (dims, np.full(status.shape, "sagittal 3.0 mm slices", object)),
            "to_acquisition": (dims, np.full(status.shape, "axial 3.0 mm slices", object)),
            "new_lesion_count": (dims, np.where(status == "ok", np.arange(status.size).reshape(status.shape), np.nan)),
        },
        coords={"subject": ["001", "002"], "interval": ["01->02", "02->03"],
                "arm": ("subject", np.array(["placebo", "active"], object))},
    )


def test_only_processed_intervals_at_or_over_the_ratio_are_flagged():
    ds = results([["ok", "ok"], ["pending", "ok"]], [[REVIEW_RESOLUTION_RATIO, 1.4], [3.0, np.nan]])
    flagged = coarser_visit_one(ds)
    assert list(zip(flagged.subject, flagged.interval)) == [("001", "01->02")]
    assert list(flagged.columns) == ["subject", "interval", "from_acquisition", "to_acquisition", "resolution_ratio",
                                     "new_lesion_count"]
    assert flagged.new_lesion_count.tolist() == [0] and flagged.new_lesion_count.dtype.kind == "i"


def test_no_interval_gives_an_empty_table_with_the_columns():
    empty = xr.Dataset(coords={"subject": np.array([], object), "interval": np.array([], object)})
    flagged = coarser_visit_one(empty)
    assert flagged.empty and "resolution_ratio" in flagged.columns
