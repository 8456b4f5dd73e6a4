"""Thread caps for worker processes: ITK (antspyx) and torch each use every core by default,
so two workers on two cores would fight over four threads. Counts start from the CPUs a job
may use, not the node's."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import dask.system

_VARS = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cpus() -> int:
    """The CPUs this process may use: a cluster job's allocation (its CPU affinity and cgroup
    quota, as dask reads them), not the whole node's cores that `os.cpu_count` counts."""
    return max(1, dask.system.cpu_count())


def default_workers(tasks: int) -> int:
    """One worker process per usable CPU, and no more than there are tasks."""
    return max(1, min(usable_cpus(), tasks))


def process_options(tasks: int, workers: int | None = None) -> dict:
    """Dask's compute options for `tasks` tasks on local worker processes: one per usable CPU
    (or `workers`), never more than tasks, or in this process when one is all there is."""
    workers = min(workers, tasks) if workers else default_workers(tasks)
    if workers <= 1:
        return {"scheduler": "sync"}
    # chunksize=1: one task per submission, so a progress bar moves as each task finishes
    return {"scheduler": "processes", "num_workers": workers, "chunksize": 1}


def thread_env(per_worker: int) -> dict[str, str]:
    """The environment that caps a worker process's ITK, OpenMP and BLAS threads."""
    return {v: str(per_worker) for v in _VARS}


@contextmanager
def capped_threads(per_worker: int) -> Iterator[None]:
    """Set the thread caps that worker processes started inside this block inherit."""
    saved = {v: os.environ.get(v) for v in _VARS}
    os.environ.update(thread_env(per_worker))
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old

