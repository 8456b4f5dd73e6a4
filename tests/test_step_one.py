"""Step one end to end on MNI152 anatomy, the ANTs stages, and quality-control failures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from msnl.brain_mask import brain_mask
from msnl.config import ConfigError, StepOneConfig
from msnl.errors import QualityControlError
from msnl.preprocess import (box_weights, continuous_levels, discretise, histogram_match, match_resolution,
                             register_rigid_then_affine)
from msnl.qc import check_brain_volume
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


def _impulse(shape=(9, 9, 9)) -> Scan:
    data = np.zeros(shape, np.float32)
    data[4, 4, 4] = 90.0
    return Scan(data, np.diag([1.0, 1.0, 1.0, 1.0]))


def _sagittal_slices(step_x: float, sign: float = 1.0) -> np.ndarray:
    """Voxel axes along y and z at 0.9 mm, then across slices along x."""
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = 0.9, 0.9, sign * step_x, 1.0
    return affine


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_match_resolution_averages_visit_two_only_across_visit_one_thick_slices(sign):
    fine = _impulse()
    coarse = Scan(np.zeros((4, 4, 4), np.float32), _sagittal_slices(3.0, sign))
    matched = match_resolution(fine, coarse, 1.5)
    profile_x, profile_y, profile_z = matched.data[:, 4, 4], matched.data[4, :, 4], matched.data[4, 4, :]
    np.testing.assert_allclose(profile_x[3:6], 30.0)  # spread over visit 1's 3 mm, one voxel each side
    assert profile_x[[2, 6]].max() == 0 and profile_y[[3, 5]].max() == 0 and profile_z[[3, 5]].max() == 0
    assert matched.data.sum() == pytest.approx(90.0) and np.array_equal(matched.affine, fine.affine)


@pytest.mark.parametrize(("width", "weights"), [(1.0, [1.0]), (3.0, [1 / 3] * 3), (4.0, [0.125, 0.25, 0.25, 0.25, 0.125]),
                                               (3.5, [0.25 / 3.5, 1 / 3.5, 1 / 3.5, 1 / 3.5, 0.25 / 3.5])])
def test_box_weights_are_a_centred_box_of_that_width(width, weights):
    np.testing.assert_allclose(box_weights(width), weights)


def test_match_resolution_leaves_visit_two_alone_below_the_ratio():
    fine = _impulse()
    for coarse_affine, ratio in ((_sagittal_slices(3.0), 3.5), (_sagittal_slices(1.2), 1.5), (np.diag([0.5, 0.5, 0.5, 1.0]), 1.5)):
        matched = match_resolution(fine, Scan(np.zeros((4, 4, 4), np.float32), coarse_affine), ratio)
        np.testing.assert_array_equal(matched.data, fine.data)


def test_match_resolution_counts_a_tilt_between_the_headers_which_the_review_flag_does_not():
    # Real patient01's headers: axial 4 mm slices, then axial 3 mm slices tilted 9.5 degrees
    # from them (2.6 degrees once registered: the head lay differently in the scanner).
    from msnl.qc import resolution_ratio

    fine = Scan(_impulse().data, np.diag([0.72, 0.72, 3.0, 1.0]))
    tilt = np.radians(9.5)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    coarse = np.eye(4)
    coarse[:3, :3] = rotation @ np.diag([0.72, 0.72, 4.0])
    matched = match_resolution(fine, Scan(np.zeros((4, 4, 4), np.float32), coarse), 1.5)
    # 4 mm tilted by 9.5 degrees reaches 0.71 + 0.66 mm along y: about 1.9 voxels of 0.72 mm
    assert matched.data[4, 3, 4] > 0 and matched.data[4, 4, 4] < 90.0
    assert matched.data[3, 4, 4] == matched.data[4, 4, 3] == 0  # x: no reach; z: 4.07 mm over 3 mm is under 1.5
    assert resolution_ratio("LPS", (0.72, 0.72, 4.0), "LPS", (0.72, 0.72, 3.0)) == pytest.approx(4 / 3)


def test_resolution_matching_is_off_by_default_and_keeps_the_results_keys():
    import hashlib
    import json

    paper = StepOneConfig()
    assert paper.match_resolution_ratio is None
    values = paper.to_dict()
    del values["match_resolution_ratio"]  # results stored before the option existed keep their keys
    assert paper.digest() == hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    assert StepOneConfig(match_resolution_ratio=1.5).digest() != paper.digest()
    with pytest.raises(ConfigError, match="match_resolution_ratio=0.5"):
        StepOneConfig(match_resolution_ratio=0.5)


def test_step_one_matches_each_visit_to_the_other_only_when_asked(anatomy, monkeypatch):
    import msnl.step_one as step_one

    class Stop(Exception):
        pass

    calls = []

    def stop_at_registration(*args, **kwargs):
        raise Stop

    def recording_match(fine, coarse, ratio):
        calls.append((fine, coarse, ratio))
        return fine

    monkeypatch.setattr(step_one, "register_rigid_then_affine", stop_at_registration)
    monkeypatch.setattr(step_one, "match_resolution", recording_match)
    flair1, flair2, _ = _planted_pair(anatomy)
    for cfg in (StepOneConfig(), StepOneConfig(match_resolution_ratio=1.5)):
        timer = StageTimer()
        with pytest.raises(Stop):
            step_one.run_step_one_corrected(flair1, flair2, cfg, timer)
        assert ("match_resolution" in timer.seconds) == (cfg.match_resolution_ratio is not None)
    # each visit is matched to the other as it was acquired
    assert [(fine, coarse, ratio) for fine, coarse, ratio in calls] == [(flair1, flair2, 1.5), (flair2, flair1, 1.5)]


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


def test_a_scan_with_no_brain_gets_an_empty_mask_and_fails_the_brain_volume_qc():
    # deepbet raises on an image where it finds no brain at all; the pair must fail QC instead
    blank = Scan(np.zeros((60, 70, 50), dtype=np.float32), np.eye(4))
    empty = brain_mask(blank)
    assert not empty.data.any()
    with pytest.raises(QualityControlError, match="visit 1"):
        check_brain_volume(empty, "visit 1", StepOneConfig())


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
