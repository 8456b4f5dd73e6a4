"""The on-disk layout of an msnl store, in one place.

    STORE/                      Zarr v3 root group (attrs: msnl_store_version)
      scans/<subject>/<visit>/  one OME-NGFF 0.5 image group per scan; array "0" holds the voxels
      cohort/                   the cohort table (subjects x visits), written by xarray
      reports/ingest-<time>/    one group per ingest run; its attributes hold the report
      reports/run-<time>/       one group per `msnl run`: the intervals it took on (or found
                                done after an earlier run failed them) in its attributes, and
                                in failures.jsonl, one JSON line per interval that failed in a
                                task (no result in the store says so)
      .staging/                 work in progress; never read; ingest and run clear leftovers over an
                                hour old, and the folder itself once it is empty

A scan is written under `.staging/` and renamed into place, so a reader (or a re-run after a
crash) sees either the whole scan or nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import zarr
from zarr.errors import ContainsGroupError

from msnl.errors import StoreError

STORE_VERSION = 1
SCANS = "scans"
COHORT = "cohort"
REPORTS = "reports"
STAGING = ".staging"
_RACE_ATTEMPTS = 20  # tries when other writers keep changing the same path


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
    version = root.attrs["msnl_store_version"]
    if isinstance(version, int) and version > STORE_VERSION:
        raise StoreError(
            f"{path}: written by a newer msnl (store version {version!r}; this msnl reads version "
            f"{STORE_VERSION}), whose layout this one could misread or damage. Upgrade msnl on this machine."
        )
    return root


def group_attrs(path: Path) -> dict[str, Any] | None:
    """A group's attributes straight from its zarr.json, or None when it isn't there (yet, or
    this instant, while a writer replaces it): a fraction of opening the group, which counts
    when a dashboard reads thousands of them."""
    try:
        return dict(json.loads((path / "zarr.json").read_text()).get("attributes", {}))
    except FileNotFoundError:
        return None


def write_group_json(path: Path, attrs: dict[str, Any]) -> None:
    """Make a Zarr v3 group at `path` holding `attrs`, its zarr.json written directly: with a
    large set of attributes (a run report listing thousands of intervals) zarr's own writer
    takes ten times as long."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))


def replace_group_attrs(store: str | Path, key: str, attrs: dict[str, Any]) -> None:
    """Replace the attributes of the group at `key` in one rename of its zarr.json, leaving the
    rest of the group (a run report's failure log) in place: a reader sees the old attributes
    or the new ones."""
    staged = new_staging_dir(store)
    write_group_json(staged, attrs)
    os.replace(staged / "zarr.json", store_path(store) / key / "zarr.json")
    staged.rmdir()


def scan_key(subject: str, visit: str) -> str:
    return f"{SCANS}/{subject}/{visit}"


def new_staging_dir(store: str | Path) -> Path:
    """A new empty folder under `.staging/`, for one write to fill and publish."""
    for _ in range(_RACE_ATTEMPTS):
        staging = store_path(store) / STAGING / uuid.uuid4().hex
        try:
            staging.mkdir(parents=True)
        except FileNotFoundError:  # a finishing command removed the empty `.staging/` meanwhile
            continue
        return staging
    raise StoreError(f"{store_path(store) / STAGING}: could not make a staging folder; it kept disappearing")


# Staged work untouched this long is a crashed run's leftover. Younger entries may belong to
# tasks still running, for example those of a killed client that the cluster finishes anyway.
STALE_STAGING_S = 3600.0


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except FileNotFoundError:
                pass
    return newest


def clear_staging(store: str | Path, older_than_s: float = STALE_STAGING_S) -> None:
    """Drop what crashed runs left half-written, once it is `older_than_s` old, and `.staging/`
    itself once it is empty: Zarr warns about any folder in a store that is not a node."""
    staging = store_path(store) / STAGING
    if not staging.is_dir():
        return
    now = time.time()
    for entry in staging.iterdir():
        try:
            stale = now - _newest_mtime(entry) > older_than_s
        except FileNotFoundError:  # published or cleared meanwhile
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
    try:
        staging.rmdir()
    except OSError:  # another writer's work is in it, or another command removed it first
        pass


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

    Two tasks may publish the same key at once (a killed client's task that the cluster still
    runs, and its re-run): results are keyed by their inputs, so either copy is right, and the
    last one to land stays.
    """
    root = store_path(store)
    target = root / key
    if not (staged / "zarr.json").exists():
        raise StoreError(f"{staged}: staged result is incomplete (its group metadata is missing); not publishing {key}")
    _ensure_parent_groups(root, key)
    for _ in range(_RACE_ATTEMPTS):
        retired = new_staging_dir(store)
        try:
            target.rename(retired)
        except FileNotFoundError:  # nothing there, or another writer moved it first
            pass
        try:
            staged.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # another writer published in between: move theirs aside and try again
        finally:
            shutil.rmtree(retired, ignore_errors=True)
        return
    raise StoreError(f"{root / key}: could not publish after {_RACE_ATTEMPTS} attempts; other writers kept replacing it")
