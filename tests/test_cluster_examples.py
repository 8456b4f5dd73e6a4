"""The SLURM and Kubernetes examples in docs/examples render into working worker commands."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_job_scripts_start_capped_preloaded_workers():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed")
    example = _load("slurm_cluster")
    cluster = example.make_cluster(partition="short", account="trial42")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p short" in script and "#SBATCH -A trial42" in script
    assert "export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1" in script
    worker_line = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line or "dask worker" in line)
    assert "--preload pipelines.worker" in worker_line and "--nthreads 1" in worker_line
    assert cluster.scheduler_address.split("://")[1].split(":")[0] in worker_line or "tcp://" in worker_line

    gpu = example.gpu_worker_script("tcp://10.0.0.5:8786")
    assert "#SBATCH --gres=gpu:1" in gpu
    command = shlex.split(gpu.strip().splitlines()[-1])
    assert command[1:3] == ["worker", "tcp://10.0.0.5:8786"]
    assert command[command.index("--resources") + 1] == "GPU=1" and "pipelines.worker" in command


def test_helm_values_give_cpu_and_gpu_worker_groups_and_match_the_run_command():
    values = yaml.safe_load((EXAMPLES / "dask-helm-values.yaml").read_text())
    cpu = values["worker"]
    assert cpu["custom_args"][cpu["custom_args"].index("--preload") + 1] == "pipelines.worker"
    assert {e["name"]: e["value"] for e in cpu["env"]}["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
    (gpu,) = values["additional_worker_groups"]
    assert gpu["custom_args"][gpu["custom_args"].index("--resources") + 1] == "GPU=1"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    run_line = next(line for line in (EXAMPLES / "dask-helm-values.yaml").read_text().splitlines() if "msnl run" in line)
    args = build_parser().parse_args(shlex.split(run_line.split("msnl", 1)[1].strip()))
    assert args.command == "run" and args.scheduler == "tcp://msnl-scheduler:8786"
