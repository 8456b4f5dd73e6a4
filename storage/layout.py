"""The on-disk layout of an msnl store, in one place.

    STORE/                      Zarr v3 root group (attrs: msnl_store_version)
      scans/<subject>/<visit>/  one OME-NGFF 0.5 image group per scan; array "0" holds the voxels
      cohort/                   the cohort table (subjects x visits), written by xarray
      reports/ingest-<time>/    one group per ingest run; its attributes hold the report
      .staging/                 work in progress; never read, emptied at the start of a run

A scan is written under `.staging/` and renamed into place, so a reader (or a re-run after a
crash) sees either the whole scan or nothing.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import zarr
from zarr.errors import ContainsGroupError

from msnl.errors import StoreError

STORE_VERSION = 1
SCANS = "scans"
COHORT = "cohort"
REPORTS = "reports"
STAGING = ".staging"


def store_path(store: str | Path) -> Path:
    """The store as a local path. Object stores (s3://, gs://) aren't supported yet."""
    text = str(store)
    if "://" in text:
        raise StoreError(
            f"{text}: only stores on a local or shared (POSIX) file system are supported, since "
            "atomic renames keep partly written scans out of sight. Use a path on a shared disk."
        )
    return Path(text)


def open_root(store: str | Path, *, create: bool = False) -> zarr.Group:
    """The store's root group; with `create`, make the store if it doesn't exist."""
    path = store_path(store)
    if not (path / "zarr.json").exists():
        if not create:
            raise StoreError(
                f"{path}: no msnl store here. Create one with `msnl ingest SOURCE {path}`."
            )
        path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(path, mode="a", zarr_format=3)
        root.attrs.update({"msnl_store_version": STORE_VERSION})
        for name in (SCANS, REPORTS):
            root.require_group(name)
        return root
    root = zarr.open_group(path, mode="r+" if create else "r", zarr_format=3)
    if "msnl_store_version" not in root.attrs:
        raise StoreError(f"{path}: a Zarr store, but not one msnl wrote (no msnl_store_version).")
    return root


def scan_key(subject: str, visit: str) -> str:
    return f"{SCANS}/{subject}/{visit}"


def new_staging_dir(store: str | Path) -> Path:
    staging = store_path(store) / STAGING / uuid.uuid4().hex
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def clear_staging(store: str | Path) -> None:
    """Drop what a crashed run left half-written. Run once, before any worker starts writing."""
    shutil.rmtree(store_path(store) / STAGING, ignore_errors=True)


def _ensure_parent_groups(root: Path, key: str) -> None:
    """Make every group above `key`, tolerating another worker making the same one."""
    parts = key.split("/")[:-1]
    group = zarr.open_group(root, mode="r+", zarr_format=3)
    for depth in range(1, len(parts) + 1):
        try:
            group.require_group("/".join(parts[:depth]))
        except ContainsGroupError:
            pass


def publish(store: str | Path, staged: Path, key: str) -> None:
    """Move a fully written group from staging to `key`, replacing what was there.

    Each rename is atomic on a POSIX file system; a reader sees the old group, briefly nothing,
    or the new group, never a partial one.
    """
    root = store_path(store)
    target = root / key
    _ensure_parent_groups(root, key)
    retired = None
    if target.exists():
        retired = new_staging_dir(store)
        target.rename(retired)
    staged.rename(target)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
