"""Worker set-up, loaded into every Dask worker with `--preload pipelines.worker`.

`msnl run` preloads it into its local workers; start external workers with
`dask worker SCHEDULER --preload pipelines.worker`. It does two things, and a third in `msnl
run`'s own workers:

- Caps ITK (antspyx), OpenMP and torch threads to the worker's own thread count, since each
  of them takes every core by default and two workers on two cores would fight over four.
- Puts the folder holding msnl's packages on sys.path. A worker puts its own folder first on
  sys.path and spills to a sub-folder of it named `storage`; with an editable install (an
  import hook, no folder on sys.path) `import storage` would find that spill folder, an empty
  namespace package, instead of ours.
- In `msnl run`'s local workers (`LOCAL_WORKER_ENV` set), ignores SIGINT. Ctrl-C on a
  terminal reaches every process of its group: `msnl run` closes its cluster and says how to
  resume, and a worker of its own would only add a traceback of distributed's. External
  workers keep their Ctrl-C.
- In those local workers too, drops distributed's "Compute Failed" log block, which they
  would print on the user's terminal above `msnl run`'s own one-line failure; the run keeps
  the traceback in its report in the store instead. External workers keep it in their logs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from pipelines.threads import thread_env

log = logging.getLogger(__name__)

PACKAGES_ROOT = str(Path(__file__).resolve().parent.parent)
LOCAL_WORKER_ENV = "MSNL_LOCAL_WORKER"


def drop_compute_failed(record: logging.LogRecord) -> bool:
    """A logging filter: False for distributed's "Compute Failed" block, True for the rest."""
    return not str(record.msg).startswith("Compute Failed")


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
    if os.environ.get(LOCAL_WORKER_ENV) == "1":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # its child processes inherit this
        logging.getLogger("distributed.worker").addFilter(drop_compute_failed)
    log.info("msnl worker %s: %d thread(s) for ITK and torch", worker.name, threads)
