"""Worker and thread counts start from the CPUs a job may use (its affinity on a cluster
node), not from every core of the node."""

from __future__ import annotations

import os

import dask.system
import torch

from msnl.config import CNNConfig
from pipelines.threads import default_workers, process_options, usable_cpus
from pipelines.train import train_and_save
from tests.test_cnn import _toy_set


def _allocate(monkeypatch, cpus: int) -> None:
    """A cluster job given `cpus` CPUs of a 64-core node."""
    monkeypatch.setattr(dask.system, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)


def test_a_jobs_allocation_sets_the_worker_count_not_the_nodes_cores(monkeypatch):
    _allocate(monkeypatch, 4)
    assert usable_cpus() == 4
    assert [default_workers(n) for n in (0, 1, 3, 44)] == [1, 1, 3, 4]


def test_simulation_and_step_one_run_one_process_per_cpu_the_job_has(monkeypatch):
    _allocate(monkeypatch, 4)
    assert process_options(10, None) == {"scheduler": "processes", "num_workers": 4, "chunksize": 1}
    assert process_options(3, None)["num_workers"] == 3
    assert process_options(10, 2)["num_workers"] == 2
    _allocate(monkeypatch, 1)
    assert process_options(10, None) == {"scheduler": "sync"}
    assert process_options(1, 8) == {"scheduler": "sync"}


def test_training_uses_no_more_torch_threads_than_the_job_has(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        _allocate(monkeypatch, 1)
        cfg = CNNConfig(widths=(4, 4, 4, 4, 4, 4), epochs=1, batch_size=8, patches_per_epoch=16)
        train_and_save(_toy_set(), tmp_path / "w.pt", cfg, seed=0, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
