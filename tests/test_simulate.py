"""The cohort simulator: determinism, growable cohorts, exact truth, options and bad options."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msnl.simulate import SimOptions, SimulationError, plan_subject, render_visit
from msnl.template import mni152_anatomy
from pipelines.cli import main
from pipelines.simulate import parse_arms, run_simulate
from storage.bids import DERIVATIVES


@pytest.fixture(scope="module")
def anatomy():
    return mni152_anatomy(1)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_bit_identical_other_seed_differs_and_cohorts_grow(tmp_path):
    small = _files(run_simulate(tmp_path / "a", 2, 2, seed=5, opts=SimOptions(), progress=False))
    grown = _files(run_simulate(tmp_path / "b", 3, 2, seed=5, opts=SimOptions(), progress=False))
    other = _files(run_simulate(tmp_path / "c", 1, 2, seed=6, opts=SimOptions(), progress=False))
    shared = [k for k in small if k.parts[0] in ("sub-001", "sub-002") or "sub-00" in str(k) and k.name != "participants.tsv"]
    assert shared and all(small[k] == grown[k] for k in shared)  # subject k is the same whatever N is
    flair = next(k for k in small if k.name == "sub-001_ses-01_FLAIR.nii.gz")
    assert other[flair] != small[flair]
    assert len([k for k in grown if k.name.endswith("_FLAIR.nii.gz")]) == 6


def test_bids_layout_tables_and_params(tmp_path):
    root = run_simulate(tmp_path / "bids", 2, 3, seed=1, opts=SimOptions(arms=(("a", 2.0), ("b", 0.0))), progress=False)
    assert (root / "participants.tsv").read_text().splitlines() == [
        "participant_id\tarm\tsite", *[line for line in (root / "participants.tsv").read_text().splitlines()[1:]]
    ]
    rows = [line.split("\t") for line in (root / "participants.tsv").read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == [["sub-001", "a"], ["sub-002", "b"]]
    sessions = (root / "sub-002" / "sub-002_sessions.tsv").read_text().splitlines()
    assert sessions[0] == "session_id\tacq_time" and [s.split("\t")[0] for s in sessions[1:]] == ["ses-01", "ses-02", "ses-03"]
    params = json.loads((root / DERIVATIVES / "sub-002" / "sub-002_desc-simulation_params.json").read_text())
    assert params["seed"] == 1 and params["arm"] == "b" and len(params["acquisitions"]) == 3
    for visit in ("01", "02", "03"):
        assert (root / DERIVATIVES / "sub-002" / f"ses-{visit}" / "anat" / f"sub-002_ses-{visit}_desc-lesions_mask.nii.gz").exists()
    new = sorted((root / DERIVATIVES).rglob("*desc-newlesions_mask.nii.gz"))
    assert [p.name for p in new if "sub-002" in p.name] == ["sub-002_ses-02_desc-newlesions_mask.nii.gz", "sub-002_ses-03_desc-newlesions_mask.nii.gz"]
    flair = nib.load(root / "sub-002/ses-02/anat/sub-002_ses-02_FLAIR.nii.gz")
    mask = nib.load(new[-2])
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine)  # truth on the visit's own grid


def test_new_lesion_truth_is_exactly_what_was_planted(anatomy):
    plan = plan_subject(1, 2, 11, [anatomy], SimOptions())  # subject 1 always has 1 or 2 new lesions
    assert plan.new_per_interval[0] in (1, 2)
    with_new = render_visit(plan, 1, anatomy)
    without = render_visit(plan, 1, anatomy, include_new=False)
    truth = with_new.new_lesions.data
    assert truth.any()
    diff = with_new.flair.data - without.flair.data
    assert (diff[truth] > 0).all()  # every truth voxel is brighter because of a new lesion
    strong = diff > 0.5 * diff.max()
    assert not (strong & ~ndimage.binary_dilation(truth, iterations=1)).any()  # no planted change outside truth
    new = [les for les in plan.lesions if les.onset == 1 or les.growth_visit == 1]
    planted = sum(4 / 3 * np.pi * np.prod(les.radii_at(1)) - (4 / 3 * np.pi * np.prod(les.radii_at(0)) if les.onset < 1 else 0) for les in new)
    measured = truth.sum() * with_new.new_lesions.voxel_volume
    assert measured == pytest.approx(planted, rel=0.35)  # partial volume of thick slices blurs the edge


def test_arms_and_lesion_free_share_shape_the_counts(anatomy):
    opts = SimOptions(arms=(("placebo", 4.0), ("active", 0.0)), lesion_free_share=0.0)
    plans = [plan_subject(k, 3, 2, [anatomy], opts) for k in range(2, 40)]
    placebo = [sum(p.new_per_interval) for p in plans if p.arm == "placebo"]
    active = [sum(p.new_per_interval) for p in plans if p.arm == "active"]
    assert sum(active) == 0 and np.mean(placebo) > 3
    free = [plan_subject(k, 2, 2, [anatomy], SimOptions(lesion_free_share=1.0)) for k in range(2, 8)]
    assert all(p.lesion_free and sum(p.new_per_interval) == 0 for p in free)
    assert plan_subject(0, 2, 2, [anatomy], SimOptions(lesion_free_share=0.0)).lesion_free  # always one lesion-free subject


def test_nuisances_vary_per_visit(anatomy):
    plan = plan_subject(3, 4, 9, [anatomy], SimOptions())
    acqs = plan.acquisitions
    assert len({a.rotation_deg for a in acqs}) == 4
    assert all(max(abs(r) for r in a.rotation_deg) <= 5 and max(abs(t) for t in a.translation_mm) <= 5 for a in acqs)
    assert all(a.spacing_mm[2] in (1.0, 3.0, 4.0) for a in acqs)


def test_bad_options_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SimulationError, match="NAME:MEAN"):
        parse_arms("placebo")
    with pytest.raises(SimulationError, match="distinct"):
        parse_arms("a:1,a:2")
    with pytest.raises(SimulationError, match=">= 0"):
        SimOptions(arms=(("a", -1.0),))
    with pytest.raises(SimulationError, match=r"\[0, 1\]"):
        SimOptions(lesion_free_share=1.5)
    assert main(["simulate", "--visits", "1", str(tmp_path / "x")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["simulate", "--arms", "placebo=3", str(tmp_path / "x")]) == 2
    assert "NAME:MEAN" in capsys.readouterr().err
    assert main(["simulate", "--real-lesions", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


@pytest.mark.real_data
def test_real_lesions_become_new_lesions(anatomy):
    from tests.conftest import SHARED_DATA
    from storage.simulated import anatomies

    folder = SHARED_DATA / "lesjak-cross-sectional-mni"
    if not folder.exists():
        pytest.skip(f"real lesions not found at {folder}")
    pool = list(anatomies(str(folder)))
    plan = plan_subject(1, 2, 3, pool, SimOptions())
    assert plan.real_onsets and plan.anatomy_name == pool[1].name
    real = pool[1]
    with_new = render_visit(plan, 1, real)
    without = render_visit(plan, 1, real, include_new=False)
    truth = with_new.new_lesions.data
    assert truth.any()
    diff = with_new.flair.data - without.flair.data
    assert np.median(diff[truth]) > 0  # the inpainted (earlier) visit is darker where the lesion appears
