"""Step one end to end on MNI152 anatomy, the ANTs stages, and quality-control failures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from msnl.config import StepOneConfig
from msnl.errors import QualityControlError
from msnl.preprocess import continuous_levels, discretise, histogram_match, register_rigid_then_affine
from msnl.scan import LabelMap
from msnl.scan import Scan
from msnl.step_one import StageTimer, run_step_one
from msnl.template import mni152_anatomy

LESION_WORLD_MM = (-26.0, -10.0, 26.0)  # left periventricular white matter, MNI


@pytest.fixture(scope="module")
def anatomy():
    anatomy = mni152_anatomy(resolution=2)
    return anatomy.flair, anatomy.brain


def _planted_pair(anatomy, shift_vox=(2.0, -1.0, 1.0)):
    base, _ = anatomy
    ijk = np.rint(np.linalg.solve(base.affine, [*LESION_WORLD_MM, 1.0])[:3]).astype(int)
    lesion = np.zeros(base.shape, bool)
    lesion[tuple(ijk)] = True
    lesion = ndimage.binary_dilation(lesion, iterations=2)  # a ~25-voxel, 200 mm³ ovoid
    visit2 = base.data.copy()
    visit2[lesion] = 1.5  # FLAIR lesions outshine grey matter (1.0) and white matter (0.78)
    visit1 = ndimage.shift(base.data, shift_vox, order=1)
    scale = np.float32(1000)
    return Scan(visit1 * scale, base.affine), Scan(visit2 * scale, base.affine), lesion


def test_registration_recovers_a_known_shift(anatomy):
    base, _ = anatomy
    moved = Scan(ndimage.shift(base.data, (3.0, 0.0, -2.0), order=1), base.affine)
    reg = register_rigid_then_affine(moved, base)
    brain = anatomy[1].data
    before = np.corrcoef(moved.data[brain], base.data[brain])[0, 1]
    after = np.corrcoef(reg.moved.data[brain], base.data[brain])[0, 1]
    assert after > 0.98 > before
    # the shift was +3 voxels (6 mm) along i and -2 (-4 mm) along k; i and k point along R and S
    np.testing.assert_allclose(reg.matrix[:3, 3], [-6.0, 0.0, -4.0], atol=0.6)


def test_histogram_matching_undoes_a_global_scale(anatomy):
    base, brain = anatomy
    matched = histogram_match(Scan(base.data * 1.7, base.affine), base, brain)
    np.testing.assert_allclose(np.median(matched.data[brain.data]), np.median(base.data[brain.data]), rtol=0.03)


def test_continuous_levels_round_to_the_grey_levels_and_keep_what_is_above_the_top():
    edges = np.linspace(0.0, 60.0, 7)  # 6 levels, 10 wide
    values = np.array([0.0, 5.0, 9.9, 10.0, 35.0, 59.0, 62.0, 100.0, 1000.0, 35.0], np.float32).reshape(10, 1, 1)
    brain = np.array([True] * 9 + [False]).reshape(10, 1, 1)
    levels = discretise(Scan(values, np.eye(4)), LabelMap(brain, np.eye(4)), edges).ravel()
    continuous = continuous_levels(values, brain, edges).ravel()
    brain = brain.ravel()
    np.testing.assert_allclose(continuous, [0.5, 1.0, 1.49, 1.5, 4.0, 6.4, 6.7, 8.0, 8.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(np.clip(np.floor(continuous[brain] + 0.5), 1, 6), levels[brain])
    assert levels[5] == levels[6] == 6 and continuous[6] > continuous[5]  # the top level still has contrast


def test_step_one_finds_the_planted_lesion(anatomy):
    flair1, flair2, lesion = _planted_pair(anatomy)
    timer = StageTimer()
    result = run_step_one(flair1, flair2, StepOneConfig(), timer)
    covered = (result.candidates.labels.data > 0)[lesion].mean()
    assert covered > 0.5
    assert result.qc["registration_correlation"] > 0.9
    assert 1000 < result.qc["brain_volume_ml"] < 2000
    assert set(result.levels2[result.brain.data].tolist()) <= set(range(1, 7))
    assert len(result.patches) == len(result.table) >= 1
    assert {"n4", "registration", "brain_mask", "candidates"} <= set(timer.seconds)


def test_pair_of_different_heads_fails_registration_qc(anatomy):
    flair1, flair2, _ = _planted_pair(anatomy)
    scrambled = Scan(np.random.default_rng(0).permutation(flair1.data.ravel()).reshape(flair1.shape), flair1.affine)
    with pytest.raises(QualityControlError) as info:
        run_step_one(scrambled, flair2)
    assert info.value.status in {"registration_failed", "implausible_brain_mask"}
    assert "visit" in str(info.value)


def test_a_visit_with_no_brain_fails_mask_qc(anatomy):
    _, flair2, _ = _planted_pair(anatomy)
    blank = Scan(np.random.default_rng(1).normal(50, 5, flair2.shape).astype(np.float32), flair2.affine)
    with pytest.raises(QualityControlError) as info:
        run_step_one(blank, flair2)
    assert info.value.status in {"implausible_brain_mask", "registration_failed"}


def test_brain_mask_plausibility_limits_are_configurable(anatomy):
    flair1, flair2, _ = _planted_pair(anatomy)
    with pytest.raises(QualityControlError, match="implausible|outside the plausible") as info:
        run_step_one(flair1, flair2, StepOneConfig(brain_volume_ml=(2500.0, 3000.0)))
    assert info.value.status == "implausible_brain_mask"
