"""The cohort pipeline's scaling: 2 workers against 1, a no-op re-run, overhead, memory.

    .venv/bin/python benchmarks/cohort.py [--subjects 4] [--visits 2] [--real ../shared/data/lesjak-longitudinal] [--no-single]

On a simulated cohort (`msnl simulate`, seed 7), runs `msnl run` with 1, then 2 local
workers, each into a fresh store, and reports for each: wall time, the time spent inside
the kernels (N4, the rest of step one, the CNN; read back from the results' own timings),
the share of the wall time x workers spent outside them, and the peak memory of each worker
process. Dask's task stream splits the time outside the kernels in two: workers waiting
with nothing ready (gaps over a second between a worker's tasks, and its end tail) and the
rest (ingest before the first task, the short gaps of scheduling latency, and the time
inside tasks but outside the kernels: I/O and serialisation). Then re-runs the
2-worker store (a no-op) and times it. With --real, the same on the real Lesjak pairs,
through a CSV manifest, for the peak memory on real pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path


def kernel_seconds(store: Path) -> dict[str, float]:
    """Seconds inside the kernels, from the timings every result stores."""
    totals = {"n4": 0.0, "step_one_rest": 0.0, "cnn": 0.0}
    for meta in store.glob("corrected/*/*/zarr.json"):
        totals["n4"] += sum(json.loads(meta.read_text())["attributes"].get("timings", {}).values())
    for meta in store.glob("pairs/*/*/*/zarr.json"):
        timings = json.loads(meta.read_text())["attributes"].get("timings", {})
        totals["n4"] += timings.get("n4", 0.0)
        totals["step_one_rest"] += sum(v for k, v in timings.items() if k != "n4")
    for meta in store.glob("predictions/*/*/*/zarr.json"):
        totals["cnn"] += json.loads(meta.read_text())["attributes"].get("timings", {}).get("cnn", 0.0)
    return totals


def _peak_rss_mib() -> tuple[float, float]:
    """A worker's own peak RSS, and that of the largest child process it ran (N4 and step
    one run in children: pipelines/isolate.py)."""
    return tuple(resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


SCHEDULING_GAP_S = 1.0  # a gap between two tasks on a worker up to this long is scheduling latency


def idle_seconds(tasks: list[dict], start: float, end: float) -> tuple[float, float]:
    """Seconds, summed over workers, a worker had no task, split in two: waits (gaps over
    SCHEDULING_GAP_S between its tasks, and its end tail: nothing was ready for it, because
    of the graph's shape) and everything else that isn't inside a task (the time before the
    first task, for ingest and submission, and the short gaps of scheduling latency)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for task in tasks:
        for ss in task.get("startstops", ()):
            if ss["action"] == "compute":
                spans.setdefault(task["worker"], []).append((ss["start"], ss["stop"]))
    waiting = other = 0.0
    for worker_spans in spans.values():
        worker_spans.sort()
        other += max(0.0, worker_spans[0][0] - start)
        last = worker_spans[0][1]
        for begin, stop in worker_spans[1:]:
            gap = max(0.0, begin - last)
            if gap > SCHEDULING_GAP_S:
                waiting += gap
            else:
                other += gap
            last = max(last, stop)
        waiting += max(0.0, end - last)
    return waiting, other


def run_once(source: Path, store: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster, get_task_stream

    from pipelines.run import run_cohort
    from pipelines.threads import thread_env

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=thread_env(1),
                      preload=["pipelines.worker"], dashboard_address=None, memory_limit="6GiB") as cluster:
        with Client(cluster, set_as_default=False) as client, get_task_stream(client=client) as stream:
            started, start = time.perf_counter(), time.time()
            summary = run_cohort(source, store, scheduler=cluster.scheduler_address, progress=False)
            wall = time.perf_counter() - started
            end = time.time()
            peaks = sorted(client.run(_peak_rss_mib).values())
    kernels = kernel_seconds(store)
    busy = sum(kernels.values())
    waiting, _ = idle_seconds(stream.data, start, end)
    return {"workers": workers, "intervals": summary.intervals, "done": summary.done, "failed": len(summary.failed),
            "wall_s": wall, "kernel_s": kernels, "outside_share": 1 - busy / (wall * workers),
            "waiting_s": waiting, "overhead_share": 1 - (busy + waiting) / (wall * workers), "peak_mib": peaks}


def report(label: str, r: dict) -> None:
    k = r["kernel_s"]
    print(f"{label}: {r['workers']} worker(s), {r['done']}/{r['intervals']} intervals ({r['failed']} failed) in {r['wall_s']:.1f} s; "
          f"kernels {sum(k.values()):.1f} s (N4 {k['n4']:.1f}, rest of step one {k['step_one_rest']:.1f}, CNN {k['cnn']:.1f}); "
          f"outside the kernels {r['outside_share']:.1%} of wall x workers, of which workers waiting with nothing ready "
          f"{r['waiting_s']:.1f} s and the rest (ingest, scheduling, I/O, serialisation) {r['overhead_share']:.1%}; "
          f"peak memory per worker (its own / its largest child) "
          + ", ".join(f"{own:.0f} / {child:.0f} MiB" for own, child in r["peak_mib"]))


def real_manifest(real: Path, out: Path) -> Path:
    """A CSV manifest over the Lesjak pairs (patientNN/study1_FLAIR.nii.gz, study2_...)."""
    rows = [{"subject": patient.name, "visit": f"0{n}", "path": str((patient / f"study{n}_FLAIR.nii.gz").resolve()),
             "acquired_on": f"201{n}-01-01"}
            for patient in sorted(real.glob("patient*")) for n in (1, 2)]
    manifest = out / "real.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "visit", "path", "acquired_on"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--visits", type=int, default=2)
    parser.add_argument("--real", type=Path, default=None, help="a folder of real pairs in the Lesjak form")
    parser.add_argument("--no-single", action="store_true", help="skip the 1-worker run (and the speed-up)")
    args = parser.parse_args()

    from msnl.simulate import SimOptions
    from pipelines.simulate import run_simulate

    work = Path(tempfile.mkdtemp(prefix="msnl-cohort-bench-"))
    try:
        source = run_simulate(work / "bids", args.subjects, args.visits, 7, SimOptions(), progress=False)
        one = None if args.no_single else run_once(source, work / "one.zarr", 1)
        if one:
            report("simulated", one)
        two = run_once(source, work / "two.zarr", 2)
        report("simulated", two)
        if one:
            print(f"speed-up, 2 workers against 1: {one['wall_s'] / two['wall_s']:.2f}x")
        rerun = run_once(source, work / "two.zarr", 2)
        print(f"no-op re-run of the {rerun['intervals']}-interval store: {rerun['wall_s']:.2f} s (cluster start not included)")
        if args.real:
            report("real pairs", run_once(real_manifest(args.real, work), work / "real.zarr", 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
