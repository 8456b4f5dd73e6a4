"""What the CNN's false new lesions on a real pair look like, beside its true ones.

    .venv/bin/msnl run ../shared/data/lesjak-longitudinal lj.zarr
    .venv/bin/python benchmarks/false_lesions.py lj.zarr --subject patient01 --plot docs/false_lesions_patient01.png

For one Lesjak patient of a store made by `msnl run`, scores each predicted lesion (26-connected,
3 mm³ or more) against the dataset's truth with `msnl evaluate`'s rule: true when at least 10 %
of its voxels are in the truth. It prints, for true and false lesions, how many, their volumes,
the CNN's mean probability, the visit 2 / visit 1 intensity ratio inside them (step one's
registered, histogram-matched visit 1), how far they lie from the nearest truth voxel and from
the brain's edge, and saves a montage: per lesion, visit 1 and visit 2 on the axial slice
through its largest cross-section, the prediction outlined in red and the truth in green.
A diagnosis for the model card, not a score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msnl.metrics import DETECTION_FRACTION, lesions  # noqa: E402
from msnl.scan import LabelMap  # noqa: E402
from storage import open_lesions  # noqa: E402
from storage.masks import dataset_truths  # noqa: E402
from storage.pairs import read_pair_array, read_pair_attrs  # noqa: E402
from storage.results import read_prediction_mask  # noqa: E402
from storage.training_data import TrainingPair, read_truth  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"
CROP = 24  # voxels each side of a lesion's centre in the montage
SHOWN_FALSE = 10  # the largest false lesions shown


def describe(store: Path, subject: str, truth_root: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One row per scored predicted lesion, and the images the montage needs."""
    attrs = read_pair_attrs(store, subject, "1", "2")
    if attrs is None or attrs.get("status") != "ok":
        raise SystemExit(f"{store}: no step-one result for {subject} 1->2; run `msnl run {truth_root} {store}` first")
    grid = np.asarray(attrs["affine"], float)
    pred = LabelMap(read_prediction_mask(store, subject, "1", "2"), grid)
    mask_path, transform = dataset_truths(truth_root)[(subject, "2")]
    truth = read_truth(TrainingPair(str(store), subject, "1", "2", str(mask_path), str(transform)), pred)
    flair1, flair2 = (read_pair_array(store, subject, "1", "2", name).astype(np.float32) for name in ("flair1", "flair2"))
    brain = read_pair_array(store, subject, "1", "2", "brain") > 0
    spacing = np.linalg.norm(grid[:3, :3], axis=0)
    to_truth = ndimage.distance_transform_edt(~truth, sampling=spacing) if truth.any() else np.full(truth.shape, np.inf)
    to_edge = ndimage.distance_transform_edt(brain, sampling=spacing)
    table = open_lesions(store, subject, "1->2")
    inverse = np.linalg.inv(grid)
    labels, scored = lesions(pred)
    centres = {int(label): np.array(ndimage.center_of_mass(labels == label)) for label in scored}
    probability = {}
    for row in table.itertuples():  # the CNN's lesion table, matched to the component with the nearest centre
        ijk = (inverse @ [row.x_mm, row.y_mm, row.z_mm, 1.0])[:3]
        nearest = min(centres, key=lambda label: np.linalg.norm((centres[label] - ijk) * spacing), default=None)
        if nearest is not None and np.linalg.norm((centres[nearest] - ijk) * spacing) < 1.0:
            probability[nearest] = row.mean_probability
    rows = []
    for label in scored:
        voxels = labels == label
        rows.append({
            "label": int(label), "true": truth[voxels].mean() >= DETECTION_FRACTION,
            "volume_mm3": float(voxels.sum() * pred.voxel_volume), "probability": probability.get(int(label), np.nan),
            "ratio": float(flair2[voxels].mean() / max(flair1[voxels].mean(), 1e-6)),
            "to_truth_mm": float(to_truth[voxels].min()), "to_edge_mm": float(to_edge[voxels].max()),
            "centre": tuple(int(round(c)) for c in centres[int(label)]),
            "slice": int(np.argmax(voxels.sum(axis=(0, 1)))),
        })
    return rows, {"flair1": flair1, "flair2": flair2, "pred": labels, "truth": truth}


def _median(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if np.isfinite(r[key])]
    return f"{np.median(values):.2f}" if values else "-"


def summary(rows: list[dict]) -> str:
    lines = [f"{'lesions':<8} {'n':>4} {'vol mm3':>8} {'prob':>6} {'ratio':>6} {'to truth mm':>12} {'to edge mm':>11}  (medians)"]
    for name, part in (("true", [r for r in rows if r["true"]]), ("false", [r for r in rows if not r["true"]])):
        lines.append(f"{name:<8} {len(part):>4} {_median(part, 'volume_mm3'):>8} {_median(part, 'probability'):>6} "
                     f"{_median(part, 'ratio'):>6} {_median(part, 'to_truth_mm'):>12} {_median(part, 'to_edge_mm'):>11}")
    false = [r for r in rows if not r["true"]]
    if false:
        near = sum(r["to_truth_mm"] < 10 for r in false)
        edge = sum(r["to_edge_mm"] < 5 for r in false)
        lines.append(f"false lesions within 10 mm of a truth lesion: {near} of {len(false)}; "
                     f"reaching no deeper than 5 mm into the brain: {edge} of {len(false)}")
    return "\n".join(lines)


def montage(rows: list[dict], images: dict[str, np.ndarray], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["true"]] + sorted((r for r in rows if not r["true"]), key=lambda r: -r["volume_mm3"])[:SHOWN_FALSE]
    columns = 4  # two lesions a row, visit 1 then visit 2
    fig, axes = plt.subplots(int(np.ceil(len(shown) / 2)), columns, figsize=(columns * 2.2, np.ceil(len(shown) / 2) * 2.3), squeeze=False)
    top = float(np.percentile(images["flair2"][images["flair2"] > 0], 99.5))
    for ax in axes.ravel():
        ax.axis("off")
    for k, row in enumerate(shown):
        i, j = row["centre"][:2]
        z = row["slice"]
        box = (slice(max(i - CROP, 0), i + CROP), slice(max(j - CROP, 0), j + CROP), z)
        for c, name in enumerate(("flair1", "flair2")):
            ax = axes[k // 2, (k % 2) * 2 + c]
            ax.imshow(images[name][box].T, cmap="gray", vmin=0, vmax=top, origin="lower")
            ax.contour((images["pred"][box] == row["label"]).T, levels=[0.5], colors="red", linewidths=0.8)
            if images["truth"][box].any():
                ax.contour(images["truth"][box].T, levels=[0.5], colors="lime", linewidths=0.8)
            if c == 0:
                kind = "TRUE" if row["true"] else "false"
                ax.set_title(f"{kind} {row['volume_mm3']:.0f} mm³ p={row['probability']:.2f}", fontsize=7, loc="left")
            else:
                ax.set_title(f"visit 2 / 1 = {row['ratio']:.2f}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="a store made by `msnl run` on the Lesjak longitudinal folder")
    parser.add_argument("--subject", default="patient01")
    parser.add_argument("--truth", type=Path, default=REAL, help="the Lesjak longitudinal folder (default: ../shared/data's)")
    parser.add_argument("--plot", type=Path, default=None, help="save the montage here")
    args = parser.parse_args()
    rows, images = describe(args.store, args.subject, args.truth)
    print(f"{args.subject}: {len(rows)} scored predicted lesions")
    print(summary(rows))
    if args.plot:
        montage(rows, images, args.plot, f"{args.subject}: predicted new lesions, visit 1 (left) and visit 2 (right); "
                                         "red: prediction, green: truth")
        print(f"montage: {args.plot}")


if __name__ == "__main__":
    main()
