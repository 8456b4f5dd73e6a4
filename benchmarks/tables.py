"""What one array per table changes (`storage.tables`): files, and write and read times, against
the xarray Dataset per table (one array per column) that msnl wrote until 2026-12-07.

    .venv/bin/python benchmarks/tables.py STORE

Copies every candidates and lesion table of STORE into a temporary store in both layouts, and
prints, per kind of table: how many, rows and columns, files per table, and milliseconds to
write and to read one (best of three).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import xarray as xr
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.tables import read_table, write_table  # noqa: E402

KINDS = {"candidates": "pairs/*/*/*/table", "new lesions": "predictions/*/*/*/lesions"}


def _xarray_write(root: Path, name: str, table: pd.DataFrame) -> None:
    xr.Dataset({c: ("row", table[c].to_numpy()) for c in table.columns}).to_zarr(
        root, group=name, mode="w", zarr_format=3, consolidated=False)


def _array_write(root: Path, name: str, table: pd.DataFrame) -> None:
    write_table(zarr.open_group(root, mode="a", zarr_format=3), name, table)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    args = parser.parse_args()
    print("kind | tables | rows (mean) | columns | layout | files per table | write ms | read ms")
    for kind, pattern in KINDS.items():
        tables = [read_table(path) for path in sorted(args.store.glob(pattern))]
        if not tables:
            print(f"{kind}: none in {args.store}")
            continue
        rows = sum(len(t) for t in tables) / len(tables)
        names = [f"t{i}" for i in range(len(tables))]
        for label, write in (("xarray Dataset", _xarray_write), ("one array", _array_write)):
            with tempfile.TemporaryDirectory() as tmp:
                writes, reads = [], []
                for attempt in range(3):
                    root = Path(tmp, str(attempt))
                    zarr.open_group(root, mode="w", zarr_format=3)
                    writes.append(_seconds(lambda: [write(root, n, t) for n, t in zip(names, tables)]))
                    reads.append(_seconds(lambda: [read_table(root / n) for n in names]))
                files = sum(1 for p in Path(tmp, "0").rglob("*") if p.is_file()) - 1  # less the root group
            write_ms, read_ms = (1000 * min(times) / len(tables) for times in (writes, reads))
            print(f"{kind} | {len(tables)} | {rows:.0f} | {tables[0].shape[1]} | {label} | {files / len(tables):.0f} | "
                  f"{write_ms:.1f} | {read_ms:.1f}")


if __name__ == "__main__":
    main()
