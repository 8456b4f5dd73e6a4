"""Run a task's ANTs work in a child process, so that the Dask worker stays responsive.

ANTs (N4, registration) holds the GIL for a whole call: 37 s for N4 of a 1 mm brain on one
thread of this 2-core machine, minutes on a loaded node. Inside a Dask worker that stops the
event loop, so the worker sends no heartbeat; past the scheduler's `worker-ttl` the scheduler
restarts it and the task starts over. Waiting on a child process releases the GIL. The child
also takes a crash of ITK (a segfault, the kernel's out-of-memory killer) alone: the task
fails with a message that says so, and the worker and its next tasks go on.

Two things the worker process did for itself now have to cover the child too. A memory
limit: Dask's nanny watches the worker process only, so the parent measures the two together
and stops the child past `memory_limit`. And dying with the worker: on Linux the child asks
the kernel to kill it when the thread that started it ends, so a worker that is killed leaves
no orphan computing what the task's re-run on another worker computes again.

The call and its result travel as pickles in a temporary folder, so the function and its
arguments must be picklable by reference (module-level functions, paths, store keys, configs).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import psutil

from msnl.errors import MsnlError
from pipelines.threads import thread_env
from pipelines.worker import PACKAGES_ROOT  # on the child's path: see pipelines/worker.py

_LOG_TAIL_CHARS = 2000
_POLL_S = 0.2  # how often the parent measures the child's memory; the nanny checks every 0.1 s
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class IsolatedTaskError(MsnlError):
    """A task's child process died, or raised an error that could not travel back as itself."""


def _child_env(threads: int) -> dict[str, str]:
    path = [PACKAGES_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, **thread_env(threads), "PYTHONPATH": os.pathsep.join(path)}


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-_LOG_TAIL_CHARS:].strip()


def _death(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (SIGKILL most often comes from the out-of-memory killer: give the workers more memory)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode} without a result"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _wait(proc: subprocess.Popen, memory_limit: int | None) -> int | None:
    """Wait for `proc`. Past `memory_limit` bytes held by this process and `proc` together,
    kill `proc` and return what they held; otherwise return None once it ends."""
    me = psutil.Process()
    try:
        child = psutil.Process(proc.pid)
        while True:
            try:
                proc.wait(timeout=_POLL_S if memory_limit else None)
                return None
            except subprocess.TimeoutExpired:
                pass
            try:
                held = me.memory_info().rss + child.memory_info().rss
            except psutil.NoSuchProcess:  # it has just ended; the next wait returns
                continue
            if held > memory_limit:
                proc.kill()
                proc.wait()
                return held
    except BaseException:  # e.g. KeyboardInterrupt: the child must not outlive its call
        proc.kill()
        proc.wait()
        raise


def run_isolated(func: Callable[..., Any], *args: Any, threads: int = 1, what: str | None = None,
                 memory_limit: int | None = None) -> Any:
    """`func(*args)` in a child Python process with `threads` ITK, OpenMP and BLAS threads.

    Returns its result, or raises its error (as itself when it pickles, otherwise as an
    `IsolatedTaskError` with the same message). A child that dies raises `IsolatedTaskError`
    naming `what` (default: the function), how it died, and the end of its output. With
    `memory_limit` (bytes), the child is stopped once it and this process together hold more,
    and the error says so.
    """
    what = what or f"{func.__module__}.{func.__qualname__}"
    with tempfile.TemporaryDirectory(prefix="msnl-task-") as tmp:
        call, result, log = Path(tmp, "call.pkl"), Path(tmp, "result.pkl"), Path(tmp, "output.log")
        call.write_bytes(pickle.dumps((func, args)))
        with open(log, "wb") as out:
            # -P: the working directory does not go on sys.path (it may hold a folder named
            # like one of our packages, e.g. a store called `storage`).
            proc = subprocess.Popen([sys.executable, "-P", "-m", "pipelines.isolate", str(call), str(result), str(os.getpid())],
                                    env=_child_env(threads), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            held = _wait(proc, memory_limit)
        if held is not None:
            raise IsolatedTaskError(
                f"{what}: its child process was stopped when it and its worker held {_gib(held)}, over the "
                f"{_gib(memory_limit)} the worker may use; give the workers more memory (`--memory-limit` of "
                "`dask worker`, or memory_limit in your cluster's settings) and run again")
        if not result.exists():
            tail = _tail(log)
            raise IsolatedTaskError(f"{what}: its child process {_death(proc.returncode)}"
                                    + (f"; its last output:\n{tail}" if tail else ""))
        ok, value = pickle.loads(result.read_bytes())
    if ok:
        return value
    raise value


def _portable(exc: BaseException) -> BaseException:
    """`exc` with the child's traceback as a note, or an IsolatedTaskError when it won't pickle."""
    from tblib import pickling_support  # distributed's own: errors whose constructors take other arguments pickle too

    pickling_support.install()  # now, so that it covers every exception class loaded by the call
    exc.add_note("in the child process:\n" + "".join(traceback.format_exception(exc)))
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # e.g. an error that holds an open file or a lock
        plain = IsolatedTaskError(f"{type(exc).__name__}: {exc}")
        plain.__notes__ = list(exc.__notes__)
        return plain


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel kill this process when the thread that started it ends. That
    thread waits in `_wait` for as long as this process runs, so it ends only when its process
    dies. Elsewhere an orphan finishes its call alone, harmlessly (results are published by
    atomic rename)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above could take effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    call, result, parent = argv if argv is not None else sys.argv[1:]
    _die_with_parent(int(parent))
    func, args = pickle.loads(Path(call).read_bytes())
    try:
        outcome = (True, func(*args))
    except Exception as exc:
        outcome = (False, _portable(exc))
    staged = Path(f"{result}.partial")
    staged.write_bytes(pickle.dumps(outcome))
    staged.replace(result)  # a child killed while writing leaves no result, never half of one
    return 0


if __name__ == "__main__":
    sys.exit(main())
