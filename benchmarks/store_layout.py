"""What one shard per array changes in a store (`storage.scans.array_layout`): files, bytes,
and write and read times.

    .venv/bin/python benchmarks/store_layout.py STORE

Copies every array of STORE (raw scans, N4 copies, step-one results, predictions) into two
temporary stores: with 64³ chunks only, each chunk a file (msnl until 2026-12-06), and with
the same chunks inside one shard per array (now). Prints, per interval of STORE: the files
(arrays, plus the group and table files both layouts share), MB, seconds to write and to read
back every array, and seconds to read one axial slice of each interval's `flair2` through
Dask, as the dashboard's slice viewer does. Times are the best of three.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.scans import COMPRESSOR, array_layout, lazy_array  # noqa: E402

TOPS = ("scans", "corrected", "pairs", "predictions")


def _arrays(store: Path) -> list[tuple[str, zarr.Array]]:
    found = []
    for top in TOPS:
        for meta in sorted((store / top).rglob("zarr.json")):
            node = zarr.open(meta.parent, mode="r", zarr_format=3)
            if isinstance(node, zarr.Array) and node.ndim in (1, 3) and "/table/" not in str(meta) and "/lesions/" not in str(meta):
                found.append((str(meta.parent.relative_to(store)), node))
    return found


def _files(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file() and ".staging" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def _write(arrays: list[tuple[str, np.ndarray]], root: Path, sharded: bool) -> float:
    start = time.perf_counter()
    for key, data in arrays:
        layout = array_layout(data.shape)
        if not sharded:
            layout.pop("shards")
        target = zarr.create_array(root / key, shape=data.shape, dtype=data.dtype, **layout, compressors=[COMPRESSOR],
                                   fill_value=0, zarr_format=3)
        target[...] = data
    return time.perf_counter() - start


def _read_all(root: Path, keys: list[str]) -> float:
    start = time.perf_counter()
    for key in keys:
        np.asarray(zarr.open_array(root / key, mode="r")[...])
    return time.perf_counter() - start


def _read_slices(root: Path, keys: list[str]) -> float:
    start = time.perf_counter()
    for key in keys:
        lazy = lazy_array(zarr.open_array(root / key, mode="r"))
        lazy[:, :, lazy.shape[2] // 2].compute(scheduler="sync")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    args = parser.parse_args()
    found = _arrays(args.store)
    intervals = len(list((args.store / "pairs").glob("*/*/*/zarr.json")))
    if not intervals:
        raise SystemExit(f"{args.store}: no step-one results; run `msnl run SOURCE {args.store}` first")
    arrays = [(key, np.asarray(array[...])) for key, array in found]
    own_files = sum(_files(args.store / key)[0] for key, _ in arrays)
    shared_files = _files(args.store)[0] - own_files
    flair2 = [key for key, _ in arrays if key.startswith("pairs/") and key.endswith("/flair2")]
    print(f"{args.store}: {intervals} intervals, {len(arrays)} arrays, {shared_files} group and table files")
    print("per interval: layout | files | MB | write s | read all s | read one slice s")
    for label, sharded in (("64³ chunks, a file each", False), ("one shard per array", True)):
        with tempfile.TemporaryDirectory() as tmp:
            writes, reads, slices = [], [], []
            for attempt in range(3):
                root = Path(tmp, str(attempt))
                writes.append(_write(arrays, root, sharded))
                reads.append(_read_all(root, [key for key, _ in arrays]))
                slices.append(_read_slices(root, flair2))
            files, size = _files(Path(tmp, "0"))
        print(f"{label} | {(files + shared_files) / intervals:.0f} | {size / 1e6 / intervals:.1f} | {min(writes) / intervals:.2f} | "
              f"{min(reads) / intervals:.2f} | {min(slices) / len(flair2):.3f}")


if __name__ == "__main__":
    main()
