"""A longitudinal MS cohort simulator with exact new-lesion truth.

Subject k's whole history is drawn from its own random stream (`seed`, k), so subject k is
the same whatever the cohort size, and a cohort can be grown. Parameters are drawn once
(`plan_subject`) and rendered deterministically (`render_visit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

import numpy as np
from scipy import ndimage

from msnl.acquisition import PROTOCOLS, Acquisition, acquire, draw_acquisition, grid_for, resample_to_native
from msnl.errors import MsnlError
from msnl.inpaint import inpaint
from msnl.lesions import Lesion, draw_lesion, paint, soft_mask
from msnl.scan import LabelMap, Scan
from msnl.template import Anatomy


class SimulationError(MsnlError):
    """Simulator options that can't be honoured."""


@dataclass(frozen=True)
class SimOptions:
    arms: tuple[tuple[str, float], ...] = (("placebo", 3.0), ("active", 0.8))
    lesion_free_share: float = 0.2
    dispersion: float = 0.7  # negative-binomial shape: MRI lesion counts are overdispersed
    baseline_lesions: tuple[int, int] = (3, 15)
    enlarging_share: float = 0.15
    sites: int = 3
    interval_days: int = 365
    protocol: Literal["mixed", "2d"] = "mixed"  # "mixed": 2D thick-slice and 3D visits; "2d": every visit 1 x 1 x 3 mm 2D

    def __post_init__(self) -> None:
        if not self.arms:
            raise SimulationError("at least one arm is needed, for example --arms placebo:3,active:0.8")
        for name, mean in self.arms:
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise SimulationError(f"arm name {name!r} must be letters, digits, '-' or '_'")
            if not (np.isfinite(mean) and mean >= 0):
                raise SimulationError(f"arm {name}: the mean number of new lesions must be >= 0, got {mean}")
        if not 0 <= self.lesion_free_share <= 1:
            raise SimulationError(f"the share of lesion-free subjects must be in [0, 1], got {self.lesion_free_share}")
        if self.protocol not in PROTOCOLS:
            raise SimulationError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.sites < 1 or self.interval_days < 1 or self.dispersion <= 0:
            raise SimulationError("sites, interval days and dispersion must be positive")


@dataclass(frozen=True)
class SubjectPlan:
    """Everything drawn for one subject: arm, site, dates, lesions, acquisitions."""

    index: int
    subject: str
    arm: str
    site: str
    dates: tuple[str, ...]
    lesion_free: bool
    new_per_interval: tuple[int, ...]
    lesions: tuple[Lesion, ...]
    acquisitions: tuple[Acquisition, ...]
    anatomy_name: str | None = None
    real_onsets: dict = field(default_factory=dict)  # real lesion label -> onset visit

    def as_dict(self) -> dict:
        return {
            "index": self.index, "subject": self.subject, "arm": self.arm, "site": self.site,
            "dates": list(self.dates), "lesion_free": self.lesion_free,
            "new_per_interval": list(self.new_per_interval),
            "lesions": [lesion.as_dict() for lesion in self.lesions],
            "acquisitions": [a.as_dict() for a in self.acquisitions],
            "anatomy_name": self.anatomy_name, "real_onsets": {str(k): v for k, v in self.real_onsets.items()},
        }


def _new_lesion_count(rng: np.random.Generator, index: int, mean: float, opts: SimOptions, lesion_free: bool) -> int:
    if lesion_free:
        return 0
    if index == 1:  # every cohort holds a subject with one or two new lesions per interval
        return int(rng.integers(1, 3))
    if mean == 0:
        return 0
    return int(rng.negative_binomial(opts.dispersion, opts.dispersion / (opts.dispersion + mean)))


def plan_subject(index: int, n_visits: int, seed: int, anatomies: list[Anatomy], opts: SimOptions) -> SubjectPlan:
    """Draw subject `index`'s history from its own stream: independent of the cohort size.

    Subject k takes anatomy k modulo their number. An anatomy with real lesions lends them:
    some become new lesions (inpainted at earlier visits); synthetic ones make up the rest.
    """
    if n_visits < 2:
        raise SimulationError(f"at least 2 visits are needed to have new lesions, got {n_visits}")
    rng = np.random.default_rng([seed, index])
    arm, mean = opts.arms[index % len(opts.arms)]  # balanced, and fixed for subject k
    site = f"site-{int(rng.integers(opts.sites)) + 1}"
    # subject 0 is always lesion-free, so every cohort has lesion-free pairs
    lesion_free = index == 0 or (index > 1 and rng.random() < opts.lesion_free_share)
    start = date(2020, 1, 1) + timedelta(days=int(rng.integers(0, 730)))
    dates = [start]
    for _ in range(n_visits - 1):
        dates.append(dates[-1] + timedelta(days=int(opts.interval_days + rng.integers(-30, 31))))
    counts = tuple(_new_lesion_count(rng, index, mean, opts, lesion_free) for _ in range(n_visits - 1))
    anatomy = anatomies[index % len(anatomies)]
    real_onsets: dict[int, int] = {}
    lesions: list[Lesion] = []
    n_baseline = 0 if anatomy.lesions is not None else int(rng.integers(*opts.baseline_lesions))
    lesions += [draw_lesion(rng, anatomy, onset=0) for _ in range(n_baseline)]
    labels = _real_components(anatomy.lesions) if anatomy.lesions is not None else []
    rng.shuffle(labels)
    for visit, count in enumerate(counts, start=1):
        for _ in range(count):
            if labels:  # real lesions first: inpainted at earlier visits, so they appear new
                real_onsets[int(labels.pop())] = visit
                continue
            old = [i for i, les in enumerate(lesions) if les.onset < visit and les.growth_visit is None]
            if old and rng.random() < opts.enlarging_share:
                i = old[int(rng.integers(len(old)))]
                grown = lesions[i]
                lesions[i] = Lesion(**{**grown.as_dict(), "growth_visit": visit, "growth": float(rng.uniform(1.3, 1.6))})
            else:
                lesions.append(draw_lesion(rng, anatomy, onset=visit))
    acquisitions = tuple(draw_acquisition(rng, protocol=opts.protocol) for _ in range(n_visits))
    return SubjectPlan(index, f"{index + 1:03d}", arm, site, tuple(d.isoformat() for d in dates), lesion_free,
                       counts, tuple(lesions), acquisitions, anatomy.name, real_onsets)


# Real lesions under this size mostly vanish into the partial volume of a 3 mm slice (ours).
MIN_REAL_LESION_MM3 = 20.0


def _real_components(mask: LabelMap) -> list[int]:
    labels, n = ndimage.label(mask.data, structure=np.ones((3, 3, 3), bool))
    volumes = np.bincount(labels.ravel(), minlength=n + 1) * mask.voxel_volume
    return [int(i) for i in np.flatnonzero(volumes >= MIN_REAL_LESION_MM3) if i > 0]


@dataclass(frozen=True)
class SimVisit:
    """One rendered visit: the FLAIR on its own grid and its truth on the same grid."""

    visit: int
    flair: Scan
    lesions: LabelMap  # every lesion present at this visit
    new_lesions: LabelMap | None  # new since the previous visit (None at baseline)


def _template_head(plan: SubjectPlan, visit: int, anatomy: Anatomy, include_new: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head at `visit` in template space, and soft maps of all and of new lesions."""
    affine = anatomy.flair.affine
    lesions = [les for les in plan.lesions if include_new or les.onset < visit]
    base = anatomy.flair.data
    real_all = np.zeros(base.shape, np.float32)
    real_new = np.zeros(base.shape, np.float32)
    real = anatomy.lesions
    if real is not None:
        labels, _ = ndimage.label(real.data, structure=np.ones((3, 3, 3), bool))
        hidden = np.isin(labels, [k for k, onset in plan.real_onsets.items() if onset > visit or (not include_new and onset == visit)])
        rng = np.random.default_rng([plan.index, visit, 7])
        if hidden.any():
            base = inpaint(base, ndimage.binary_dilation(hidden), avoid=~anatomy.brain.data | real.data, rng=rng)
        real_all = (real.data & ~hidden).astype(np.float32)
        real_new = np.isin(labels, [k for k, onset in plan.real_onsets.items() if onset == visit]).astype(np.float32)
    head = paint(base, affine, lesions, visit)
    all_soft = np.maximum(soft_mask(lesions, visit, affine, base.shape, new_only=False), real_all)
    new_soft = np.maximum(soft_mask(lesions, visit, affine, base.shape, new_only=True), real_new)
    return head, all_soft, new_soft


def render_visit(plan: SubjectPlan, visit: int, anatomy: Anatomy, include_new: bool = True) -> SimVisit:
    """Render one visit on its own grid. `include_new=False` leaves out what is new at `visit`
    (same nuisances, same noise): the difference between the two renderings is the new lesions."""
    acq = plan.acquisitions[visit]
    affine = anatomy.flair.affine
    head, all_soft, new_soft = _template_head(plan, visit, anatomy, include_new)
    image, native = acquire(head, affine, acq)
    _, shape = grid_for(affine, head.shape, acq)
    lesions = resample_to_native(all_soft, affine, acq, native, shape) > 0.5
    new = resample_to_native(new_soft, affine, acq, native, shape) > 0.5 if visit > 0 else None
    return SimVisit(
        visit, Scan(image, native), LabelMap(lesions, native), None if new is None else LabelMap(new, native)
    )
