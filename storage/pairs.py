"""Step-one results in the store, one group per visit pair, written atomically.

    pairs/<subject>/<from-visit>/<to-visit>/
        attrs      status, message, QC figures, config, software versions, input SHA-256s,
                   result_key, visit 2's affine, registration matrix, stage timings
        brain      uint8, the intersected brain mask on visit 2's grid
        flair1     float32, visit 1 after N4, registration and histogram matching
        flair2     float32, visit 2 after N4
        levels1/2  uint8, the grey levels (1..6 in the brain, 0 outside)
        candidates int32, candidate labels (0 = none)
        table      the candidates table, one row per candidate (storage.tables)
        patches    float32, every patch raveled and concatenated; `table.patch_offset` and the
                   bounding box in `table` locate each one (channels: msnl.candidates.PATCH_CHANNELS)

The group is keyed by `result_key`: the SHA-256 of both scans' SHA-256, the config and the
software versions. Running again with the same key does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from msnl.candidates import PATCH_CHANNELS, extract_patches, widen_boxes, with_flair_channels
from msnl.config import StepOneConfig
from msnl.distance_maps import distance_maps
from msnl.errors import MsnlError, QualityControlError, StoreError
from msnl.preprocess import continuous_flairs
from msnl.scan import LabelMap, Scan
from msnl.step_one import StageTimer, StepOneResult, correct_visit, run_step_one_corrected, software_versions
from storage.corrected import read_corrected
from storage.layout import group_attrs, new_staging_dir, open_root, publish, store_path
from storage.scans import read_scan, stored_scan_attrs, write_array
from storage.tables import read_table, write_table

log = logging.getLogger(__name__)

PAIRS = "pairs"


def pair_key(subject: str, from_visit: str, to_visit: str) -> str:
    return f"{PAIRS}/{subject}/{from_visit}/{to_visit}"


def result_key(sha1: str, sha2: str, cfg: StepOneConfig, versions: dict[str, str]) -> str:
    payload = json.dumps({"scans": [sha1, sha2], "config": cfg.digest(), "versions": versions}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class PairOutcome:
    subject: str
    from_visit: str
    to_visit: str
    status: str  # "ok", "skipped" (already done), or a failure code
    message: str = ""
    n_candidates: int | None = None


def _with_offsets(table: pd.DataFrame, offsets: np.ndarray) -> pd.DataFrame:
    return table.assign(patch_offset=offsets[:-1].astype(np.int64))


def _attrs(subject, v1, v2, status, message, key, cfg, versions, extra) -> dict[str, Any]:
    return {
        "subject": subject, "from_visit": v1, "to_visit": v2, "status": status, "message": message,
        "result_key": key, "config": cfg.to_dict(), "config_digest": cfg.digest(), "versions": versions, **extra,
    }


def _write_result(staged: zarr.Group, result: StepOneResult) -> np.ndarray:
    """Write the arrays; returns the patch offsets into the flat `patches` array."""
    for name, data in (
        ("brain", result.brain.data.astype(np.uint8)),
        ("flair1", result.flair1.data.astype(np.float32)),
        ("flair2", result.flair2.data.astype(np.float32)),
        ("levels1", result.levels1),
        ("levels2", result.levels2),
        ("candidates", result.candidates.labels.data.astype(np.int32)),
    ):
        write_array(staged, name, data)
    flat = [p.ravel() for p in result.patches]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int64)
    write_array(staged, "patches", np.concatenate(flat) if flat else np.zeros(0, np.float32))
    return offsets


def _corrected(store: str | Path, subject: str, visit: str, cfg: StepOneConfig, timer: StageTimer) -> Scan:
    """The visit after N4: from `corrected/` when a per-visit task already made it."""
    stored = read_corrected(store, subject, visit, cfg)
    return stored if stored is not None else correct_visit(read_scan(store, subject, visit), cfg, timer)


def process_pair(store: str | Path, subject: str, from_visit: str, to_visit: str,
                 cfg: StepOneConfig | None = None, timer: StageTimer | None = None) -> PairOutcome:
    """Run step one on a stored visit pair and store the result; a no-op when already done.

    A bad scan or a failed QC is stored as the pair's status and message, never raised.
    """
    cfg = cfg or StepOneConfig()
    timer = timer or StageTimer()
    attrs1 = stored_scan_attrs(store, subject, from_visit)
    attrs2 = stored_scan_attrs(store, subject, to_visit)
    missing = [v for v, a in ((from_visit, attrs1), (to_visit, attrs2)) if a is None]
    if missing:
        raise StoreError(f"{store_path(store)}: subject {subject} has no stored scan for visit(s) {', '.join(missing)}; ingest them first.")
    versions = software_versions()
    key = result_key(attrs1["sha256"], attrs2["sha256"], cfg, versions)
    existing = read_pair_attrs(store, subject, from_visit, to_visit)
    if existing is not None and existing.get("result_key") == key:
        if existing.get("status") != "ok":  # done, and failed: the failure stands until the inputs change
            return PairOutcome(subject, from_visit, to_visit, existing.get("status", "failed"), existing.get("message", ""))
        return PairOutcome(subject, from_visit, to_visit, "skipped", "already done", existing.get("n_candidates"))
    open_root(store, create=True)
    staged_path = new_staging_dir(store)
    staged = zarr.open_group(staged_path, mode="w", zarr_format=3)
    extra = {"sha256": [attrs1["sha256"], attrs2["sha256"]], "affine": attrs2["affine"]}
    try:
        v1, v2 = (_corrected(store, subject, visit, cfg, timer) for visit in (from_visit, to_visit))
        result = run_step_one_corrected(v1, v2, cfg, timer)
    except QualityControlError as exc:
        staged.attrs.update(_attrs(subject, from_visit, to_visit, exc.status, str(exc), key, cfg, versions, {**extra, "qc": exc.figures}))
        publish(store, staged_path, pair_key(subject, from_visit, to_visit))
        return PairOutcome(subject, from_visit, to_visit, exc.status, str(exc))
    except MsnlError as exc:
        staged.attrs.update(_attrs(subject, from_visit, to_visit, "failed", str(exc), key, cfg, versions, extra))
        publish(store, staged_path, pair_key(subject, from_visit, to_visit))
        return PairOutcome(subject, from_visit, to_visit, "failed", str(exc))
    offsets = _write_result(staged, result)
    n = len(result.table)
    extra.update(qc=result.qc, n_candidates=n, registration_matrix=result.registration_matrix.tolist(),
                 timings=timer.seconds, timing_owner=timer.owner)
    staged.attrs.update(_attrs(subject, from_visit, to_visit, "ok", "", key, cfg, versions, extra))
    write_table(staged, "table", _with_offsets(result.table, offsets), {"patch_channels": list(PATCH_CHANNELS)})
    publish(store, staged_path, pair_key(subject, from_visit, to_visit))
    return PairOutcome(subject, from_visit, to_visit, "ok", "", n)


def read_pair_attrs(store: str | Path, subject: str, from_visit: str, to_visit: str) -> dict[str, Any] | None:
    """The step-one result's attributes (its status, config, timings); None when the interval
    has none, or while a re-run replaces it this instant."""
    return group_attrs(store_path(store) / pair_key(subject, from_visit, to_visit))


def read_candidate_table(store: str | Path, subject: str, from_visit: str, to_visit: str) -> pd.DataFrame:
    """The candidates table of a processed pair (one row per candidate, with its box), without
    the patches."""
    path = store_path(store) / pair_key(subject, from_visit, to_visit)
    attrs = read_pair_attrs(store, subject, from_visit, to_visit)
    if attrs is None or attrs.get("status") != "ok":
        raise StoreError(f"{path}: no step-one result ({'missing' if attrs is None else attrs.get('status')}).")
    return read_table(path / "table")


def read_candidates(store: str | Path, subject: str, from_visit: str, to_visit: str,
                    *, flair_input: str, context_voxels: int = 0) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The candidates table and the patch arrays (channels x bounding box) of a processed pair.
    `flair_input` is the CNN's (CNNConfig.flair_input), never assumed: with "intensities" the
    FLAIR channels hold the stored FLAIRs in continuous grey-level units, with "grey_levels"
    step one's grey levels. `context_voxels` (CNNConfig.context_voxels) grows every box by that
    many voxels on each side and crops the patches again from the stored images."""
    if flair_input not in ("grey_levels", "intensities"):
        raise StoreError(f"flair_input must be 'grey_levels' or 'intensities', got {flair_input!r}")
    table = read_candidate_table(store, subject, from_visit, to_visit)
    path = store_path(store) / pair_key(subject, from_visit, to_visit)
    attrs = read_pair_attrs(store, subject, from_visit, to_visit)
    if context_voxels:
        brain = LabelMap(read_pair_array(store, subject, from_visit, to_visit, "brain") > 0, np.asarray(attrs["affine"]))
        table = widen_boxes(table, context_voxels, brain.shape)
        levels = (read_pair_array(store, subject, from_visit, to_visit, name) for name in ("levels1", "levels2"))
        patches = extract_patches(table, *levels, distance_maps(brain))
    else:
        flat = np.asarray(zarr.open_group(path, mode="r", zarr_format=3)["patches"][...])
        patches = []
        for row in table.itertuples():
            shape = (len(PATCH_CHANNELS), row.hi_i - row.lo_i, row.hi_j - row.lo_j, row.hi_k - row.lo_k)
            patches.append(flat[row.patch_offset: row.patch_offset + int(np.prod(shape))].reshape(shape))
    if flair_input == "intensities":
        patches = with_flair_channels(table, patches, *_continuous_flairs(store, subject, from_visit, to_visit, attrs))
    return table, patches


def _continuous_flairs(store: str | Path, subject: str, from_visit: str, to_visit: str, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both stored FLAIRs in continuous grey-level units, with the edges step one used."""
    cfg = StepOneConfig.from_dict(attrs["config"])
    brain = read_pair_array(store, subject, from_visit, to_visit, "brain") > 0
    try:
        flair1, flair2 = (read_pair_array(store, subject, from_visit, to_visit, name) for name in ("flair1", "flair2"))
    except KeyError:
        raise StoreError(f"{store_path(store) / pair_key(subject, from_visit, to_visit)}: the step-one result has no "
                         "stored FLAIRs (flair1, flair2), which weights trained with flair_input=intensities read. "
                         "Copy the whole pair group, or use weights trained on grey levels.") from None
    affine = np.asarray(attrs["affine"])
    return continuous_flairs(Scan(flair1, affine), Scan(flair2, affine), LabelMap(brain, affine),
                             cfg.grey_levels, cfg.grey_level_percentile)


def read_pair_array(store: str | Path, subject: str, from_visit: str, to_visit: str, name: str) -> np.ndarray:
    path = store_path(store) / pair_key(subject, from_visit, to_visit)
    return np.asarray(zarr.open_group(path, mode="r", zarr_format=3)[name][...])
