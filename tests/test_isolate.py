"""ANTs work in a child process (pipelines/isolate.py): results and errors come back, a dying
child fails its task with a message, and a Dask worker keeps its heartbeats through a long
ANTs call."""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from msnl.errors import StoreError
from pipelines.isolate import IsolatedTaskError, _portable, run_isolated
from storage.layout import store_path


def test_runs_in_another_process_with_the_thread_caps():
    assert run_isolated(os.getpid) != os.getpid()
    assert run_isolated(os.getenv, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", threads=3) == "3"
    assert run_isolated(os.getenv, "OMP_NUM_THREADS") == "1"


def test_an_error_comes_back_as_itself_with_the_childs_traceback():
    with pytest.raises(ZeroDivisionError) as caught:
        run_isolated(operator.truediv, 1, 0)
    assert any("in the child process" in note and "ZeroDivisionError" in note for note in caught.value.__notes__)


class _TwoArgumentError(Exception):
    def __init__(self, status: str, message: str) -> None:
        self.status = status
        super().__init__(message)


def test_an_error_with_its_own_constructor_comes_back_whole():
    back = _portable(_TwoArgumentError("registration_failed", "sub-x: the registration failed"))
    assert isinstance(back, _TwoArgumentError) and back.status == "registration_failed"


def test_an_error_that_does_not_pickle_keeps_its_message():
    error = StoreError("sub-x: the store is locked")
    error.lock = threading.Lock()
    plain = _portable(error)
    assert isinstance(plain, IsolatedTaskError)
    assert str(plain) == "StoreError: sub-x: the store is locked"
    assert "in the child process" in plain.__notes__[0]


def test_a_child_that_dies_fails_its_task_with_what_and_how():
    with pytest.raises(IsolatedTaskError, match=r"N4 of sub-x visit 01: its child process was killed by SIGABRT"):
        run_isolated(os.abort, what="N4 of sub-x visit 01")


def test_a_child_over_the_memory_limit_is_stopped_and_the_error_says_how_to_fix_it():
    budget = psutil.Process().memory_info().rss + 200 * 2**20
    hold_1_gib = "import time\ndata = bytearray(2**30)\ntime.sleep(60)"
    with pytest.raises(IsolatedTaskError, match=r"step one of sub-x 01->02: its child process was stopped .* give the workers more memory"):
        run_isolated(exec, hold_1_gib, memory_limit=budget, what="step one of sub-x 01->02")


def test_a_child_under_the_memory_limit_runs_to_its_end():
    budget = psutil.Process().memory_info().rss + 1024 * 2**20
    assert run_isolated(exec, "data = bytearray(2**26)", memory_limit=budget) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_child_dies_with_the_process_that_started_it():
    """A worker killed mid-task (by its nanny, the job's end, the OOM killer) takes its child
    with it, instead of leaving it to compute what the task's re-run computes again."""
    repo = Path(__file__).resolve().parents[1]
    worker = subprocess.Popen([sys.executable, "-c", "import time; from pipelines.isolate import run_isolated; run_isolated(time.sleep, 120)"],
                              cwd=repo)
    children = []
    try:
        for _ in range(300):
            children = psutil.Process(worker.pid).children()
            if children:
                break
            time.sleep(0.1)
        assert children, "the worker never started its child"
        worker.kill()
        worker.wait()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert gone and not alive, "the child outlived its worker"
    finally:
        worker.kill()
        for child in children:
            if child.is_running():
                child.kill()


def test_a_task_child_is_held_to_its_workers_memory_limit():
    from distributed import Client, LocalCluster

    from pipelines.run import _worker_memory_budget

    assert _worker_memory_budget() is None  # outside a worker
    with LocalCluster(n_workers=1, processes=False, memory_limit="1GiB", dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(_worker_memory_budget).result() == int(0.95 * 2**30)


def test_folders_in_the_working_directory_do_not_shadow_our_packages(tmp_path, monkeypatch):
    for name in ("pipelines", "storage", "msnl"):
        (tmp_path / name).mkdir()  # e.g. a store the user called `storage`
    monkeypatch.chdir(tmp_path)
    assert run_isolated(os.getpid) != os.getpid()
    with pytest.raises(StoreError):  # the child imported our storage package, not the empty folder
        run_isolated(store_path, "s3://bucket/store.zarr")


@pytest.mark.slow
def test_a_worker_keeps_its_heartbeats_through_ants_calls_longer_than_the_worker_ttl(tmp_path):
    """N4 of a 2 mm brain takes about 6 s and each registration about 4 s here. In the worker
    itself, ANTs held the GIL that long and the scheduler, at a 3 s worker-ttl, removed the
    worker and restarted its task; in a child process the same worker runs every task."""
    from distributed import LocalCluster

    from msnl.template import mni152_anatomy
    from pipelines.run import run_cohort
    from pipelines.threads import thread_env
    from storage.bids import BidsVisit, write_bids
    from tests.test_step_one import _planted_pair

    anatomy = mni152_anatomy(resolution=2)
    visit1, visit2, _ = _planted_pair((anatomy.flair, anatomy.brain))
    source = tmp_path / "bids"
    write_bids(source, [BidsVisit("a", "01", visit1, "2020-01-01", "placebo", "site-1"),
                        BidsVisit("a", "02", visit2, "2021-01-01", "placebo", "site-1")])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, env=thread_env(1), preload=["pipelines.worker"],
                      dashboard_address=None, scheduler_kwargs={"worker_ttl": "3s"}) as cluster:
        before = set(cluster.scheduler.workers)
        summary = run_cohort(source, tmp_path / "store.zarr", scheduler=cluster.scheduler_address, progress=False)
        after = set(cluster.scheduler.workers)
        removed = [e for e in cluster.scheduler.get_events("all") if "remove-worker" in str(e)]
    assert summary.done == 1 and summary.failed == []
    assert after == before, f"the scheduler replaced its worker: {removed}"


def _isolated_children(pid: int) -> list[psutil.Process]:
    """The `run_isolated` child processes under `pid`."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if "pipelines.isolate" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # it ended meanwhile, or is a zombie not yet reaped
            pass
    return found


def test_ctrl_c_stops_msnl_run_cleanly_and_leaves_no_child_process(tmp_path):
    """Ctrl-C on a terminal sends SIGINT to every process of the group: `msnl run` says how to
    resume and exits 130, its workers print no traceback of their own, and the N4 children
    that were running die with their workers instead of finishing alone."""
    import signal

    from msnl.template import mni152_anatomy
    from storage.bids import BidsVisit, write_bids

    flair = mni152_anatomy(resolution=1).flair  # N4 of it takes half a minute or more here
    write_bids(tmp_path / "bids", [BidsVisit("a", v, flair, f"202{i}-01-01", "placebo", "site-1") for i, v in enumerate(("01", "02"))])
    with open(tmp_path / "out.log", "wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(tmp_path / "bids"), str(tmp_path / "store.zarr")],
                               cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    children: list[psutil.Process] = []
    try:
        for _ in range(1200):
            children = _isolated_children(run.pid)
            if children or run.poll() is not None:
                break
            time.sleep(0.1)
        assert children, "no N4 child process started"
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=120) == 130
        gone, alive = psutil.wait_procs(children, timeout=2)  # their N4 alone would take many seconds more
        assert not alive, "a child process outlived its worker"
        output = (tmp_path / "out.log").read_text()
        assert "interrupted; finished work is kept, run the same command again to resume" in output
        assert "Traceback" not in output, output
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for child in children:
            if child.is_running():
                child.kill()


def _fails(_: int) -> None:
    raise ValueError("a bad scan")


@pytest.mark.parametrize(("local", "printed"), [("1", False), ("", True)])
def test_msnl_runs_own_workers_leave_compute_failed_off_the_terminal(local, printed, capfd):
    """`msnl run` prints each failure in one line and keeps the traceback in its report: its own
    workers drop distributed's "Compute Failed" block; external workers keep it in their logs."""
    import logging

    from distributed import Client, LocalCluster

    from pipelines.worker import LOCAL_WORKER_ENV

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, env={LOCAL_WORKER_ENV: local},
                      preload=["pipelines.worker"], dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        future = client.submit(_fails, 1)
        assert "a bad scan" in str(future.exception())
    assert ("Compute Failed" in capfd.readouterr().err) is printed
