"""`msnl simulate`: subjects in parallel on Dask worker processes, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import dask

from msnl.simulate import SimOptions, SimulationError
from pipelines.progress import dask_progress
from pipelines.threads import process_options
from storage.bids import write_participants
from storage.simulated import write_simulated_subject


def parse_arms(text: str) -> tuple[tuple[str, float], ...]:
    """'placebo:3,active:0.8' -> (('placebo', 3.0), ('active', 0.8)), with a clear error."""
    arms = []
    for part in text.split(","):
        name, sep, mean = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            arms.append((name.strip(), float(mean)))
        except ValueError:
            raise SimulationError(
                f"--arms {text!r}: each arm is NAME:MEAN (mean new lesions per interval), for example "
                "placebo:3,active:0.8"
            ) from None
    names = [a[0] for a in arms]
    if len(set(names)) != len(names):
        raise SimulationError(f"--arms {text!r}: arm names must be distinct")
    return tuple(arms)


def run_simulate(out: str | Path, n_subjects: int, n_visits: int, seed: int, opts: SimOptions,
                 real_lesions: str | Path | None = None, workers: int | None = None, progress: bool = True) -> Path:
    """Write a simulated BIDS cohort; subject k is identical whatever `n_subjects` is."""
    if n_subjects < 1:
        raise SimulationError(f"--subjects must be at least 1, got {n_subjects}")
    if n_visits < 2:
        raise SimulationError(f"--visits must be at least 2 (new lesions need two visits), got {n_visits}")
    out = Path(out)
    real = None if real_lesions is None else str(Path(real_lesions).resolve())
    if real is not None:  # fail early and clearly, before any worker starts
        from storage.simulated import anatomies

        anatomies(real)
    tasks = [dask.delayed(write_simulated_subject, pure=False)(str(out), k, n_visits, seed, opts, real) for k in range(n_subjects)]
    options = process_options(n_subjects, workers)
    if progress:
        print(f"simulate: {n_subjects} subjects x {n_visits} visits into {out}")
        with dask_progress("simulate", minimum=0.5):
            rows = dask.compute(*tasks, **options)
    else:
        rows = dask.compute(*tasks, **options)
    write_participants(out, {subject: (arm, site) for subject, arm, site in rows})
    return out
