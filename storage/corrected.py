"""Per-visit N4-corrected scans, so a visit shared by two intervals is corrected once.

    corrected/<subject>/<visit>/
        attrs   result_key (the scan's SHA-256, the N4 settings, the ANTs version), affine
        n4      float32, the bias-corrected scan on its own grid

A stale or missing entry is simply recomputed by `storage.pairs.process_pair`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import zarr

from msnl.config import StepOneConfig
from msnl.errors import MsnlError
from msnl.scan import Scan
from msnl.step_one import StageTimer, correct_visit, software_versions
from storage.layout import new_staging_dir, open_root, publish, store_path
from storage.scans import read_scan, stored_scan_attrs, write_array

CORRECTED = "corrected"


def corrected_key(subject: str, visit: str) -> str:
    return f"{CORRECTED}/{subject}/{visit}"


def _result_key(sha256: str, cfg: StepOneConfig) -> str:
    payload = {"scan": sha256, "n4_shrink_factor": cfg.n4_shrink_factor, "antspyx": software_versions()["antspyx"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_corrected(store: str | Path, subject: str, visit: str, cfg: StepOneConfig) -> Scan | None:
    """The stored N4-corrected scan, or None when missing or made from other inputs/settings."""
    scan_attrs = stored_scan_attrs(store, subject, visit)
    path = store_path(store) / corrected_key(subject, visit)
    if scan_attrs is None or not (path / "zarr.json").exists():
        return None
    group = zarr.open_group(path, mode="r", zarr_format=3)
    if group.attrs.get("result_key") != _result_key(scan_attrs["sha256"], cfg):
        return None
    return Scan(np.asarray(group["n4"][...]), np.asarray(group.attrs["affine"]))


def correct_stored_visit(store: str | Path, subject: str, visit: str, cfg: StepOneConfig | None = None,
                         timer: StageTimer | None = None) -> tuple[str, str]:
    """N4 of one stored visit, written atomically; ("skipped", "") when already there.

    Returns ("failed", message) for a scan N4 can't handle, never raises for one.
    """
    cfg = cfg or StepOneConfig()
    if read_corrected(store, subject, visit, cfg) is not None:
        return "skipped", ""
    scan_attrs = stored_scan_attrs(store, subject, visit)
    if scan_attrs is None:
        return "failed", f"{store_path(store)}: no stored scan for sub-{subject} visit {visit}"
    timer = timer or StageTimer()
    try:
        corrected = correct_visit(read_scan(store, subject, visit), cfg, timer)
    except (MsnlError, RuntimeError, ValueError) as exc:  # ITK reports bad images as RuntimeError
        return "failed", f"N4 of sub-{subject} visit {visit} failed: {exc}"
    open_root(store, create=True)
    staged_path = new_staging_dir(store)
    group = zarr.open_group(staged_path, mode="w", zarr_format=3)
    write_array(group, "n4", corrected.data.astype(np.float32))
    group.attrs.update({"subject": subject, "visit": visit, "result_key": _result_key(scan_attrs["sha256"], cfg),
                        "affine": np.asarray(corrected.affine).tolist(), "timings": timer.seconds})
    publish(store, staged_path, corrected_key(subject, visit))
    return "ok", ""
