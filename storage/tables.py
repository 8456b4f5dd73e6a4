"""Tables in the store (step one's candidates, step two's new lesions): one array per table.

    <group>/<name>   float64, (rows, columns), one chunk; attributes: "columns" (names, in
                     order), "dtypes" (each column's numpy dtype) and the table's own attributes

So a table is two files (its metadata and one chunk), however many columns it has. Until
2026-12-07 each table was an xarray Dataset, one array per column: two files a column, 44 of
an interval's 95 files. `read_table` reads both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from msnl.errors import StoreError
from storage.scans import COMPRESSOR

# float64 holds every integer up to 2**53 exactly
_EXACT_INT = 2**53


def _check_columns(table: pd.DataFrame) -> None:
    for name in table.columns:
        column = table[name]
        if not pd.api.types.is_numeric_dtype(column):  # booleans count as numeric
            raise StoreError(f"table column {name!r} holds {column.dtype}; a stored table holds numbers and booleans only")
        if pd.api.types.is_integer_dtype(column) and len(column) and int(np.abs(column.to_numpy()).max()) > _EXACT_INT:
            raise StoreError(f"table column {name!r} holds integers beyond 2**53, which a float64 table would round")


def write_table(group: zarr.Group, name: str, table: pd.DataFrame, attrs: dict[str, Any] | None = None) -> None:
    """Store `table` (numeric and boolean columns) as the array `name` of `group`."""
    _check_columns(table)
    columns = [str(c) for c in table.columns]
    data = table.to_numpy(dtype=np.float64)
    array = group.create_array(name, shape=data.shape, dtype=np.float64, chunks=(max(len(data), 1), max(len(columns), 1)),
                               compressors=[COMPRESSOR], dimension_names=(f"{name}_row", f"{name}_column"), fill_value=0.0)
    if data.size:
        array[...] = data
    array.attrs.update({"columns": columns, "dtypes": [str(table[c].dtype) for c in table.columns], **(attrs or {})})


def read_table(path: Path) -> pd.DataFrame:
    """The table stored at `path` by `write_table`, or by xarray in a store written before
    2026-12-07."""
    node = zarr.open(path, mode="r", zarr_format=3)
    if isinstance(node, zarr.Group):
        return xr.open_zarr(path, zarr_format=3, consolidated=False).load().to_dataframe().reset_index(drop=True)
    data = np.asarray(node[...])
    columns, dtypes = node.attrs["columns"], node.attrs["dtypes"]
    return pd.DataFrame({c: data[:, i].astype(d) for i, (c, d) in enumerate(zip(columns, dtypes))})
