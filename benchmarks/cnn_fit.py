"""Where a weights file's lesion-wise errors on a real Lesjak pair come from, and how well it fits
that pair's own training patches.

    .venv/bin/python benchmarks/cnn_fit.py --data /path/to/train-data --on patient12 \
        [--weights W.pt] [--step-one match_resolution_ratio=1.5]

For the weights (none: the shipped ones), predicting once and with the test-time flips their
config sets (or along patch axes 0 and 1 when it sets none), this prints:

- the pair's truth lesions: scored, reachable (at least 10 % of their voxels in step one's patch
  boxes, so a perfect step two could detect them), and detected by the network;
- its predicted lesions: true and false, then the false ones on the network's own grid by
  volume (under 7 mm³, 7–20 mm³, 20 mm³ and more), and how many of them the closest-centre
  stitching gives to patch boxes larger than the training crop (`train_max_patch`);
- the pair's patches as `msnl train` takes them (cropped as the config's `train_crop` says),
  each predicted on its own: TP patches with no voxel above the threshold, FP patches with any.

Scored with `msnl evaluate`'s rules at the weights' threshold (the paper's 0.75). On a pair the
weights were trained on, this tells a network that cannot fit its data from a step one that
cannot reach the lesions. --data and --step-one are as for benchmarks/cnn_threshold.py.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnn import REAL, _grid, _on_truth_grid  # noqa: E402  (benchmarks/cnn.py)
from msnl.cnn import as_model, members_of  # noqa: E402
from msnl.inference import boxes_of, load_weights, predict_patches, segment, stitch  # noqa: E402
from msnl.metrics import DETECTION_FRACTION, lesions, score_lesions  # noqa: E402
from msnl.patches import centre_crop  # noqa: E402
from msnl.scan import LabelMap  # noqa: E402
from msnl.step_two import stitched_logits  # noqa: E402
from pipelines.train import prepare_pairs, step_one_config  # noqa: E402
from storage.pairs import read_candidates  # noqa: E402
from storage.training_data import pair_patches, read_truth  # noqa: E402
from step_two_bound import box_union  # noqa: E402  (benchmarks/step_two_bound.py)

SIZE_BINS_MM3 = (7.0, 20.0)


def lesion_report(pair, model, cfg, infra_mm: float) -> list[str]:
    """Truth lesions reached and detected, and false lesions by volume and by owning box."""
    table, patches = read_candidates(pair.store, pair.subject, pair.from_visit, pair.to_visit,
                                     flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
    grid = _grid(pair)
    boxes = boxes_of(table)
    logits, dmz = stitched_logits(table, patches, grid, model, cfg)
    mask = segment(logits, dmz, grid, cfg, infra_mm).mask
    pred, truth = _on_truth_grid(mask, pair)
    reach, _ = _on_truth_grid(LabelMap(box_union(boxes, grid.shape), grid.affine), pair)
    t_labels, t_scored = lesions(truth)
    reachable = np.asarray(ndimage.mean(reach.data, t_labels, t_scored)) >= DETECTION_FRACTION
    detected = np.asarray(ndimage.mean(pred.data, t_labels, t_scored)) >= DETECTION_FRACTION
    score = score_lesions(pred, truth)
    # false lesions on the network's own grid, where each voxel has the box that stitching gave it
    owner = stitch([np.full(np.subtract(hi, lo), n, np.float32) for n, (lo, hi) in enumerate(boxes)], boxes,
                   grid.shape, grid.spacing, fill=-1).astype(int)
    truth_here = read_truth(pair, grid) > 0
    g_labels, g_scored = lesions(mask)
    sizes, big = [], 0
    for label in g_scored:
        voxels = g_labels == label
        if truth_here[voxels].mean() >= DETECTION_FRACTION:
            continue
        sizes.append(voxels.sum() * mask.voxel_volume)
        lo, hi = boxes[int(np.bincount(owner[voxels] + 1).argmax()) - 1]
        big += bool(np.any(np.subtract(hi, lo) > np.asarray(cfg.train_max_patch)))
    bins = np.bincount(np.digitize(sizes, SIZE_BINS_MM3), minlength=3)
    return [
        f"  lesion F1 {score.f1:.3f} (sensitivity {score.sensitivity:.3f}, PPV {score.ppv:.3f})",
        f"  truth lesions {len(t_scored)}: reachable {int(reachable.sum())}, detected {int(detected.sum())} "
        f"({int((detected & reachable).sum())} of the reachable)",
        f"  predicted lesions {score.predicted_lesions}: true {score.true_predicted}, false {score.fp_lesions}",
        f"  on the network's grid, {len(sizes)} false lesions: under 7 mm³ {bins[0]}, 7-20 mm³ {bins[1]}, "
        f"20 mm³ and more {bins[2]}; {big} owned by boxes larger than the training crop {tuple(cfg.train_max_patch)}",
    ]


def patch_report(pair, model, cfg) -> str:
    """The pair's patches as training takes them, each predicted on its own."""
    items, _ = pair_patches(pair, flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
    if cfg.train_crop == "centre":
        items = [(*centre_crop(patch, truth, cfg.train_max_patch), infra, own) for patch, truth, infra, own in items]
    logits = predict_patches(model, [patch for patch, *_ in items], cfg)
    above = [1 / (1 + np.exp(-lg)) > cfg.threshold for lg in logits]
    tp = [(a, truth) for a, (_, truth, *_) in zip(above, items) if truth.any()]
    fp = [a for a, (_, truth, *_) in zip(above, items) if not truth.any()]
    missed = sum(not (a & truth).any() for a, truth in tp)
    flagged = sum(a.any() for a in fp)
    return (f"  training patches ({cfg.train_crop} crop): {missed} of {len(tp)} TP (truth in the crop) with no truth voxel above "
            f"{cfg.threshold:g}; {flagged} of {len(fp)} FP ({flagged / max(len(fp), 1):.1%}) with a voxel above it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--on", required=True, help="a Lesjak subject (patient01, patient12)")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE",
                        help="a StepOneConfig field, for candidates made otherwise than the paper's")
    args = parser.parse_args()
    if not REAL.is_dir():
        parser.error(f"{REAL} not found: this needs the real Lesjak pairs beside the repository")
    step_one = step_one_config(args.step_one)
    pairs = [p for p in prepare_pairs([REAL], args.data / "work", step_one, progress=False) if p.subject == args.on]
    if not pairs:
        parser.error(f"no step-one results for {args.on!r} under {args.data / 'work'}")
    net, cfg, _ = load_weights(args.weights)
    model = as_model(members_of(net)).eval()
    views = cfg.test_time_flip_axes or (0, 1)
    print(f"{args.on}, {args.weights or 'the shipped weights'}, threshold {cfg.threshold:g}")
    for axes in ((), views):
        c = replace(cfg, test_time_flip_axes=axes)
        print(f"test-time flips along {list(axes) or 'no axis'}:")
        for line in lesion_report(pairs[0], model, c, step_one.infratentorial_dmz_mm):
            print(line)
        print(patch_report(pairs[0], model, c))


if __name__ == "__main__":
    main()
