"""The simulator: cohort speed, step-one candidates on simulated pairs, and a figure beside a
real Lesjak pair (docs/simulated_vs_real.png).

    .venv/bin/python benchmarks/simulator.py [--pairs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"
FIGURE = ROOT / "docs" / "simulated_vs_real.png"

from msnl.simulate import SimOptions  # noqa: E402
from pipelines.simulate import run_simulate  # noqa: E402
from storage.bids import DERIVATIVES, flair_path, truth_path  # noqa: E402


def _load(path):
    img = nib.load(path)
    return np.asarray(img.get_fdata(dtype=np.float32)), img


def _component_volumes(mask, img) -> list[float]:
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(img.header.get_zooms()[:3]))
    return list(np.bincount(labels.ravel())[1:] * voxel) if n else []


def _foreground(data):
    return data[data > 0.25 * np.percentile(data, 99)]


def _middle_slice(data, axis=2, index=None):
    index = data.shape[axis] // 2 if index is None else index
    return np.rot90(np.take(data, index, axis=axis))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="simulated pairs to run step one on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = run_simulate(Path(tmp) / "sim", 6, 2, seed=2024, opts=SimOptions(), progress=False)
        print(f"simulate 6 subjects x 2 visits: {time.perf_counter() - start:.1f} s (target < 60 s)")
        sim_sizes = []
        for path in sorted((cohort / DERIVATIVES).rglob("*desc-newlesions_mask.nii.gz")):
            data, img = _load(path)
            sim_sizes += _component_volumes(data, img)
        subjects = sorted(p.name[4:] for p in cohort.glob("sub-*"))
        # the pair to show: the subject with the most new-lesion voxels
        shown = max(subjects, key=lambda s: _load(truth_path(cohort, s, "02", "newlesions"))[0].sum())
        s1, _ = _load(flair_path(cohort, shown, "01"))
        s2, _ = _load(flair_path(cohort, shown, "02"))
        sn, _ = _load(truth_path(cohort, shown, "02", "newlesions"))
        k = int(np.argmax(sn.sum(axis=(0, 1)))) if sn.any() else None

        counts, real_counts = [], []
        if args.pairs:
            from msnl.nifti import read_nifti
            from msnl.step_one import run_step_one
            from storage.lesjak import read_lesjak_pair

            for patient in ("patient01", "patient12") if REAL.exists() else ():
                pair = read_lesjak_pair(REAL / patient)
                real_counts.append(len(run_step_one(pair.flair1, pair.flair2).table))
                print(f"step one on real {patient}: {real_counts[-1]} candidates")

            for subject in subjects[1 : 1 + args.pairs]:
                t0 = time.perf_counter()
                result = run_step_one(read_nifti(flair_path(cohort, subject, "01")).to_scan(),
                                      read_nifti(flair_path(cohort, subject, "02")).to_scan())
                counts.append(len(result.table))
                print(f"step one on simulated sub-{subject}: {len(result.table)} candidates "
                      f"({time.perf_counter() - t0:.0f} s, grid {result.brain.shape})")

        fig, axes = plt.subplots(3, 3, figsize=(12, 11))
        for ax, (title, img) in zip(axes[0], (("simulated visit 1", s1), ("simulated visit 2", s2))):
            ax.imshow(_middle_slice(img, index=None if img is s1 else k), cmap="gray")
            ax.set_title(f"{title} (sub-{shown})")
        axes[0, 2].imshow(_middle_slice(s2, index=k), cmap="gray")
        axes[0, 2].imshow(np.ma.masked_equal(_middle_slice(sn, index=k), 0), cmap="autumn", alpha=0.8)
        axes[0, 2].set_title("simulated new-lesion truth")
        real_sizes = []
        if REAL.exists():
            r1, _ = _load(REAL / "patient01" / "study1_FLAIR.nii.gz")
            r2, _ = _load(REAL / "patient01" / "study2_FLAIR.nii.gz")
            truth, timg = _load(REAL / "patient01" / "newlesions.nii.gz")
            for p in ("patient01", "patient12"):
                t, ti = _load(REAL / p / "newlesions.nii.gz")
                real_sizes += _component_volumes(t, ti)
            axes[1, 0].imshow(_middle_slice(r1, index=r1.shape[2] * 2 // 3), cmap="gray")
            axes[1, 0].set_title("real patient01 study 1")
            axes[1, 1].imshow(_middle_slice(r2, index=r2.shape[2] * 2 // 3), cmap="gray")
            axes[1, 1].set_title("real patient01 study 2")
            axes[1, 2].hist(_foreground(r2) / np.median(_foreground(r2)), bins=100, density=True, alpha=0.6, label="real study 2")
        axes[1, 2].hist(_foreground(s2) / np.median(_foreground(s2)), bins=100, density=True, alpha=0.6, label="simulated visit 2")
        axes[1, 2].set_title("head intensities / median")
        axes[1, 2].legend()
        bins = np.logspace(0, 4, 25)
        axes[2, 0].hist(sim_sizes, bins=bins, alpha=0.6, label=f"simulated ({len(sim_sizes)})")
        if real_sizes:
            axes[2, 0].hist(real_sizes, bins=bins, alpha=0.6, label=f"real Lesjak ({len(real_sizes)})")
        axes[2, 0].set_xscale("log")
        axes[2, 0].set_xlabel("new-lesion volume (mm³)")
        axes[2, 0].set_title("new-lesion sizes")
        axes[2, 0].legend()
        axes[2, 1].bar([*[f"real {i + 1}" for i in range(len(real_counts))], *[f"sim {i + 1}" for i in range(len(counts))]],
                       [*real_counts, *counts], color=[*["C1"] * len(real_counts), *["C0"] * len(counts)])
        axes[2, 1].set_title("step-one candidates per pair")
        axes[2, 2].axis("off")
        for ax in axes[:2].ravel():
            if ax is not axes[1, 2]:
                ax.axis("off")
        fig.suptitle("msnl simulate (seed 2024) beside a real Lesjak pair")
        fig.tight_layout()
        FIGURE.parent.mkdir(exist_ok=True)
        fig.savefig(FIGURE, dpi=80)
        print(f"figure: {FIGURE}")
        print(f"new-lesion sizes, median mm³: simulated {np.median(sim_sizes):.0f} (n={len(sim_sizes)}), "
              f"real {np.median(real_sizes) if real_sizes else float('nan'):.0f} (n={len(real_sizes)})")


if __name__ == "__main__":
    main()
