"""Tables in the store (candidates, new lesions): one array per table, columns and dtypes back
as written, and tables written by xarray (stores before 2026-12-07) still read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from msnl.errors import StoreError
from storage.tables import read_table, write_table


def _table(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    return pd.DataFrame({
        "label": np.arange(1, rows + 1), "lo_i": rng.integers(0, 200, rows), "patch_offset": rng.integers(0, 2**40, rows),
        "x_mm": rng.normal(0, 50, rows), "volume_mm3": rng.uniform(7, 900, rows).astype(np.float32),
        "infratentorial": rng.random(rows) < 0.3,
    })


@pytest.mark.parametrize("rows", [0, 1, 1300])
def test_a_table_reads_back_as_written(tmp_path, rows):
    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    table = _table(rows)
    write_table(group, "table", table, {"patch_channels": ["flair1", "flair2"]})
    back = read_table(tmp_path / "g" / "table")
    pd.testing.assert_frame_equal(back, table)
    assert zarr.open_array(tmp_path / "g" / "table", mode="r").attrs["patch_channels"] == ["flair1", "flair2"]


def test_a_table_is_two_files_whatever_its_width(tmp_path):
    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    write_table(group, "table", _table(500))
    files = [p for p in (tmp_path / "g" / "table").rglob("*") if p.is_file()]
    assert len(files) == 2


def test_a_table_written_by_xarray_still_reads(tmp_path):
    table = _table(20)
    xr.Dataset({c: ("lesion", table[c].to_numpy()) for c in table.columns}).to_zarr(
        tmp_path / "g", group="lesions", mode="w", zarr_format=3, consolidated=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "g" / "lesions"), table, check_like=True)  # xarray sorts columns


@pytest.mark.parametrize(("column", "values", "says"), [
    ("site", ["a", "b"], "numbers and booleans only"),
    ("offset", [0, 2**53 + 1], r"beyond 2\*\*53"),
])
def test_what_a_float_table_cannot_hold_is_refused(tmp_path, column, values, says):
    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    with pytest.raises(StoreError, match=says) as caught:
        write_table(group, "table", pd.DataFrame({column: values}))
    assert column in str(caught.value)
