"""Run a cohort with msnl on SLURM, through dask-jobqueue (`pip install dask-jobqueue`).

    python docs/examples/slurm_cluster.py SOURCE STORE --cpu-jobs 16 --gpu-jobs 1

Each CPU job is one Dask worker with one thread (step one is single-threaded ITK: more
workers beat more threads). GPU jobs start `dask worker --resources GPU=1` against the same
scheduler, so `msnl run` sends its CNN tasks there. STORE must be on a file system every node
sees (atomic renames keep partial results out of sight). `tests/test_cluster_examples.py`
renders these job scripts.
"""

from __future__ import annotations

import argparse
import subprocess

# Thread caps and import path for every worker: see pipelines/worker.py.
WORKER_ARGS = ["--preload", "pipelines.worker"]
THREAD_CAPS = ["export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1", "export OMP_NUM_THREADS=1"]


def make_cluster(venv: str = ".venv", partition: str = "cpu", account: str | None = None):
    """The CPU workers, one SLURM job each; the scheduler runs in this process."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(queue=partition, cores=1, processes=1, memory="4GiB", walltime="04:00:00", account=account,
                        python=f"{venv}/bin/python", job_script_prologue=THREAD_CAPS, worker_extra_args=WORKER_ARGS,
                        job_name="msnl-cpu", scheduler_options={"dashboard_address": ":8787"})


def gpu_worker_script(scheduler_address: str, venv: str = ".venv", partition: str = "gpu") -> str:
    """An sbatch script for one GPU worker on the same scheduler."""
    return "\n".join([
        "#!/usr/bin/env bash",
        "#SBATCH --job-name=msnl-gpu",
        f"#SBATCH --partition={partition}",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --time=04:00:00",
        *THREAD_CAPS,
        f"{venv}/bin/dask worker {scheduler_address} --nthreads 1 --memory-limit 16GiB --resources GPU=1 "
        + " ".join(WORKER_ARGS),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description="Run msnl on SLURM")
    parser.add_argument("source")
    parser.add_argument("store")
    parser.add_argument("--cpu-jobs", type=int, default=16)
    parser.add_argument("--gpu-jobs", type=int, default=1)
    args = parser.parse_args()

    from pipelines.run import run_cohort

    cluster = make_cluster()
    cluster.scale(jobs=args.cpu_jobs)
    for _ in range(args.gpu_jobs):
        subprocess.run(["sbatch"], input=gpu_worker_script(cluster.scheduler_address), text=True, check=True)
    run_cohort(args.source, args.store, scheduler=cluster.scheduler_address)


if __name__ == "__main__":
    main()
