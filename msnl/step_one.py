"""Step one of the method (paper §1), chained: two raw FLAIRs in, candidate ROIs out.

Visit 2's grid is the working space. Every stage is timed and tagged with who did the work
(ANTs, the mask model, or our own code), for `benchmarks/step_one.py`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Iterator

import numpy as np
import pandas as pd

from msnl.brain_mask import brain_mask, mask_model_version
from msnl.candidates import Candidates, detect_candidates, extract_patches
from msnl.config import StepOneConfig
from msnl.distance_maps import DistanceMaps, distance_maps
from msnl.preprocess import discretise, grey_level_edges, histogram_match, match_resolution, n4, register_rigid_then_affine
from msnl.qc import brain_correlation, check_brain_volume, check_registration
from msnl.scan import LabelMap, Scan

log = logging.getLogger(__name__)


def software_versions() -> dict[str, str]:
    """What a replay of a step-one result needs to match."""
    return {"antspyx": version("antspyx"), "mask_model": mask_model_version(), "msnl": version("msnl")}


@dataclass
class StageTimer:
    """Wall time per stage, and who spent it: "ants", "mask_model" or "ours"."""

    seconds: dict[str, float] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, owner: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.owner[name] = owner
            log.info("step one: %s took %.2f s", name, self.seconds[name])

    def share(self, owner: str) -> float:
        total = sum(self.seconds.values())
        return sum(s for n, s in self.seconds.items() if self.owner[n] == owner) / total if total else 0.0


@dataclass(frozen=True)
class StepOneResult:
    """Everything step one makes for one visit pair, on visit 2's grid."""

    brain: LabelMap
    flair1: Scan  # visit 1: N4, registered, histogram-matched
    flair2: Scan  # visit 2: N4
    levels1: np.ndarray
    levels2: np.ndarray
    maps: DistanceMaps
    candidates: Candidates
    patches: list[np.ndarray]
    qc: dict[str, float]
    registration_matrix: np.ndarray

    @property
    def table(self) -> pd.DataFrame:
        return self.candidates.table


def correct_visit(flair: Scan, cfg: StepOneConfig | None = None, timer: StageTimer | None = None) -> Scan:
    """The per-visit part of step one: N4 bias correction. A visit shared by two intervals
    (visit 2 of one, visit 1 of the next) needs it only once."""
    cfg = cfg or StepOneConfig()
    timer = timer or StageTimer()
    with timer.stage("n4", "ants"):
        return n4(flair, cfg.n4_shrink_factor)


def run_step_one(flair1: Scan, flair2: Scan, cfg: StepOneConfig | None = None, timer: StageTimer | None = None) -> StepOneResult:
    """The whole of step one. Raises `QualityControlError` for a pair that plainly failed."""
    cfg = cfg or StepOneConfig()
    timer = timer or StageTimer()
    return run_step_one_corrected(correct_visit(flair1, cfg, timer), correct_visit(flair2, cfg, timer), cfg, timer)


def run_step_one_corrected(v1: Scan, v2: Scan, cfg: StepOneConfig | None = None, timer: StageTimer | None = None) -> StepOneResult:
    """Step one after N4: both visits already bias-corrected by `correct_visit`."""
    cfg = cfg or StepOneConfig()
    timer = timer or StageTimer()
    if cfg.match_resolution_ratio is not None:
        with timer.stage("match_resolution", "ours"):
            v1, v2 = (match_resolution(v1, v2, cfg.match_resolution_ratio),
                      match_resolution(v2, v1, cfg.match_resolution_ratio))
    with timer.stage("registration", "ants"):
        reg = register_rigid_then_affine(v1, v2, cfg.registration_seed)
    with timer.stage("brain_mask", "mask_model"):
        brain2 = brain_mask(v2, cfg.brain_mask_threshold)
        brain1 = brain_mask(reg.moved, cfg.brain_mask_threshold)
    with timer.stage("qc", "ours"):
        qc = {
            "brain_volume_ml_visit2": check_brain_volume(brain2, "visit 2", cfg),
            "brain_volume_ml_visit1": check_brain_volume(brain1, "visit 1", cfg),
        }
        brain = LabelMap(brain1.data & brain2.data, v2.affine)
        qc["brain_volume_ml"] = float(brain.data.sum()) * brain.voxel_volume / 1000.0
        qc["registration_correlation"] = brain_correlation(reg.moved, v2, brain)
        check_registration(qc["registration_correlation"], cfg)
    with timer.stage("histogram_match", "ants"):
        matched1 = histogram_match(reg.moved, v2, brain, cfg.histogram_bins, cfg.histogram_match_points)
    with timer.stage("discretise", "ours"):
        edges = grey_level_edges(v2, brain, cfg.grey_levels, cfg.grey_level_percentile)
        levels1 = discretise(matched1, brain, edges)
        levels2 = discretise(v2, brain, edges)
    with timer.stage("distance_maps", "ours"):
        maps = distance_maps(brain)
    with timer.stage("candidates", "ours"):
        candidates = detect_candidates(levels1, levels2, brain, maps, cfg)
    with timer.stage("patches", "ours"):
        patches = extract_patches(candidates.table, levels1, levels2, maps)
    qc["n_candidates"] = float(len(candidates.table))
    return StepOneResult(brain, matched1, v2, levels1, levels2, maps, candidates, patches, qc, reg.matrix)
