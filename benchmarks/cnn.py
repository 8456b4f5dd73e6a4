"""Step two: train the shipped weights and the leave-one-patient-out models, then score them.

    .venv/bin/python benchmarks/cnn.py --data /path/to/train-data [--ship] [--option KEY=VALUE ...]
        [--step-one KEY=VALUE ...] [--models DIR] [--no-loo]

--data holds simulated cohorts made as the model card says (sim-heldout, never trained on, and
training cohorts whose names start with sim-train or sim-real) and a work folder for step-one
results. The real Lesjak pairs come from ../shared/data. With --ship the model trained on
everything but the held-out cohort is written to msnl/weights/patch_cnn.pt. --option overrides
a CNNConfig field and --step-one a StepOneConfig field, as for `msnl train`; --models keeps the
trained models (and their per-epoch checkpoints, so a killed run resumes) in DIR instead of a
temporary folder; --no-loo skips the two leave-one-patient-out trainings.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"

from msnl.config import ConfigError, StepOneConfig  # noqa: E402
from msnl.inference import default_weights_path, load_weights  # noqa: E402
from msnl.metrics import score_lesions  # noqa: E402
from msnl.resample import resample_labels  # noqa: E402
from msnl.scan import LabelMap  # noqa: E402
from msnl.step_two import run_step_two  # noqa: E402
from pipelines.evaluate import summarise  # noqa: E402
from pipelines.train import cnn_config, collect, prepare_pairs, step_one_config, train_and_save  # noqa: E402
from storage.pairs import read_candidates, read_pair_array, read_pair_attrs  # noqa: E402
from storage.training_data import TrainingPair, read_truth  # noqa: E402


FLOOR_MM3 = StepOneConfig().min_component_mm3  # the optional floor is scored at step one's own 7 mm³


def _grid(pair: TrainingPair) -> LabelMap:
    attrs = read_pair_attrs(pair.store, pair.subject, pair.from_visit, pair.to_visit)
    brain = read_pair_array(pair.store, pair.subject, pair.from_visit, pair.to_visit, "brain")
    return LabelMap(brain > 0, np.asarray(attrs["affine"]))


def _on_truth_grid(mask: LabelMap, pair: TrainingPair) -> tuple[LabelMap, LabelMap]:
    """Prediction and truth where the truth lives (Lesjak: the common grid)."""
    if pair.transform is None:
        return mask, LabelMap(read_truth(pair, mask), mask.affine)
    import nibabel as nib

    img = nib.load(pair.truth)
    truth = LabelMap(np.asarray(img.dataobj) > 0, img.affine)
    pred = resample_labels(LabelMap(mask.data.astype(np.uint8), mask.affine), truth, pair.transform)
    return LabelMap(pred.data > 0, truth.affine), truth


def _row(score) -> dict:
    return {"dice": score.dice, "truth_lesions": score.truth_lesions, "detected": score.detected,
            "predicted_lesions": score.predicted_lesions, "true_predicted": score.true_predicted,
            "f1": score.f1, "fp_lesions": score.fp_lesions, "fp_volume_mm3": score.fp_volume_mm3}


def evaluate(model_path: Path, pairs: list[TrainingPair], min_lesion_mm3: float | None = None) -> tuple[dict, dict, list[float], list[float]]:
    """Scores of the model (with another `min_lesion_mm3` when given) and of step one alone."""
    model, cfg, _ = load_weights(model_path)
    if min_lesion_mm3 is not None:
        cfg = replace(cfg, min_lesion_mm3=min_lesion_mm3)
    cnn_rows, step_one_rows, infer_s, step_one_s = [], [], [], []
    for pair in pairs:
        grid = _grid(pair)
        table, patches = read_candidates(pair.store, pair.subject, pair.from_visit, pair.to_visit,
                                         flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
        start = time.perf_counter()
        seg = run_step_two(table, patches, grid, model, cfg)
        infer_s.append(time.perf_counter() - start)
        step_one_s.append(sum(read_pair_attrs(pair.store, pair.subject, pair.from_visit, pair.to_visit)["timings"].values()))
        pred, truth = _on_truth_grid(seg.mask, pair)
        cnn_rows.append(_row(score_lesions(pred, truth)))
        cands = read_pair_array(pair.store, pair.subject, pair.from_visit, pair.to_visit, "candidates") > 0
        pred1, truth1 = _on_truth_grid(LabelMap(cands, grid.affine), pair)
        step_one_rows.append(_row(score_lesions(pred1, truth1)))
    return summarise(cnn_rows), summarise(step_one_rows), infer_s, step_one_s


def _fmt(s: dict) -> str:
    return (f"F1 {s['lesion_f1']:.3f} (sens {s['lesion_sensitivity']:.3f}, PPV {s['lesion_ppv']:.3f}), "
            f"Dice {s['mean_dice']:.3f}, FP lesions per lesion-free pair {s['fp_lesions_per_lesion_free_pair']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ship", action="store_true", help="write the shipped weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="override a CNNConfig field")
    parser.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE",
                        help="override a StepOneConfig field (candidates made another way)")
    parser.add_argument("--models", type=Path, default=None, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--no-loo", action="store_true", help="skip the leave-one-patient-out models")
    args = parser.parse_args()
    heldout_source = args.data / "sim-heldout"
    if not heldout_source.is_dir():
        parser.error(f"{heldout_source} not found: make --data's cohorts as docs/model_card.md says")
    train_sources = sorted(p for p in args.data.iterdir() if p.is_dir() and p.name.startswith(("sim-train", "sim-real")))
    try:
        step_one, cfg = step_one_config(args.step_one), cnn_config(args.option)
    except ConfigError as exc:
        parser.error(str(exc))
    real_sources = [REAL] if REAL.is_dir() else []
    if not real_sources:
        print(f"the real pairs are not at {REAL}: training on simulated pairs only, no leave-one-patient-out models")
    pairs = prepare_pairs([*train_sources, heldout_source, *real_sources], args.data / "work", step_one, progress=False)
    by_source = {}
    for p in pairs:
        by_source.setdefault(Path(p.source).name, []).append(p)
    sim_train = [p for s in train_sources for p in by_source.get(s.name, [])]
    heldout = by_source.get(heldout_source.name, [])
    real = by_source.get(REAL.name, [])
    print(f"CNN config overrides: {args.option or 'none'}; step-one overrides: {args.step_one or 'none'}")
    with tempfile.TemporaryDirectory() as scratch:
        models = args.models or Path(scratch)
        models.mkdir(parents=True, exist_ok=True)
        ship = default_weights_path() if args.ship else models / "all.pt"
        data = collect(sim_train + real, flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
        start = time.perf_counter()
        train_and_save(data, ship, cfg, args.seed)
        print(f"training on {len(sim_train)} simulated + {len(real)} real pairs: "
              f"{(time.perf_counter() - start) / (cfg.epochs * cfg.ensemble_size):.1f} s per epoch and member (CPU, 2 cores)")
        cnn, one, infer_s, step_one_s = evaluate(ship, heldout)
        print(f"CNN inference on the held-out pairs: {np.mean(infer_s):.1f} s per pair "
              f"({np.mean(np.asarray(infer_s) / np.asarray(step_one_s)):.1%} of step one)")
        print(f"held-out simulated cohort ({len(heldout)} pairs, seed 999): CNN {_fmt(cnn)}")
        print(f"                                     step one alone: {_fmt(one)}")
        floored, _, _, _ = evaluate(ship, heldout, FLOOR_MM3)
        print(f"  with lesions under {FLOOR_MM3:g} mm³ dropped (min_lesion_mm3): CNN {_fmt(floored)}")
        for held in [] if args.no_loo else real:
            others = [p for p in real if p is not held]
            model_path = models / f"without-{held.subject}.pt"
            train_and_save(collect(sim_train + others, flair_input=cfg.flair_input, context_voxels=cfg.context_voxels, progress=False), model_path, cfg, args.seed, progress=False)
            cnn, one, infer, s1 = evaluate(model_path, [held])
            print(f"leave {held.subject} out: CNN {_fmt(cnn)}")
            print(f"{'':>{len('leave ' + held.subject + ' out: ')}}step one alone: {_fmt(one)}")
            floored, _, _, _ = evaluate(model_path, [held], FLOOR_MM3)
            print(f"  with lesions under {FLOOR_MM3:g} mm³ dropped (min_lesion_mm3): CNN {_fmt(floored)}")
            print(f"  CNN inference on its {read_pair_attrs(held.store, held.subject, '1', '2')['n_candidates']} candidates: "
                  f"{infer[0]:.1f} s (step one took {s1[0]:.0f} s when these results were made)")


if __name__ == "__main__":
    main()
