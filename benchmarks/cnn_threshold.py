"""Step two's lesion scores against the threshold, for weights that already exist.

    .venv/bin/python benchmarks/cnn_threshold.py --data /path/to/train-data --on heldout \
        [--weights A.pt [B.pt ...]] [--option 'test_time_flip_axes=[0,1]'] [--plot docs/cnn_threshold.png]

Scores the held-out simulated cohort (--on heldout) or one real Lesjak patient (--on
patient01) at thresholds from 0.5 to 0.95, and at 0.75 with the 7 mm³ floor. The members of
every --weights file are averaged as one ensemble (none: the shipped weights), so members
trained apart can be scored together before `msnl combine-weights` joins them. --option
overrides an inference field of the weights' config (test_time_flip_axes=[0,1]). The network
runs once per pair; only the threshold changes. A diagnosis, not a way to pick the threshold:
0.75 is the paper's, and the held-out cohort is not a validation split. --step-one KEY=VALUE
scores candidates made with that StepOneConfig field changed (step one runs again where its
stored results were made otherwise); unlike `msnl run`, it does not refuse weights trained on
other candidates, so it can show what such a mismatch costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnn import FLOOR_MM3, REAL, _grid, _on_truth_grid, _row  # noqa: E402  (benchmarks/cnn.py)
from msnl.cnn import as_model, members_of  # noqa: E402
from msnl.config import INFERENCE_FIELDS, ConfigError  # noqa: E402
from msnl.inference import load_weights, segment  # noqa: E402
from msnl.metrics import score_lesions  # noqa: E402
from msnl.step_two import stitched_logits  # noqa: E402
from pipelines.evaluate import summarise  # noqa: E402
from pipelines.train import inference_options, prepare_pairs, step_one_config  # noqa: E402
from storage.pairs import read_candidates  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--on", required=True, help="heldout, or a Lesjak subject (patient01, patient12)")
    parser.add_argument("--weights", type=Path, nargs="*", default=[])
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override an inference field of the weights' config: {', '.join(INFERENCE_FIELDS)}")
    parser.add_argument("--plot", type=Path, default=None, help="save sensitivity, PPV and F1 against the threshold")
    parser.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE",
                        help="candidates from step one with this StepOneConfig field changed, as msnl train --step-one")
    args = parser.parse_args()
    source = args.data / "sim-heldout" if args.on == "heldout" else REAL
    if not source.is_dir():
        parser.error(f"{source} not found: make it as docs/model_card.md says (or --on heldout without ../shared)")
    try:
        step_one = step_one_config(args.step_one)
    except ConfigError as exc:
        parser.error(str(exc))
    pairs = [p for p in prepare_pairs([source], args.data / "work", step_one, progress=False)
             if args.on == "heldout" or p.subject == args.on]
    if not pairs:
        parser.error(f"no step-one results for {args.on!r} under {args.data / 'work'}")
    loaded = [load_weights(w) for w in args.weights] or [load_weights()]
    if any(c.flair_input != loaded[0][1].flair_input for _, c, _ in loaded):
        parser.error("the weights files read different FLAIR inputs; they cannot be one ensemble")
    try:
        cfg = loaded[0][1].with_inference(**inference_options(args.option))
    except ConfigError as exc:
        parser.error(str(exc))
    model = as_model([m for net, _, _ in loaded for m in members_of(net)]).eval()
    infra_mm = step_one.infratentorial_dmz_mm
    stitched, seconds, reading = [], 0.0, 0.0
    for pair in pairs:
        start = time.perf_counter()
        table, patches = read_candidates(pair.store, pair.subject, pair.from_visit, pair.to_visit,
                                         flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
        grid = _grid(pair)
        reading += time.perf_counter() - start
        start = time.perf_counter()
        stitched.append((pair, grid, *stitched_logits(table, patches, grid, model, cfg)))
        seconds += time.perf_counter() - start

    def scores(threshold: float, floor: float) -> dict:
        c = replace(cfg, threshold=threshold, min_lesion_mm3=floor)
        return summarise([_row(score_lesions(*_on_truth_grid(segment(v, z, g, c, infra_mm).mask, p))) for p, g, v, z in stitched])

    print(f"{args.on}: {len(pairs)} pair(s), {len(members_of(model))} member(s) from "
          f"{', '.join(str(w) for w in args.weights) or 'the shipped weights'}; test-time flips along "
          f"{list(cfg.test_time_flip_axes) or 'no axis'}; network and stitching {seconds / len(pairs):.1f} s per pair, "
          f"reading the patches {reading / len(pairs):.1f} s")
    print(f"{'threshold':>9} {'floor':>6} {'F1':>6} {'sens':>6} {'PPV':>6} {'Dice':>6} {'FP/free':>8}")
    rows = []
    for threshold, floor in [(t, 0.0) for t in THRESHOLDS] + [(cfg.threshold, FLOOR_MM3)]:
        s = scores(threshold, floor)
        rows.append((threshold, floor, s))
        print(f"{threshold:9.2f} {floor:6g} {s['lesion_f1']:6.3f} {s['lesion_sensitivity']:6.3f} {s['lesion_ppv']:6.3f} "
              f"{s['mean_dice']:6.3f} {s['fp_lesions_per_lesion_free_pair']:8.2f}")
    if args.plot:
        _plot([r for r in rows if r[1] == 0.0], cfg.threshold, f"{args.on}, {len(members_of(model))} member(s)", args.plot)
        print(f"plot: {args.plot}")


def _plot(rows, default: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    t = [r[0] for r in rows]
    for key, label in (("lesion_f1", "lesion F1"), ("lesion_sensitivity", "sensitivity"), ("lesion_ppv", "PPV")):
        ax.plot(t, [r[2][key] for r in rows], marker="o", label=label)
    ax.axvline(default, color="grey", linestyle="--", linewidth=1, label=f"paper's {default:g}")
    ax.set_xlabel("threshold on the stitched probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
