"""What the app reads, through `storage`'s xarray API only, cached until the store changes.

Every loader takes the store's `results_stamp` as an argument, so a result published by a
running `msnl run` changes the cache key and the next refresh shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import xarray as xr

from msnl.errors import MsnlError
from storage import open_interval, open_lesions, open_results, results_stamp, run_history

REFRESH_SECONDS = 10


@dataclass(frozen=True)
class StoreState:
    """Why a store can't be shown yet (`problem`), or its fingerprint."""

    path: Path
    stamp: tuple | None
    problem: str = ""


def store_state(store: str) -> StoreState:
    path = Path(store).expanduser()
    if not store:
        return StoreState(path, None, "No store given. Start the app with `msnl dashboard STORE` or set MSNL_STORE.")
    if not path.exists():
        return StoreState(path, None, f"{path}: no such store. Check the path, or create it with `msnl run SOURCE {path}`.")
    if not (path / "zarr.json").exists():
        return StoreState(path, None, f"{path}: not an msnl store (no zarr.json). Point the dashboard at the STORE given to `msnl run`.")
    try:
        return StoreState(path, results_stamp(path))
    except (OSError, MsnlError) as exc:
        return StoreState(path, None, f"{path}: can't be read yet ({exc}).")


@st.cache_data(show_spinner="Reading results…", max_entries=8)
def load_results(store: str, stamp: tuple) -> xr.Dataset:
    return open_results(store).load()


@st.cache_data(show_spinner=False, max_entries=8)
def load_runs(store: str, stamp: tuple) -> pd.DataFrame:
    return run_history(store)


@st.cache_data(show_spinner="Reading lesions…", max_entries=64)
def load_lesions(store: str, stamp: tuple, subject: str, interval: str) -> pd.DataFrame:
    return open_lesions(store, subject, interval)


@st.cache_data(show_spinner=False, max_entries=64)
def load_slice(store: str, stamp: tuple, subject: str, from_visit: str, to_visit: str, k: int) -> dict[str, np.ndarray]:
    """One axial slice (index k on the later visit's grid) of each image: only its chunks are read."""
    interval = open_interval(store, subject, from_visit, to_visit)
    return {name: np.asarray(interval[name].isel(k=k).values) for name in interval.data_vars}


@st.cache_data(show_spinner=False, max_entries=32)
def interval_geometry(store: str, stamp: tuple, subject: str, from_visit: str, to_visit: str) -> tuple[tuple[int, ...], np.ndarray]:
    interval = open_interval(store, subject, from_visit, to_visit)
    return tuple(interval.flair2.shape), np.asarray(interval.attrs["affine"], float)
