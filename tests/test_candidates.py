"""Candidate kernels on small synthetic arrays with a planted lesion of known volume."""

from __future__ import annotations

import numpy as np
import pytest

from msnl.candidates import PATCH_CHANNELS, detect_candidates, ellipsoid, extract_patches, ratio_map
from msnl.config import ConfigError, StepOneConfig
from msnl.distance_maps import distance_maps
from msnl.scan import LabelMap
from tests.synthetic import affine_for, ellipsoid_brain, level_pair


def _detect(pair, cfg=None):
    cfg = cfg or StepOneConfig()
    maps = distance_maps(pair.brain)
    return detect_candidates(pair.levels1, pair.levels2, pair.brain, maps, cfg), maps


def test_one_mm_footprints_follow_the_voxel_spacing():
    thick = ellipsoid(1.0, (0.7, 0.7, 3.0))
    assert thick.shape == (3, 3, 1) and thick.sum() == 9  # in-plane only: no reach across slices
    lesjak = ellipsoid(1.0, (0.72, 0.72, 3.0))
    assert lesjak.shape == (3, 3, 1) and lesjak.sum() == 5  # diagonals are 1.02 mm away
    iso = ellipsoid(1.0, (1.0, 1.0, 1.0))
    assert iso.shape == (3, 3, 3) and iso.sum() == 7
    assert ellipsoid(1.0, (1.2, 1.2, 1.2)).sum() == 1  # voxels bigger than the ball


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 3.0), (1.0, 1.0, 1.0)])
def test_planted_lesion_is_found_with_its_exact_volume(spacing):
    shape = (96, 110, 22) if spacing[2] == 3.0 else (64, 76, 60)
    pair = level_pair(spacing=spacing, shape=shape, core=(4, 4, 2))
    cands, _ = _detect(pair)
    assert len(cands.table) == 1
    row = cands.table.iloc[0]
    assert row.volume_mm3 == pytest.approx(pair.lesion_mm3)
    np.testing.assert_array_equal(cands.labels.data > 0, pair.lesion)


def test_single_thick_slice_lesion_survives_the_opening():
    pair = level_pair(core=(4, 4, 1))
    assert pair.lesion[:, :, :].any(axis=(0, 1)).sum() == 1  # one 3 mm slice only
    cands, _ = _detect(pair)
    assert len(cands.table) == 1
    assert cands.table.volume_mm3.iloc[0] == pytest.approx(pair.lesion_mm3)


def test_components_under_7_mm3_are_dropped():
    # a 7-voxel cross is exactly 7 mm³ at 1 mm, about 5.1 mm³ at 0.9 mm
    for spacing, kept in (((1.0, 1.0, 1.0), 1), ((0.9, 0.9, 0.9), 0)):
        pair = level_pair(spacing=spacing, shape=(70, 84, 66), core=(1, 1, 1))
        assert pair.lesion.sum() == 7
        cands, _ = _detect(pair)
        assert len(cands.table) == kept, spacing


def test_ratio_threshold_and_config_are_honoured():
    pair = level_pair()
    assert len(_detect(pair, StepOneConfig(ratio_threshold=2.0))[0].table) == 0  # 5/3 = 1.67 < 2
    with pytest.raises(ConfigError, match="ratio_threshold"):
        StepOneConfig(ratio_threshold=-1)
    assert ratio_map(np.array([0, 2]), np.array([3, 3])).tolist() == [np.inf, 1.5]


def test_lesions_on_the_pial_surface_are_excluded():
    pair = level_pair()
    edge = pair.brain.data & ~np.roll(pair.brain.data, 1, axis=0)  # the brain's outermost voxels
    levels2 = pair.levels1.copy()
    levels2[edge] = 5
    cands = detect_candidates(pair.levels1, levels2, pair.brain, distance_maps(pair.brain), StepOneConfig())
    assert len(cands.table) == 0


def test_patches_pad_two_voxels_and_clip_at_the_border():
    pair = level_pair()
    cands, maps = _detect(pair)
    row = cands.table.iloc[0]
    where = np.argwhere(pair.lesion)
    assert (row.lo_i, row.lo_j, row.lo_k) == tuple(np.maximum(where.min(0) - 2, 0))
    assert (row.hi_i, row.hi_j, row.hi_k) == tuple(np.minimum(where.max(0) + 3, pair.lesion.shape))
    assert row.lo_k == max(where[:, 2].min() - 2, 0)
    [patch] = extract_patches(cands.table, pair.levels1, pair.levels2, maps)
    assert patch.shape == (len(PATCH_CHANNELS), row.hi_i - row.lo_i, row.hi_j - row.lo_j, row.hi_k - row.lo_k)
    assert patch[1].max() == 5 and patch[0].max() == 3


def test_distance_maps_do_not_depend_on_voxel_order():
    spacing, shape = (2.0, 2.0, 2.0), (30, 36, 28)
    brain = ellipsoid_brain(shape, spacing)
    ras = distance_maps(LabelMap(brain, affine_for(spacing)))
    # the same head stored with i and k flipped (an LPI-like voxel order)
    flipped_affine = affine_for(spacing) @ np.array(
        [[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, shape[2] - 1], [0, 0, 0, 1]], dtype=float
    )
    lpi = distance_maps(LabelMap(brain[::-1, :, ::-1], flipped_affine))
    for name in ("dm", "dmz", "dmx"):
        np.testing.assert_allclose(getattr(lpi, name)[::-1, :, ::-1], getattr(ras, name), atol=1e-4)
    top = np.argwhere(brain)[:, 2].max()
    assert ras.dmz[brain][np.argwhere(brain)[:, 2] == top].max() == pytest.approx(0.0)
    assert ras.dmz[15, 18, 0] > ras.dmz[15, 18, 20]  # lower slices are further from the vertex
    assert ras.dmx[15, 30, 14] > ras.dmx[15, 5, 14]  # anterior is further from the occiput
    assert ras.dm[15, 18, 14] == pytest.approx(ras.dm.max())  # deepest at the centre


def test_infratentorial_flag_comes_from_the_dmz_threshold():
    pair = level_pair(spacing=(1.0, 1.0, 1.0), shape=(64, 76, 60), core=(3, 3, 3))
    cands, maps = _detect(pair)
    dmz = cands.table.dmz_mm.iloc[0]
    assert not _detect(pair, StepOneConfig(infratentorial_dmz_mm=dmz + 1))[0].table.infratentorial.iloc[0]
    assert _detect(pair, StepOneConfig(infratentorial_dmz_mm=dmz - 1))[0].table.infratentorial.iloc[0]
