"""`msnl demo`: the main job on the embedded default, needing nothing outside the package."""

from __future__ import annotations

from pathlib import Path

from msnl.simulate import SimOptions
from pipelines.simulate import run_simulate

DEMO_SEED = 20211001
DEMO_SUBJECTS = 2
DEMO_VISITS = 2


def make_demo_source(root: Path, seed: int = DEMO_SEED) -> Path:
    """Simulate the demo cohort as BIDS from the embedded MNI152 anatomy, unless already there."""
    if (root / "participants.tsv").exists():
        return root
    return run_simulate(root, DEMO_SUBJECTS, DEMO_VISITS, seed, SimOptions(), progress=True)
