"""What `msnl run` spends deciding which intervals are done, before it submits anything.

    .venv/bin/python benchmarks/noop_check.py [--subjects 1000]

Ingests SUBJECTS subjects of two tiny visits each, then gives every interval a step-one
result and a prediction that are current for the default config, software and shipped
weights (their attributes only, as `msnl run` reads them), so a re-run has nothing to do.
Times, best of three, what a re-run does before it can say so: `storage.results.intervals`
(each subject's consecutive visit pairs, from the cohort table) and
`pipelines.run.interval_state` over every interval, which reads four small JSON documents
per interval (the two scans, the step-one result, the prediction). To compare commits, run
this file against each commit's tree (it imports msnl from the folder above its own).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipelines.run as run  # noqa: E402
from msnl.config import StepOneConfig  # noqa: E402
from msnl.inference import weights_digest  # noqa: E402
from msnl.scan import Scan  # noqa: E402
from msnl.step_one import software_versions  # noqa: E402
from pipelines.ingest import run_ingest  # noqa: E402
from storage.bids import BidsVisit, write_bids  # noqa: E402
from storage.layout import new_staging_dir, publish, write_group_json  # noqa: E402
from storage.pairs import pair_key, result_key  # noqa: E402
from storage.results import intervals, prediction_key, prediction_result_key  # noqa: E402
from storage.scans import stored_scan_attrs  # noqa: E402


def _publish_attrs(store: Path, key: str, attrs: dict) -> None:
    staged = new_staging_dir(store)
    write_group_json(staged, attrs)
    publish(store, staged, key)


def build(root: Path, subjects: int) -> tuple[Path, StepOneConfig, str, dict]:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    visits = [BidsVisit(f"s{i:05d}", v, Scan(rng.uniform(100, 200, (8, 8, 8)).astype(np.float32), affine),
                        f"202{j}-01-01", "placebo", "site-1")
              for i in range(subjects) for j, v in enumerate(("01", "02"))]
    write_bids(root / "bids", visits)
    store = root / "store.zarr"
    run_ingest(root / "bids", store, progress=False)
    cfg, digest, versions = StepOneConfig(), weights_digest(), software_versions()
    for s, a, b in intervals(store):
        sha = [stored_scan_attrs(store, s, v)["sha256"] for v in (a, b)]
        key = result_key(sha[0], sha[1], cfg, versions)
        _publish_attrs(store, pair_key(s, a, b), {"status": "ok", "result_key": key, "config": cfg.digest(),
                                                  "versions": versions, "qc": {"registration_correlation": 0.9}})
        _publish_attrs(store, prediction_key(s, a, b), {"status": "ok", "result_key": prediction_result_key(key, digest)})
    return store, cfg, digest, versions


def best_of_three(func) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(3):
        start = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, cfg, digest, versions = build(Path(tmp), args.subjects)
        listing, todo = best_of_three(lambda: intervals(store))
        checking, states = best_of_three(lambda: [run.interval_state(str(store), *t, cfg, digest, versions) for t in todo])
    assert set(states) == {"done"}, set(states)
    print(f"{len(todo)} intervals, all done: seconds (ms per interval)")
    print(f"intervals() | {listing:.3f} ({listing / len(todo) * 1000:.3f})")
    print(f"interval_state, all | {checking:.3f} ({checking / len(todo) * 1000:.3f})")


if __name__ == "__main__":
    main()
