"""`msnl evaluate PRED TRUTH`: MSSEG-2 style scores, per pair and in summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from msnl.errors import InputError
from msnl.metrics import score_lesions
from msnl.resample import resample_labels
from storage.masks import dataset_truth_forms, dataset_truths, find_masks, read_mask


def evaluate(pred: str | Path, truth: str | Path, desc: str | None = None) -> dict:
    """Scores of every prediction against its truth; in folders, only masks with `desc-<desc>`
    in their names when `desc` is given. Truth of a public dataset's patient folders (Lesjak,
    MSSEG-2: the dataset's folder, a patient folder or its truth file) is matched to the
    `sub-<patient>_ses-<visit>` masks `msnl export` writes; Lesjak truth is brought onto the
    prediction's grid through the patient's transform to visit 2, as `msnl train` and the
    benchmarks do."""
    preds = find_masks(pred, desc)  # first, so that two bad arguments are named in their order
    dataset = dataset_truths(truth)
    truths = {k: mask for k, (mask, _) in dataset.items()} if dataset else find_masks(truth, desc, also=dataset_truth_forms())
    transforms = {mask: transform for mask, transform in dataset.values() if transform} if dataset else {}
    if len(preds) == 1 and len(truths) == 1:
        pairs = [(next(iter(preds)), next(iter(preds.values())), next(iter(truths.values())))]
    else:
        missing = sorted(set(truths) - set(preds))
        if missing:
            raise InputError(f"has no prediction for {', '.join(f'sub-{s} ses-{v}' for s, v in missing)}.", pred)
        pairs = [(k, preds[k], truths[k]) for k in sorted(truths)]
    rows = []
    for (subject, session), p_path, t_path in pairs:
        p, t = read_mask(p_path), read_mask(t_path)
        if t_path in transforms:  # the truth onto the prediction's grid (visit 2's), nearest neighbour
            t, resampled = resample_labels(t, p, transforms[t_path], invert=True), "truth"
        elif p.shape != t.shape or not np.allclose(p.affine, t.affine, atol=1e-3):
            p, resampled = resample_labels(p, t), "prediction"  # onto the truth's grid through world coordinates
        else:
            resampled = None
        s = score_lesions(p, t)
        rows.append({
            "subject": subject, "session": session, "prediction": str(p_path), "truth": str(t_path),
            "resampled": resampled, "dice": s.dice, "truth_lesions": s.truth_lesions, "detected": s.detected,
            "predicted_lesions": s.predicted_lesions, "true_predicted": s.true_predicted,
            "sensitivity": s.sensitivity, "ppv": s.ppv, "f1": s.f1,
            "fp_lesions": s.fp_lesions, "fp_volume_mm3": s.fp_volume_mm3,
        })
    return {"pairs": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    with_lesions = [r for r in rows if r["truth_lesions"] > 0]
    free = [r for r in rows if r["truth_lesions"] == 0]
    truth_n = sum(r["truth_lesions"] for r in rows)
    pred_n = sum(r["predicted_lesions"] for r in rows)
    sens = sum(r["detected"] for r in rows) / truth_n if truth_n else math.nan
    ppv = sum(r["true_predicted"] for r in rows) / pred_n if pred_n else math.nan
    f1 = 2 * sens * ppv / (sens + ppv) if truth_n and pred_n and sens + ppv else (0.0 if truth_n else math.nan)
    return {
        "pairs": len(rows), "pairs_with_new_lesions": len(with_lesions), "lesion_free_pairs": len(free),
        "mean_dice": float(np.mean([r["dice"] for r in with_lesions])) if with_lesions else math.nan,
        "lesion_sensitivity": sens, "lesion_ppv": ppv, "lesion_f1": f1,
        "mean_pair_f1": float(np.nanmean([r["f1"] for r in with_lesions])) if with_lesions else math.nan,
        "fp_lesions_per_lesion_free_pair": float(np.mean([r["fp_lesions"] for r in free])) if free else math.nan,
        "fp_volume_mm3_per_lesion_free_pair": float(np.mean([r["fp_volume_mm3"] for r in free])) if free else math.nan,
    }


def format_report(report: dict) -> str:
    lines = [f"{'subject':<10} {'session':<8} {'dice':>6} {'truth':>6} {'found':>6} {'pred':>6} {'TP pred':>8} {'F1':>6} {'FP vol mm3':>10}"]
    for r in report["pairs"]:
        lines.append(f"{r['subject'] or '-':<10} {r['session'] or '-':<8} {r['dice']:6.3f} {r['truth_lesions']:6d} {r['detected']:6d} "
                     f"{r['predicted_lesions']:6d} {r['true_predicted']:8d} {r['f1']:6.3f} {r['fp_volume_mm3']:10.1f}")
    s = report["summary"]
    lines += ["", f"pairs: {s['pairs']} ({s['pairs_with_new_lesions']} with new lesions, {s['lesion_free_pairs']} lesion-free)",
              f"mean Dice (pairs with lesions): {s['mean_dice']:.3f}",
              f"lesion-wise: sensitivity {s['lesion_sensitivity']:.3f}, PPV {s['lesion_ppv']:.3f}, F1 {s['lesion_f1']:.3f}",
              f"lesion-free pairs: {s['fp_lesions_per_lesion_free_pair']:.2f} FP lesions and "
              f"{s['fp_volume_mm3_per_lesion_free_pair']:.1f} mm³ per pair" if s["lesion_free_pairs"]
              else "lesion-free pairs: none, so no false-positive count"]
    return "\n".join(lines)


def _no_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def to_json(report: dict) -> str:
    """The report as JSON; undefined figures (NaN) become null."""
    return json.dumps(_no_nan(report), indent=1)
