"""`msnl demo`: the main job on the embedded default, needing nothing outside the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msnl.simulate import apply_visit, draw_visit_params, flair_like
from msnl.template import mni152
from storage.bids import BidsVisit, write_bids

DEMO_SEED = 20211001
_SUBJECTS = (("001", "placebo", "site-A"), ("002", "active", "site-B"))
_VISIT_DATES = ("2024-01-15", "2025-01-20")


def make_demo_source(root: Path, seed: int = DEMO_SEED) -> Path:
    """Write the tiny two-subject, two-visit demo cohort as BIDS, unless it is already there."""
    if (root / "participants.tsv").exists():
        return root
    template, brain = mni152(resolution=2)
    base = flair_like(template, brain)
    visits = []
    for s, (subject, arm, site) in enumerate(_SUBJECTS):
        for v, when in enumerate(_VISIT_DATES):
            rng = np.random.default_rng([seed, s, v])
            scan = apply_visit(base, draw_visit_params(rng), seed=int(rng.integers(2**31)))
            visits.append(BidsVisit(subject, f"{v + 1:02d}", scan, when, arm, site))
    return write_bids(root, visits)
