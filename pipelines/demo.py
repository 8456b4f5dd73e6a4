"""`msnl demo`: the main job on the embedded default, needing nothing outside the package.

It simulates a small two-arm trial from the MNI152 template that nilearn's wheel bundles, runs
the whole method on it on a local Dask cluster, prints the per-arm endpoints and the command
that opens the dashboard. A second run finds everything done and returns at once.
"""

from __future__ import annotations

import math
from pathlib import Path

from msnl.errors import MsnlError
from msnl.simulate import SimOptions
from pipelines.run import RunSummary, run_cohort
from pipelines.simulate import run_simulate

DEMO_SEED = 20211001
DEMO_SUBJECTS = 6
DEMO_VISITS = 3


def make_demo_source(root: Path, seed: int = DEMO_SEED, subjects: int = DEMO_SUBJECTS, visits: int = DEMO_VISITS) -> Path:
    """Simulate the demo cohort as BIDS from the embedded MNI152 anatomy, unless already there."""
    if (root / "participants.tsv").exists():
        return root
    # 2D 1 x 1 x 3 mm visits, a common trial protocol: the lightest for step one's ANTs stages,
    # which keeps the demo within minutes on a laptop.
    return run_simulate(root, subjects, visits, seed, SimOptions(protocol="2d"), progress=True)


def run_demo(root: Path, workers: int | None = None) -> tuple[Path, RunSummary]:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if root.exists() else exc.strerror
        raise MsnlError(f"{root}: can't make the demo folder here ({why}). Give a folder you can write, "
                        "for example `msnl demo ./msnl-demo`.") from None
    source = make_demo_source(root / "source")
    store = root / "store.zarr"
    return store, run_cohort(source, store, workers=workers, progress=True)


def endpoint_report(store: Path) -> str:
    """The per-arm endpoint table and the rate ratio, as text."""
    from msnl.endpoints import per_arm_interval, rate_ratios
    from storage import open_results

    results = open_results(store)
    table = per_arm_interval(results)
    lines = [f"{'arm':<10} {'interval':<9} {'patients':>8} {'left out':>8} {'mean new (95% CI)':>22} "
             f"{'free of new (95% CI)':>24} {'mean mm³':>9}"]
    for row in table.itertuples():
        lines.append(f"{row.arm:<10} {row.interval:<9} {row.n_patients:>8} {row.n_left_out:>8} "
                     f"{row.mean_new_lesions:>6.2f} ({row.mean_ci_low:5.2f}, {row.mean_ci_high:5.2f}) "
                     f"{row.free_share:>8.0%} ({row.free_ci_low:4.0%}, {row.free_ci_high:4.0%}) {row.mean_volume_mm3:>9.1f}")
    for rr in rate_ratios(results):
        if math.isnan(rr.ratio):  # not fitted; the message says why
            lines.append(f"rate ratio {rr.arm} vs {rr.reference}: not available ({rr.message})")
        else:
            lines.append(f"rate ratio {rr.arm} vs {rr.reference}: {rr.ratio:.2f} (95% CI {rr.ci_low:.2f}-{rr.ci_high:.2f}), "
                         f"p = {rr.p_value:.3g}, negative-binomial, {rr.n_patients} patients. {rr.message}".rstrip())
    return "\n".join(lines)
