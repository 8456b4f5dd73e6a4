"""The msnl dashboard: cohort overview, trial endpoints and a patient view, read-only.

Start it with `msnl dashboard STORE`, or `MSNL_STORE=STORE streamlit run dashboard/app.py`.
Pages are chosen in the sidebar or with `?page=overview|endpoints|patient` in the URL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from dashboard.data import REFRESH_SECONDS, load_results, store_state
from dashboard.views import PAGES, filter_widgets, render_page
from msnl.errors import MsnlError

st.set_page_config(page_title="msnl: new MS lesions", layout="wide")


def _store_argument() -> str:
    """MSNL_STORE, else `streamlit run dashboard/app.py -- STORE`."""
    if os.environ.get("MSNL_STORE"):
        return os.environ["MSNL_STORE"]
    script_args = sys.argv[1:] if Path(sys.argv[0]).name == "app.py" else []
    return script_args[0] if script_args else ""


store = _store_argument()
st.sidebar.title("msnl")
names = list(PAGES)
requested = st.query_params.get("page", names[0])
page = st.sidebar.radio("Page", names, index=names.index(requested) if requested in names else 0,
                        format_func=lambda p: PAGES[p])
st.query_params["page"] = page
live = st.sidebar.toggle(f"Live refresh (every {REFRESH_SECONDS} s)", value=True,
                         help="Shows results as a running `msnl run` publishes them.")
st.sidebar.caption(f"Store: `{store or '(none)'}` (read-only)")

state = store_state(store)
if state.problem:
    st.title("msnl")
    st.info(state.problem)
    st.stop()
try:
    filters = filter_widgets(load_results(str(state.path), state.stamp))
except (MsnlError, OSError, KeyError, ValueError) as exc:  # caught between two files of a run
    st.title("msnl")
    st.warning(f"{state.path}: the results can't be read yet ({exc}). They will show once `msnl run` has written them.")
    st.stop()


@st.fragment(run_every=REFRESH_SECONDS if live else None)
def body() -> None:
    render_page(page, str(state.path), filters)


body()
