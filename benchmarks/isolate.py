"""What running a task's ANTs work in a child process costs (pipelines/isolate.py).

    .venv/bin/python benchmarks/isolate.py

Times two calls through `run_isolated`, three times each: a bare child (start-up only), and
one that makes the imports of an N4 or step-one task (storage.pairs: zarr, xarray, ANTs,
torch). A step-one child also loads the brain-mask model once (about 1 s, msnl/brain_mask.py).
Then what the worker spends watching its child's memory (`memory_limit`, measured every
0.2 s): its CPU time while a child sleeps 5 s, with and without the watch.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.isolate import run_isolated  # noqa: E402
from storage.pairs import read_pair_attrs  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        calls = {"bare child": (os.getpid, ()),
                 "+ a task's imports": (read_pair_attrs, (str(Path(tmp, "none.zarr")), "a", "01", "02"))}
        for label, (func, args) in calls.items():
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                run_isolated(func, *args)
                seconds.append(time.perf_counter() - start)
            print(f"{label}: " + ", ".join(f"{s:.2f}" for s in seconds) + " s")
        for label, limit in (("without", None), ("with", 2**40)):
            start = time.process_time()
            run_isolated(time.sleep, 5, memory_limit=limit)
            print(f"the worker's CPU time over a 5 s child, {label} the memory watch: "
                  f"{1000 * (time.process_time() - start):.0f} ms")


if __name__ == "__main__":
    main()
