"""Scans in the store: one OME-NGFF 0.5 image group per scan, written atomically.

The voxels are stored exactly as in the NIfTI file (same dtype and shape, NIfTI's i, j, k axis
order), chunked about 64³ and compressed. The group's attributes hold the OME-NGFF
`multiscales` block (scale and translation only) and, under `msnl`, the full header facts that
NGFF can't hold: the 4x4 affine, qform and sform with their codes, scaling, orientation, the
source path and its SHA-256.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from msnl.errors import MsnlError, StoreError
from msnl.nifti import NiftiScan, read_nifti, scaled_voxels, sha256_file
from msnl.scan import Scan
from storage.layout import group_attrs, new_staging_dir, open_root, publish, scan_key, store_path
from storage.manifest import ScanRecord

log = logging.getLogger(__name__)

CHUNK = 64
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
_AXES = ("i", "j", "k")


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one scan: ingested, unchanged (skipped), changed (re-ingested) or failed."""

    subject: str
    visit: str
    path: str
    status: str
    message: str = ""
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ngff_attrs(name: str, nifti: NiftiScan) -> dict[str, Any]:
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in _AXES],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": list(nifti.spacing)},
                            {"type": "translation", "translation": nifti.affine[:3, 3].tolist()},
                        ],
                    }
                ],
            }
        ],
    }


def _msnl_attrs(record: ScanRecord, nifti: NiftiScan) -> dict[str, Any]:
    return {
        "subject": record.subject,
        "visit": record.visit,
        "acquired_on": record.acquired_on,
        "arm": record.arm,
        "site": record.site,
        "source_path": str(Path(record.path).resolve()),
        "sha256": nifti.sha256,
        "affine": nifti.affine.tolist(),
        "affine_source": nifti.affine_source,
        "qform": nifti.qform.tolist(),
        "qform_code": nifti.qform_code,
        "sform": nifti.sform.tolist(),
        "sform_code": nifti.sform_code,
        "scl_slope": nifti.scl_slope,
        "scl_inter": nifti.scl_inter,
        "spacing": list(nifti.spacing),
        "orientation": nifti.orientation,
        "notes": list(nifti.notes),
    }


def stored_scan_attrs(store: str | Path, subject: str, visit: str) -> dict[str, Any] | None:
    """The `msnl` attributes of a stored scan, or None when it isn't in the store."""
    return dict((group_attrs(store_path(store) / scan_key(subject, visit)) or {}).get("msnl", {})) or None


def stored_scan_voxels(store: str | Path, subject: str, visit: str) -> int:
    """Voxel count of a stored scan, from its array metadata alone (0 when it isn't stored)."""
    path = store_path(store) / scan_key(subject, visit) / "0"
    if not (path / "zarr.json").exists():
        return 0
    return int(zarr.open_array(path, mode="r", zarr_format=3).size)


def write_scan(store: str | Path, record: ScanRecord, nifti: NiftiScan) -> None:
    """Write one checked scan into the store; it appears there only once fully written."""
    open_root(store, create=True)
    staged = new_staging_dir(store)
    group = zarr.open_group(staged, mode="w", zarr_format=3)
    group.attrs.update(
        {"ome": _ngff_attrs(f"{record.subject}/{record.visit}", nifti), "msnl": _msnl_attrs(record, nifti)}
    )
    array = group.create_array(
        "0",
        shape=nifti.data.shape,
        dtype=nifti.data.dtype,
        **array_layout(nifti.data.shape),
        compressors=[COMPRESSOR],
        dimension_names=_AXES,
        fill_value=0,
    )
    array[...] = nifti.data
    publish(store, staged, scan_key(record.subject, record.visit))


def ingest_scan(store: str | Path, record: ScanRecord) -> IngestOutcome:
    """Check one scan and write it into the store, unless the same file is already there.

    Never raises for a bad file: the outcome carries the status and the message instead, so
    one bad scan can't stop the others.
    """
    where = str(record.path)
    try:
        previous = stored_scan_attrs(store, record.subject, record.visit)
        if previous is not None and previous.get("sha256") == sha256_file(record.path):
            return IngestOutcome(record.subject, record.visit, where, "unchanged", sha256=previous["sha256"])
        nifti = read_nifti(record.path)
        write_scan(store, record, nifti)
    except MsnlError as exc:
        return IngestOutcome(record.subject, record.visit, where, "failed", str(exc))
    except FileNotFoundError:
        return IngestOutcome(
            record.subject, record.visit, where, "failed", f"{where}: vanished during ingest; run it again."
        )
    except Exception as exc:  # a bug must not stop the other scans; it is logged in full
        log.exception("unexpected error ingesting %s", where)
        return IngestOutcome(
            record.subject, record.visit, where, "failed",
            f"{where}: unexpected {type(exc).__name__}: {exc}. Please report this as an msnl bug.",
        )
    notes = " ".join(nifti.notes)
    if previous is not None:
        message = (
            f"{where}: the file changed since it was ingested (SHA-256 {previous.get('sha256', '?')[:12]} -> "
            f"{nifti.sha256[:12]}); re-ingested. Results computed on the old scan are out of date."
        )
        return IngestOutcome(record.subject, record.visit, where, "changed", f"{message} {notes}".strip(), nifti.sha256)
    return IngestOutcome(record.subject, record.visit, where, "ingested", notes, nifti.sha256)


def _scan_group(store: str | Path, subject: str, visit: str) -> zarr.Group:
    path = store_path(store) / scan_key(subject, visit)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{store_path(store)}: no scan for subject {subject} visit {visit}.")
    return zarr.open_group(path, mode="r", zarr_format=3)


def lazy_scan(store: str | Path, subject: str, visit: str) -> tuple[da.Array, dict[str, Any]]:
    """The raw voxels of a stored scan as a Dask array (nothing read yet), and its attributes."""
    group = _scan_group(store, subject, visit)
    return lazy_array(group["0"]), dict(group.attrs["msnl"])


def read_scan(store: str | Path, subject: str, visit: str) -> Scan:
    """A stored scan, loaded, in scanner units (scl_slope and scl_inter applied)."""
    group = _scan_group(store, subject, visit)
    attrs = group.attrs["msnl"]
    raw = np.asarray(group["0"][...])
    return Scan(scaled_voxels(raw, attrs["scl_slope"], attrs["scl_inter"]), np.asarray(attrs["affine"]))


def list_scans(store: str | Path) -> list[dict[str, Any]]:
    """The `msnl` attributes of every complete scan in the store."""
    scans_dir = store_path(store) / "scans"
    found = []
    for meta in sorted(scans_dir.glob("*/*/zarr.json")):
        group = zarr.open_group(meta.parent, mode="r", zarr_format=3)
        if "msnl" in group.attrs:
            found.append(dict(group.attrs["msnl"]))
    return found


def array_layout(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Chunks and shards of a stored array: 64³ chunks for volumes, 1 M-element chunks for flat
    data, all inside one shard, so that an array is one file (a 1 mm brain's 36 chunks were 36
    files, which a cluster file system's metadata servers pay for); readers still fetch single
    chunks from it."""
    chunks = tuple(min(CHUNK, n) for n in shape) if len(shape) == 3 else (min(1 << 20, max(shape[0], 1)),)
    return {"chunks": chunks, "shards": tuple(max(-(-n // c), 1) * c for n, c in zip(shape, chunks))}


def lazy_array(array: zarr.Array) -> da.Array:
    """A stored array as Dask, one block per chunk: by default Dask takes a whole shard as a
    block, so a slice would read the whole array."""
    return da.from_zarr(array, chunks=array.chunks)


def write_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """An array in the store's codec and layout (`array_layout`). Volumes are named by the
    voxel axes of their grid, as the scans are, and flat data by `element`, so that
    `xr.open_datatree(store, engine="zarr")` opens every array of the store."""
    dims = _AXES if data.ndim == 3 else ("element",)
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, **array_layout(data.shape), compressors=[COMPRESSOR],
                               dimension_names=dims, fill_value=0)
    array[...] = data
