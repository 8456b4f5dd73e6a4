"""Adapter: simulate one subject and write its visits and truth into a BIDS folder."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from msnl.simulate import SimOptions, plan_subject, render_visit
from msnl.template import Anatomy, anatomy_from_real, mni152_anatomy
from storage.bids import flair_path, save_flair, save_mask, truth_path, write_params, write_sessions
from storage.lesjak import read_cross_sectional


@lru_cache(maxsize=4)
def anatomies(real_lesions: str | None) -> tuple[Anatomy, ...]:
    """The embedded MNI152 anatomy, or the real patients of a Lesjak cross-sectional folder."""
    reference = mni152_anatomy(1)
    if real_lesions is None:
        return (reference,)
    return tuple(anatomy_from_real(name, flair, lesions, reference) for name, flair, lesions in read_cross_sectional(real_lesions))


def visit_label(visit: int) -> str:
    return f"{visit + 1:02d}"


def write_simulated_subject(out: str | Path, index: int, n_visits: int, seed: int, opts: SimOptions,
                            real_lesions: str | None = None) -> tuple[str, str, str]:
    """Simulate subject `index` and write it; returns (subject, arm, site) for participants.tsv."""
    out = Path(out)
    pool = list(anatomies(real_lesions))
    plan = plan_subject(index, n_visits, seed, pool, opts)
    anatomy = pool[index % len(pool)]
    for visit in range(n_visits):
        rendered = render_visit(plan, visit, anatomy)
        label = visit_label(visit)
        save_flair(rendered.flair, flair_path(out, plan.subject, label))
        save_mask(rendered.lesions, truth_path(out, plan.subject, label, "lesions"))
        if rendered.new_lesions is not None:
            save_mask(rendered.new_lesions, truth_path(out, plan.subject, label, "newlesions"))
    write_sessions(out, plan.subject, [(visit_label(v), d) for v, d in enumerate(plan.dates)])
    write_params(out, plan.subject, {"seed": seed, "options": _options_dict(opts), **plan.as_dict()})
    return plan.subject, plan.arm, plan.site


def _options_dict(opts: SimOptions) -> dict:
    return {"arms": [list(a) for a in opts.arms], "lesion_free_share": opts.lesion_free_share,
            "dispersion": opts.dispersion, "baseline_lesions": list(opts.baseline_lesions),
            "enlarging_share": opts.enlarging_share, "sites": opts.sites, "interval_days": opts.interval_days}
