"""Worker set-up, loaded into every Dask worker with `--preload pipelines.worker`.

`msnl run` preloads it into its local workers; start external workers with
`dask worker SCHEDULER --preload pipelines.worker`. It does two things:

- Caps ITK (antspyx), OpenMP and torch threads to the worker's own thread count, since each
  of them takes every core by default and two workers on two cores would fight over four.
- Puts the folder holding msnl's packages on sys.path. A worker puts its own folder first on
  sys.path and spills to a sub-folder of it named `storage`; with an editable install (an
  import hook, no folder on sys.path) `import storage` would find that spill folder, an empty
  namespace package, instead of ours.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipelines.threads import thread_env

log = logging.getLogger(__name__)

PACKAGES_ROOT = str(Path(__file__).resolve().parent.parent)


def dask_setup(worker) -> None:
    if PACKAGES_ROOT not in sys.path:
        sys.path.insert(0, PACKAGES_ROOT)
    loaded = sys.modules.get("storage")
    if loaded is not None and getattr(loaded, "__file__", None) is None:  # the spill folder, not ours
        del sys.modules["storage"]
    threads = max(1, int(worker.state.nthreads))
    for name, value in thread_env(threads).items():
        os.environ.setdefault(name, value)
    import torch

    torch.set_num_threads(threads)
    log.info("msnl worker %s: %d thread(s) for ITK and torch", worker.name, threads)
