"""How fast the dashboard renders on a large store.

    .venv/bin/python benchmarks/dashboard.py [--subjects 500] [--store /tmp/msnl-500.zarr]

Makes a synthetic 500-patient, 3-visit store (storage.synthetic: the real layout, drawn
results) unless it exists, then times the storage reads, the endpoint maths, and each page
rendered cold (empty cache) and warm with Streamlit's AppTest. Prints the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
# This file is named like the app's package: put the repository first, so `import dashboard`
# inside the app finds the package, not this script.
sys.path.insert(0, str(ROOT))


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"{label:<44} {time.perf_counter() - start:7.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument("--store", default="/tmp/msnl-dashboard-bench.zarr")
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    from msnl.endpoints import cumulative, per_arm_interval, rate_ratios
    from storage import open_lesions, open_results
    from storage.synthetic import write_synthetic_store

    store = Path(args.store)
    if not (store / "cohort" / "zarr.json").exists():
        timed(f"make a {args.subjects}-patient store", lambda: write_synthetic_store(
            store, args.subjects, seed=0, pending_share=0.05, failed_share=0.02))
    results = timed("storage.open_results", lambda: open_results(store))
    print(f"  {results.sizes['subject']} subjects x {results.sizes['interval']} intervals")
    timed("storage.open_lesions, whole cohort", lambda: open_lesions(store))
    timed("storage.open_lesions, one interval", lambda: open_lesions(store, "001", "01->02"))
    timed("endpoints: per arm and interval + cumulative", lambda: (per_arm_interval(results), cumulative(results)))
    timed("endpoints: negative-binomial rate ratio", lambda: rate_ratios(results))
    os.environ["MSNL_STORE"] = str(store)
    for page in ("overview", "endpoints", "patient"):
        at = AppTest.from_file(APP, default_timeout=300)
        at.query_params["page"] = page
        timed(f"page {page}: first render (cold cache)", at.run)
        assert not at.exception, [e.value for e in at.exception]
        timed(f"page {page}: rerun (warm cache)", at.run)


if __name__ == "__main__":
    main()
