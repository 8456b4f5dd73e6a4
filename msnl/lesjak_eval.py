"""Scoring step one on a real Lesjak pair, on the common grid where its truth lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msnl.metrics import Coverage, coverage, dice
from msnl.resample import resample_labels
from msnl.scan import LabelMap
from msnl.step_one import StepOneResult


@dataclass(frozen=True)
class StepOneScore:
    n_candidates: int
    coverage: Coverage
    brain_dice: float


def score_step_one(result: StepOneResult, truth: LabelMap, brainmask: LabelMap, transform2: str | Path) -> StepOneScore:
    """Candidate coverage of the new-lesion truth, and brain-mask Dice, on the common grid.

    Visit 2's grid results are resampled onto the common grid with study 2's transform
    (nearest neighbour), as the data set's README prescribes.
    """
    grid = result.candidates.labels.affine
    cand = resample_labels(LabelMap((result.candidates.labels.data > 0).astype(np.uint8), grid), brainmask, transform2)
    brain = resample_labels(LabelMap(result.brain.data.astype(np.uint8), grid), brainmask, transform2)
    return StepOneScore(len(result.table), coverage(truth, cand.data > 0), dice(brain.data > 0, brainmask.data))
