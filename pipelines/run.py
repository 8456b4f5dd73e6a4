"""`msnl run`: the cohort pipeline on a Dask cluster.

Ingest (incremental), then per interval a step-one task that carries store keys only, then
CNN tasks that each take the patches of several intervals. CNN tasks ask for a GPU resource
when the cluster has workers that advertise one. Every result is keyed by its inputs, config
and weights, so a re-run skips what is done and a crash loses only the tasks in flight.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import numpy as np
from distributed import Client, LocalCluster, as_completed, get_worker
from tqdm import tqdm

from msnl.config import StepOneConfig
from msnl.errors import MsnlError
from pipelines.ingest import run_ingest
from pipelines.isolate import run_isolated
from pipelines.progress import progress_bar
from pipelines.threads import default_workers, thread_env
from pipelines.worker import LOCAL_WORKER_ENV
from msnl.step_one import software_versions
from storage.corrected import correct_stored_visit
from storage.layout import clear_staging
from storage.pairs import process_pair, read_candidates, read_pair_array, read_pair_attrs, result_key
from storage.report import RunReport, run_failures
from storage.scans import stored_scan_attrs, stored_scan_voxels
from storage.results import (intervals, prediction_result_key, read_prediction_attrs, single_visit_subjects,
                             write_prediction)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunSummary:
    intervals: int
    done: int
    skipped: int
    failed: list[tuple[str, str, str, str]]  # subject, interval, status, message
    reprocessed: int = 0  # done before, but with another config, software or weights
    report: str = ""  # the store key of this run's report (its task failures with their tracebacks), if it wrote one


def n4_task(store: str, subject: str, visit: str, cfg: StepOneConfig) -> tuple[str, str]:
    """The per-visit part of step one (N4), stored so the visit's intervals share it. ANTs runs
    in a child process, so the worker keeps sending heartbeats (pipelines/isolate.py)."""
    return run_isolated(correct_stored_visit, store, subject, visit, cfg, threads=_worker_threads(),
                        memory_limit=_worker_memory_budget(), what=f"N4 of sub-{subject} visit {visit}")


def step_one_task(store: str, subject: str, a: str, b: str, cfg: StepOneConfig, *after: object) -> tuple[str, str, str, str, str]:
    """Step one of one interval, in a child process as N4 is; `after` holds the visits' N4
    tasks, only so Dask runs those first."""
    outcome = run_isolated(process_pair, store, subject, a, b, cfg, threads=_worker_threads(),
                           memory_limit=_worker_memory_budget(), what=f"step one of sub-{subject} {a}->{b}")
    return subject, a, b, outcome.status, outcome.message


_MODEL_CACHE: dict[str, tuple] = {}


def cnn_task(store: str, batch: list[tuple[str, str, str]], weights: str | None, step_one: StepOneConfig) -> list[tuple[str, str, str, str, str]]:
    """Step two for a batch of intervals; the model is loaded once per worker process."""
    import torch

    from msnl.inference import load_weights, weights_digest
    from msnl.scan import LabelMap
    from msnl.step_two import run_step_two

    torch.set_num_threads(_worker_threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache_key = f"{weights}:{device}"
    if cache_key not in _MODEL_CACHE:
        model, cfg, _ = load_weights(weights, device)
        _MODEL_CACHE[cache_key] = (model, cfg, weights_digest(weights))
    model, cfg, digest = _MODEL_CACHE[cache_key]
    done = []
    for subject, a, b in batch:
        attrs = read_pair_attrs(store, subject, a, b)
        try:
            table, patches = read_candidates(store, subject, a, b, flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
        except MsnlError as exc:  # one interval's problem never fails the rest of the batch
            done.append((subject, a, b, "cnn_failed", str(exc)))
            continue
        key = prediction_result_key(attrs["result_key"], digest)
        brain = read_pair_array(store, subject, a, b, "brain")
        grid = LabelMap(brain > 0, np.asarray(attrs["affine"]))
        started = time.perf_counter()
        seg = run_step_two(table, patches, grid, model, cfg, step_one, device)
        seconds = time.perf_counter() - started
        write_prediction(store, subject, a, b, key, seg.mask.data, seg.lesions, {
            "status": "ok", "message": "", "weights_digest": digest, "device": str(device), "worker": _worker_name(),
            "timings": {"cnn": seconds},
            "new_lesion_count": int(len(seg.lesions)),
            "new_lesion_volume_mm3": float(seg.lesions.volume_mm3.sum()) if len(seg.lesions) else 0.0,
        })
        done.append((subject, a, b, "ok", ""))
    return done


def _worker_threads() -> int:
    try:
        return max(1, get_worker().state.nthreads)
    except ValueError:  # not inside a worker: the eager path
        return 1


def _worker_memory_budget() -> int | None:
    """What a task's child process and its worker may hold together: the share of the worker's
    memory limit at which Dask's nanny would restart the worker (`distributed.worker.memory.
    terminate`, 95 %). The nanny watches the worker process only; `run_isolated` watches both.
    None without a limit, or outside a worker."""
    import dask.config

    try:
        limit = get_worker().memory_manager.memory_limit
    except ValueError:
        return None
    fraction = dask.config.get("distributed.worker.memory.terminate")
    return int(limit * fraction) if limit and fraction else None


def _worker_name() -> str:
    try:
        return str(get_worker().name)
    except ValueError:
        return "local"


def interval_state(store: str, subject: str, a: str, b: str, cfg: StepOneConfig, digest: str, versions: dict) -> str:
    """"new", "done", "failed" (done, and recorded as failed) or "stale" (done with other
    inputs, config, software or weights)."""
    attrs = read_pair_attrs(store, subject, a, b)
    if attrs is None:
        return "new"
    scans = [stored_scan_attrs(store, subject, v) for v in (a, b)]
    if any(s is None for s in scans) or attrs.get("result_key") != result_key(scans[0]["sha256"], scans[1]["sha256"], cfg, versions):
        return "stale"
    if attrs.get("status") != "ok":
        return "failed"
    pred = read_prediction_attrs(store, subject, a, b)
    if pred is None:
        return "new"
    return "done" if pred.get("result_key") == prediction_result_key(attrs["result_key"], digest) else "stale"


# CNN tasks go before any waiting step-one or N4 task: they are short, and their results are
# what the user waits for.
CNN_PRIORITY = 1 << 40


def cnn_batch_ready(pending: int, batch: int, unfinished_step_one: int, workers: int) -> bool:
    """Whether the intervals waiting for the CNN should go now: a full batch, or fewer step-one
    tasks left than workers, so that a worker with nothing else to do takes them."""
    return pending > 0 and (pending >= batch or unfinished_step_one < workers)


def cnn_resources(client: Client) -> dict[str, int] | None:
    """What a CNN task asks the scheduler for: one GPU when any worker advertises one (start
    such workers with `dask worker ... --resources GPU=1`), so CNN tasks go only to them;
    nothing otherwise, so any worker runs them on its CPU."""
    has_gpu = any("GPU" in w.get("resources", {}) for w in client.scheduler_info()["workers"].values())
    return {"GPU": 1} if has_gpu else None


def _start_cluster(todo: int, workers: int | None) -> LocalCluster:
    n = workers or default_workers(todo)
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env={**thread_env(1), LOCAL_WORKER_ENV: "1"}, preload=["pipelines.worker"],
                        dashboard_address=None, memory_limit="6GiB", silence_logs=logging.ERROR)


def _record_failure(report: RunReport, store: str, subject: str, a: str, b: str, status: str, message: str,
                    future=None) -> None:
    """Put a task failure on record, naming the prediction it supersedes (if one is stored),
    with the traceback of the task's error when `future` raised one (and a child process's, which
    `run_isolated` adds as a note)."""
    stored = read_prediction_attrs(store, subject, a, b) or {}
    trace = ""
    if future is not None and future.status == "error":
        exc = future.exception()
        trace = "".join(traceback.format_exception(type(exc), exc, future.traceback()))
    report.failed(subject, f"{a}->{b}", status, message, stored_result=stored.get("result_key"), traceback=trace)


def _error(future) -> str:
    exc = future.exception()
    return f"{type(exc).__name__}: {exc}"


def run_cohort(source: str | Path, store: str | Path, *, scheduler: str | None = None, workers: int | None = None,
               weights: str | None = None, cfg: StepOneConfig | None = None, progress: bool = True,
               cnn_batch: int | None = None) -> RunSummary:
    """Ingest `source` into `store` (incrementally), then step one and the CNN on every interval
    not already done with these inputs, config, software and weights."""
    from msnl.config import CNNConfig
    from msnl.inference import check_candidates, load_weights, weights_digest

    cfg = cfg or StepOneConfig()
    check_candidates(load_weights(weights)[2], cfg.candidate_settings(), weights)  # before any work
    cnn_batch = cnn_batch or CNNConfig().intervals_per_task
    store = str(store)
    summary = run_ingest(source, store, progress=progress)
    digest, versions = weights_digest(weights), software_versions()
    states = {t: interval_state(store, *t, cfg, digest, versions) for t in intervals(store)}
    todo = [t for t, state in states.items() if state in ("new", "stale")]
    stale = sum(state == "stale" for state in states.values())
    failed = [(e["subject"] or "?", e["visit"] or "?", "ingest_failed", e["message"]) for e in summary.entries if e["status"] == "failed"]
    for (s, a, b), state in states.items():
        if state == "failed":
            attrs = read_pair_attrs(store, s, a, b) or {}
            failed.append((s, f"{a}->{b}", attrs.get("status", "failed"), attrs.get("message", "")))
    already = {entry[0] for entry in failed}
    for subject in (s for s in single_visit_subjects(store) if s not in already):
        failed.append((subject, "-", "single_visit", "only one usable visit: there is no interval to compare; "
                       "add the subject's other visits to the source"))
    skipped = len(states) - len(todo)
    if progress:
        print(f"run: {len(states)} intervals, {skipped} already done, {len(todo)} to process")
        if stale:
            print(f"run: {stale} interval(s) were done with another config, software version or weights: reprocessing them")
    # Intervals an earlier run failed whose stored result is current for this run (the user went
    # back to the weights or config that made it): this report clears those failures.
    earlier = run_failures(store)
    found_done = [t for t, state in states.items() if state == "done" and (t[0], f"{t[1]}->{t[2]}") in earlier]
    if not todo:
        if found_done:
            RunReport(store, [], found_done).finish(0)
        return RunSummary(len(states), 0, skipped, failed, stale)
    report = RunReport(store, todo, found_done)  # task failures leave no result: this keeps them on record
    cluster = _start_cluster(len(todo), workers) if scheduler is None else None
    # Not the default client: nothing else in this process should start sending work to it.
    client = Client(scheduler or cluster, set_as_default=False)
    done = 0
    try:
        resources = cnn_resources(client)
        workers_now = max(1, len(client.scheduler_info()["workers"]))
        # Largest first (ANTs time grows with voxel count), so small tasks fill the end of the run.
        visits = sorted({(s, v) for s, a, b in todo for v in (a, b)})
        voxels = {(s, v): stored_scan_voxels(store, s, v) for s, v in visits}
        n4 = {(s, v): client.submit(n4_task, store, s, v, cfg, pure=False, priority=voxels[(s, v)],
                                    key=f"n4-{s}-{v}-{uuid4().hex[:8]}") for s, v in visits}
        futures = [client.submit(step_one_task, store, s, a, b, cfg, n4[(s, a)], n4[(s, b)], pure=False,
                                 priority=voxels[(s, a)] + voxels[(s, b)], key=f"step-one-{s}-{a}-{b}-{uuid4().hex[:8]}")
                   for s, a, b in todo]
        bars = [progress_bar(total, desc, unit, enabled=progress, position=i)
                for i, (total, desc, unit) in enumerate(((len(n4), "N4      ", "visit"), (len(futures), "step one", "interval"),
                                                         (len(todo), "CNN     ", "interval")))]
        n4_futures, interval_of = set(n4.values()), dict(zip(futures, todo))
        batch_of: dict = {}
        pending, finished = [], 0
        with client.as_current():  # as_completed looks up the current client
            queue = as_completed(list(n4.values()) + futures)
        for future in queue:
            if future in n4_futures:
                bars[0].update(1)
            elif future in interval_of:
                finished += 1
                bars[1].update(1)
                if future.status == "error":
                    (subject, a, b), status, message = interval_of[future], "failed", _error(future)
                else:
                    subject, a, b, status, message = future.result()
                if status in ("ok", "skipped"):
                    pending.append((subject, a, b))
                else:
                    failed.append((subject, f"{a}->{b}", status, message))
                    bars[2].update(1)
                    if future.status == "error":  # a stored step-one failure is on record already
                        _record_failure(report, store, subject, a, b, status, message, future)
                    tqdm.write(f"run: sub-{subject} {a}->{b} failed: " + (message if status == "failed" else f"{status}: {message}"))
                if cnn_batch_ready(len(pending), cnn_batch, len(futures) - finished, workers_now):
                    cnn = client.submit(cnn_task, store, pending, weights, cfg, resources=resources, pure=False,
                                        priority=CNN_PRIORITY, key=f"cnn-{uuid4().hex}")
                    batch_of[cnn] = pending
                    queue.add(cnn)
                    pending = []
            elif future.status == "error":
                message = _error(future)
                for subject, a, b in batch_of[future]:
                    failed.append((subject, f"{a}->{b}", "cnn_failed", message))
                    _record_failure(report, store, subject, a, b, "cnn_failed", message, future)
                    tqdm.write(f"run: sub-{subject} {a}->{b} failed in the CNN: {message}")
                bars[2].update(len(batch_of[future]))
            else:
                for subject, a, b, status, message in future.result():
                    if status == "ok":
                        done += 1
                    else:
                        failed.append((subject, f"{a}->{b}", status, message))
                        _record_failure(report, store, subject, a, b, status, message)
                        tqdm.write(f"run: sub-{subject} {a}->{b} failed in the CNN: {message}")
                    bars[2].update(1)
        for bar in bars:
            bar.close()
        report.finish(done)
        clear_staging(store)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return RunSummary(len(states), done, skipped, failed, stale, report.key)
