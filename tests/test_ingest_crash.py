"""Kill an ingest halfway with SIGKILL, run it again: the store is complete and correct."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import zarr

N_SCANS = 16


def _complete_scans(store: Path) -> int:
    return len(list(store.glob("scans/*/*/zarr.json")))


def test_sigkill_then_rerun_gives_a_complete_correct_store(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "bids"
    for s in range(N_SCANS // 2):
        for v in (1, 2):
            anat = root / f"sub-{s:02d}" / f"ses-{v}" / "anat"
            anat.mkdir(parents=True)
            # noise compresses badly, so each scan takes a moment to ingest
            data = rng.normal(500, 100, (128, 128, 40)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0])), anat / f"sub-{s:02d}_ses-{v}_FLAIR.nii.gz")
    store = tmp_path / "store.zarr"
    cmd = [sys.executable, "-m", "pipelines.cli", "ingest", "-q", "--workers", "1", str(root), str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _complete_scans(store) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _complete_scans(store)
    assert 2 <= done_at_kill < N_SCANS, f"the kill should land mid-run, found {done_at_kill} scans"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_at_kill} unchanged" in rerun.stdout, rerun.stdout
    assert _complete_scans(store) == N_SCANS
    # The killed run's staged scan stays (at most one per worker, plus a replaced one being
    # retired) until it is an hour old: on a cluster, such a task may still be running. With
    # none left, the rerun removed the empty folder.
    staging = store / ".staging"
    leftovers = list(staging.iterdir()) if staging.exists() else []
    assert len(leftovers) <= 2
    two_hours_ago = time.time() - 7200
    for entry in leftovers:
        for path in [entry, *entry.rglob("*")]:
            os.utime(path, (two_hours_ago, two_hours_ago))
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert not staging.exists()
    for path in root.glob("sub-*/ses-*/anat/*.nii.gz"):
        subject, visit = path.parts[-4][4:], path.parts[-3][4:]
        stored = zarr.open_group(store / "scans" / subject / visit, mode="r")["0"][...]
        np.testing.assert_array_equal(stored, np.asarray(nib.load(path).dataobj))
