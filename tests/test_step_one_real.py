"""Step one on both real Lesjak pairs: candidate coverage of the new-lesion truth, brain Dice.

Figures are printed (run with -s) and recorded in docs/benchmarks.md. Step one on two real pairs
takes about 4 minutes on 2 cores (254 s measured), so the module is marked slow:
`pytest -m slow -s tests/test_step_one_real.py` runs it.
"""

from __future__ import annotations

import pytest

from msnl.lesjak_eval import score_step_one
from msnl.step_one import run_step_one
from storage.lesjak import read_lesjak_pair

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

COVERAGE_TARGET = 0.80  # issue 3: at least 80% of truth lesions covered on each patient
DICE_TARGET = 0.93  # issue 3: brain mask Dice against the reference brainmask.nii.gz


@pytest.fixture(scope="module")
def scores(longitudinal):
    out = {}
    for patient in ("patient01", "patient12"):
        pair = read_lesjak_pair(longitudinal / patient)
        result = run_step_one(pair.flair1, pair.flair2)
        out[patient] = score_step_one(result, pair.newlesions, pair.brainmask, pair.transform2)
        s = out[patient]
        print(f"\n{patient}: {s.n_candidates} candidates, {s.coverage.covered}/{s.coverage.total} truth "
              f"lesions covered ({s.coverage.fraction:.0%}), brain Dice {s.brain_dice:.3f}")
    return out


@pytest.mark.parametrize("patient", ["patient01", "patient12"])
def test_brain_mask_dice(scores, patient):
    assert scores[patient].brain_dice >= DICE_TARGET


@pytest.mark.parametrize("patient", ["patient01", "patient12"])
def test_candidate_count_is_of_the_reference_chains_order(scores, patient):
    # the reference chain gives about 1,200 to 1,400 candidates per real pair (issue 4)
    assert 1000 <= scores[patient].n_candidates <= 2000


@pytest.mark.parametrize(
    "patient",
    [
        "patient01",
        pytest.param(
            "patient12",
            marks=pytest.mark.xfail(
                strict=True,
                reason="known shortfall with the paper's defaults: 15/28 (54%) covered; the 1 mm "
                "opening removes 7 small lesions (docs/benchmarks.md)",
            ),
        ),
    ],
)
def test_candidates_cover_the_new_lesion_truth(scores, patient):
    assert scores[patient].coverage.fraction >= COVERAGE_TARGET
