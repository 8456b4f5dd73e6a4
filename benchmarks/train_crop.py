"""How much of the truth in TP training patches the centre crop shows the network.

    .venv/bin/python benchmarks/train_crop.py --work WORK SOURCE [SOURCE ...] [--step-one KEY=VALUE]

Training crops a patch larger than `CNNConfig.train_max_patch` (32 x 32 x 8 voxels). With
`train_crop="centre"` (the default) the crop is made once, round the patch's centre, so truth
voxels of a large patch outside it are never trained on, though inference predicts the whole
patch. `train_crop="random"` crops at every draw round a truth voxel drawn at random, so over
the epochs it reaches every truth voxel of the TP patches. Per pair, this prints the TP patches,
those larger than the crop, the truth voxels in TP patches and those inside their centre crops,
then the totals. SOURCE and --work are as for `msnl train`; step one runs where it has not yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnn import _grid  # noqa: E402  (benchmarks/cnn.py)
from msnl.config import CNNConfig, ConfigError  # noqa: E402
from msnl.inference import boxes_of  # noqa: E402
from msnl.patches import centre_window  # noqa: E402
from pipelines.train import prepare_pairs, step_one_config  # noqa: E402
from storage.pairs import read_candidate_table  # noqa: E402
from storage.training_data import read_truth  # noqa: E402


def coverage(pair, max_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(TP patches, those larger than `max_shape`, truth voxels in TP patches, in their centre crops)."""
    truth = read_truth(pair, _grid(pair)) > 0
    in_tp, in_crop = np.zeros(truth.shape, bool), np.zeros(truth.shape, bool)
    tp = large = 0
    for lo, hi in boxes_of(read_candidate_table(pair.store, pair.subject, pair.from_visit, pair.to_visit)):
        lo, shape = np.asarray(lo), np.asarray(hi) - np.asarray(lo)
        box = tuple(slice(a, a + n) for a, n in zip(lo, shape))
        if not truth[box].any():
            continue
        tp += 1
        large += bool((shape > max_shape).any())
        in_tp[box] = True
        in_crop[tuple(slice(a + w.start, a + w.stop) for a, w in zip(lo, centre_window(shape, max_shape)))] = True
    return tp, large, int((truth & in_tp).sum()), int((truth & in_crop).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--work", type=Path, required=True, help="step-one results, as msnl train --work")
    parser.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE",
                        help="StepOneConfig overrides, as msnl train --step-one")
    args = parser.parse_args()
    try:
        step_one = step_one_config(args.step_one)
    except ConfigError as exc:
        parser.error(str(exc))
    max_shape = CNNConfig().train_max_patch
    totals = np.zeros(4, int)
    print(f"{'pair':<44} {'TP patches':>10} {'larger':>7} {'truth in TP':>12} {'in centre crop':>15}")
    for pair in prepare_pairs(args.sources, args.work, step_one, progress=False):
        row = coverage(pair, max_shape)
        totals += row
        print(f"{pair.name:<44} {row[0]:>10} {row[1]:>7} {row[2]:>12} {row[3]:>15}")
    share = totals[3] / totals[2] if totals[2] else float("nan")
    print(f"{'all':<44} {totals[0]:>10} {totals[1]:>7} {totals[2]:>12} {totals[3]:>15}  "
          f"({share:.0%} of the truth in TP patches is ever trained on with train_crop=centre)")


if __name__ == "__main__":
    main()
