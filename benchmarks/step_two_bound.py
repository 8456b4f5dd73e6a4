"""How many truth lesions step two can reach at all, on the held-out cohort and the real pairs.

    .venv/bin/python benchmarks/step_two_bound.py --data /path/to/train-data

The CNN labels voxels only inside step one's patch boxes (each candidate's bounding box with
step one's padding), so a truth lesion none of whose boxes holds 10 % of its voxels can never
be detected. Per pair, this prints the truth lesions that the candidate voxels detect and the
lesions that the union of the boxes detects, both with `msnl evaluate`'s rules, then the
sensitivity of each and the F1 it would give with a PPV of 1: the most a perfect step two could
score on these candidates. --data is as for benchmarks/cnn.py (sim-heldout and a work folder
of step-one results); the real Lesjak pairs come from ../shared/data when it is there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnn import REAL, _grid, _on_truth_grid  # noqa: E402  (benchmarks/cnn.py)
from msnl.inference import boxes_of  # noqa: E402
from msnl.metrics import score_lesions  # noqa: E402
from msnl.scan import LabelMap  # noqa: E402
from pipelines.train import prepare_pairs  # noqa: E402
from storage.pairs import read_candidate_table, read_pair_array  # noqa: E402


def box_union(boxes, shape: tuple[int, int, int]) -> np.ndarray:
    """The voxels of a grid of `shape` inside any of the patch `boxes` (msnl.inference.boxes_of)."""
    out = np.zeros(shape, bool)
    for lo, hi in boxes:
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out


def reach(pair) -> dict[str, tuple[int, int]]:
    """(detected, scored truth lesions) for the candidate voxels and for the union of the boxes."""
    grid = _grid(pair)
    boxes = box_union(boxes_of(read_candidate_table(pair.store, pair.subject, pair.from_visit, pair.to_visit)),
                      grid.data.shape)
    candidates = read_pair_array(pair.store, pair.subject, pair.from_visit, pair.to_visit, "candidates") > 0
    out = {}
    for name, mask in (("candidates", candidates), ("boxes", boxes)):
        score = score_lesions(*_on_truth_grid(LabelMap(mask, grid.affine), pair))
        out[name] = (score.detected, score.truth_lesions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    if not (args.data / "sim-heldout").is_dir():
        parser.error(f"{args.data / 'sim-heldout'} not found: make it as docs/model_card.md says")
    sources = [args.data / "sim-heldout", *([REAL] if REAL.is_dir() else [])]
    totals: dict[tuple[str, str], list[int]] = {}
    print(f"{'set':<12} {'pair':<10} {'candidates':>10} {'boxes':>6}")
    for pair in prepare_pairs(sources, args.data / "work", progress=False):
        group = "held out" if Path(pair.source).name == "sim-heldout" else pair.subject
        counts = reach(pair)
        (cd, ct), (bd, bt) = counts["candidates"], counts["boxes"]
        print(f"{group:<12} {pair.subject:<10} {f'{cd}/{ct}':>10} {f'{bd}/{bt}':>6}")
        for name, (d, t) in counts.items():
            total = totals.setdefault((group, name), [0, 0])
            total[0] += d
            total[1] += t
    for (group, name), (d, t) in totals.items():
        sens = d / t if t else float("nan")
        print(f"{group}, {name}: {d} of {t} lesions reachable, sensitivity {sens:.3f}, "
              f"F1 at most {2 * sens / (1 + sens):.3f}")


if __name__ == "__main__":
    main()
