"""Ingest speed and memory: msnl ingest against nibabel-load plus zarr-write alone.

    .venv/bin/python benchmarks/ingest.py [--repeat 3]

Uses the four real Lesjak FLAIRs from ../shared/data when present, else the demo cohort.
Each measurement runs in a fresh child process, which reports its own wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"


def _bids_source(tmp: Path) -> tuple[Path, str]:
    root = tmp / "bids"
    if REAL.exists():
        for patient in ("patient01", "patient12"):
            for study in (1, 2):
                anat = root / f"sub-{patient}" / f"ses-{study}" / "anat"
                anat.mkdir(parents=True)
                shutil.copy(REAL / patient / f"study{study}_FLAIR.nii.gz", anat / f"sub-{patient}_ses-{study}_FLAIR.nii.gz")
        return root, "4 real Lesjak FLAIRs (320x320x36-48, int16)"
    sys.path.insert(0, str(ROOT))
    from pipelines.demo import make_demo_source

    return make_demo_source(root), "4 demo FLAIRs (99x117x95, int16)"


def _child(mode: str, source: Path, store: Path, workers: int) -> None:
    sys.path.insert(0, str(ROOT))
    files = sorted(source.glob("sub-*/ses-*/anat/*_FLAIR.nii*"))
    start = time.perf_counter()
    if mode == "baseline":
        import nibabel as nib
        import numpy as np
        import zarr

        from storage.scans import COMPRESSOR, array_layout

        for i, path in enumerate(files):
            data = np.asarray(nib.load(path).dataobj.get_unscaled())
            arr = zarr.create_array(
                store / str(i), shape=data.shape, dtype=data.dtype,
                **array_layout(data.shape), compressors=[COMPRESSOR], zarr_format=3,
            )
            arr[...] = data
    else:
        from pipelines.ingest import run_ingest

        summary = run_ingest(source, store, workers=workers, progress=False)
        if summary.failed:
            raise SystemExit(f"ingest failed: {summary.entries}")
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "scans": len(files), "peak_mib": peak_mib}))


def _measure(mode: str, source: Path, tmp: Path, workers: int = 1) -> dict:
    store = tmp / f"{mode}-{workers}-{time.monotonic_ns()}.zarr"
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(source), str(store), str(workers)],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["store_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, source, store, workers = args.child
        _child(mode, Path(source), Path(store), int(workers))
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source, what = _bids_source(tmp)
        nii_bytes = sum(p.stat().st_size for p in source.rglob("*.nii*"))
        best = {}
        for mode, workers in (("baseline", 1), ("msnl", 1), ("msnl", 2)):
            runs = [_measure(mode, source, tmp, workers) for _ in range(args.repeat)]
            best[(mode, workers)] = min(runs, key=lambda r: r["seconds"])
        n = best[("baseline", 1)]["scans"]
        base = best[("baseline", 1)]["seconds"] / n
        one = best[("msnl", 1)]["seconds"] / n
        two = best[("msnl", 2)]["seconds"] / n
        print(f"data: {what}; best of {args.repeat} runs, each in a fresh process")
        print(f"nibabel load + zarr write alone : {base:.3f} s/scan, peak {best[('baseline', 1)]['peak_mib']:.0f} MiB")
        print(f"msnl ingest, 1 worker           : {one:.3f} s/scan, peak {best[('msnl', 1)]['peak_mib']:.0f} MiB")
        print(f"msnl ingest, 2 workers          : {two:.3f} s/scan, peak {best[('msnl', 2)]['peak_mib']:.0f} MiB")
        print(f"ratio msnl(1 worker) / baseline : {one / base:.2f}  (target <= 1.2)")
        print(f"store size / .nii.gz size       : {best[('msnl', 1)]['store_bytes'] / nii_bytes:.2f}"
              f"  ({best[('msnl', 1)]['store_bytes'] / 2**20:.1f} MiB vs {nii_bytes / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
