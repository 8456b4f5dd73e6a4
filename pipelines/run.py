"""`msnl run`: the cohort pipeline on a Dask cluster.

Ingest (incremental), then per interval a step-one task that carries store keys only, then
CNN tasks that each take the patches of several intervals. CNN tasks ask for a GPU resource
when the cluster has workers that advertise one. Every result is keyed by its inputs, config
and weights, so a re-run skips what is done and a crash loses only the tasks in flight.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

from msnl.config import StepOneConfig
from pipelines.ingest import run_ingest
from pipelines.threads import thread_env
from storage.pairs import process_pair, read_candidates, read_pair_array, read_pair_attrs
from storage.results import intervals, read_prediction_attrs, write_prediction

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunSummary:
    intervals: int
    done: int
    skipped: int
    failed: list[tuple[str, str, str, str]]  # subject, interval, status, message


def _prediction_key(step_one_key: str, weights_digest: str) -> str:
    import hashlib

    return hashlib.sha256(f"{step_one_key}:{weights_digest}".encode()).hexdigest()


def step_one_task(store: str, subject: str, a: str, b: str, cfg: StepOneConfig) -> tuple[str, str, str, str, str]:
    outcome = process_pair(store, subject, a, b, cfg)
    return subject, a, b, outcome.status, outcome.message


_MODEL_CACHE: dict[str, tuple] = {}


def cnn_task(store: str, batch: list[tuple[str, str, str]], weights: str | None, step_one: StepOneConfig) -> list[tuple[str, str, str, str, str]]:
    """Step two for a batch of intervals; the model is loaded once per worker."""
    import torch

    from msnl.inference import load_weights, weights_digest
    from msnl.scan import LabelMap
    from msnl.step_two import run_step_two

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache_key = f"{weights}:{device}"
    if cache_key not in _MODEL_CACHE:
        model, cfg, _ = load_weights(weights, device)
        _MODEL_CACHE[cache_key] = (model, cfg, weights_digest(weights))
    model, cfg, digest = _MODEL_CACHE[cache_key]
    done = []
    for subject, a, b in batch:
        attrs = read_pair_attrs(store, subject, a, b)
        key = _prediction_key(attrs["result_key"], digest)
        table, patches = read_candidates(store, subject, a, b)
        brain = read_pair_array(store, subject, a, b, "brain")
        grid = LabelMap(brain > 0, np.asarray(attrs["affine"]))
        seg = run_step_two(table, patches, grid, model, cfg, step_one, device)
        write_prediction(store, subject, a, b, key, seg.mask.data, seg.lesions, {
            "status": "ok", "message": "", "weights_digest": digest, "device": str(device),
            "new_lesion_count": int(len(seg.lesions)),
            "new_lesion_volume_mm3": float(seg.lesions.volume_mm3.sum()) if len(seg.lesions) else 0.0,
        })
        done.append((subject, a, b, "ok", ""))
    return done


def _is_done(store: str, subject: str, a: str, b: str, digest: str) -> bool:
    attrs = read_pair_attrs(store, subject, a, b)
    pred = read_prediction_attrs(store, subject, a, b)
    return bool(attrs and pred and attrs.get("status") == "ok" and pred.get("result_key") == _prediction_key(attrs["result_key"], digest))


def run_cohort(source: str | Path, store: str | Path, *, scheduler: str | None = None, workers: int | None = None,
               weights: str | None = None, cfg: StepOneConfig | None = None, progress: bool = True) -> RunSummary:
    from msnl.inference import weights_digest

    cfg = cfg or StepOneConfig()
    store = str(store)
    summary = run_ingest(source, store, progress=progress)
    todo_all = intervals(store)
    digest = weights_digest(weights)
    todo = [t for t in todo_all if not _is_done(store, *t, digest)]
    skipped = len(todo_all) - len(todo)
    failed = [(e["subject"] or "?", e["visit"] or "?", "ingest_failed", e["message"]) for e in summary.entries if e["status"] == "failed"]
    if progress:
        print(f"run: {len(todo_all)} intervals, {skipped} already done, {len(todo)} to process")
    if not todo:
        return RunSummary(len(todo_all), 0, skipped, failed)
    cluster = None
    if scheduler is None:
        n = workers or max(1, min(os.cpu_count() or 1, len(todo)))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=thread_env(1),
                               dashboard_address=None, memory_limit="6GiB")
    client = Client(scheduler or cluster)
    try:
        has_gpu = any("GPU" in w.get("resources", {}) for w in client.scheduler_info()["workers"].values())
        cnn_resources = {"GPU": 1} if has_gpu else None
        futures = [client.submit(step_one_task, store, s, a, b, cfg, pure=False, key=f"step-one-{s}-{a}-{b}") for s, a, b in todo]
        bar1 = tqdm(total=len(futures), desc="step one", unit="interval", disable=not progress)
        bar2 = tqdm(total=len(todo), desc="CNN     ", unit="interval", disable=not progress)
        pending, cnn_futures, done, finished = [], [], 0, 0
        for future in as_completed(futures):
            subject, a, b, status, message = future.result()
            finished += 1
            bar1.update(1)
            if status in ("ok", "skipped"):
                pending.append((subject, a, b))
            else:
                failed.append((subject, f"{a}->{b}", status, message))
                bar2.update(1)
                tqdm.write(f"run: sub-{subject} {a}->{b} failed: {status}: {message}")
            if len(pending) >= 4 or (finished == len(futures) and pending):  # several intervals per CNN task
                cnn_futures.append(client.submit(cnn_task, store, pending, weights, cfg, resources=cnn_resources, pure=False))
                pending = []
        for future in as_completed(cnn_futures):
            finished = future.result()
            done += len(finished)
            bar2.update(len(finished))
        bar1.close()
        bar2.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return RunSummary(len(todo_all), done, skipped, failed)
