"""Quality control of a visit pair: did registration work, are the brain masks plausible?"""

from __future__ import annotations

import numpy as np

from msnl.config import StepOneConfig
from msnl.errors import QualityControlError
from msnl.scan import LabelMap, Scan


def brain_correlation(a: Scan, b: Scan, brain: LabelMap) -> float:
    """Pearson correlation of two images inside the brain; near 1 after a good registration."""
    if brain.data.sum() < 2:
        return float("nan")
    x, y = a.data[brain.data].astype(np.float64), b.data[brain.data].astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def check_brain_volume(brain: LabelMap, which: str, cfg: StepOneConfig) -> float:
    """Brain volume in ml; raises `QualityControlError` when it is far from a human brain's."""
    volume_ml = float(brain.data.sum()) * brain.voxel_volume / 1000.0
    low, high = cfg.brain_volume_ml
    if not low <= volume_ml <= high:
        raise QualityControlError(
            "implausible_brain_mask",
            f"the brain mask of {which} holds {volume_ml:.0f} ml, outside the plausible "
            f"{low:.0f}-{high:.0f} ml of a human brain: the scan may hold no brain, be cut by a "
            "small field of view, or not be a head FLAIR. Check the scan; if it is a partial-"
            "coverage protocol, widen StepOneConfig.brain_volume_ml.",
            {f"brain_volume_ml_{which.replace(' ', '')}": volume_ml},
        )
    return volume_ml


def check_registration(correlation: float, cfg: StepOneConfig) -> None:
    if not np.isfinite(correlation) or correlation < cfg.min_registration_correlation:
        raise QualityControlError(
            "registration_failed",
            f"after registration, visit 1 and visit 2 correlate at {correlation:.2f} inside the "
            f"brain (at least {cfg.min_registration_correlation} expected): the registration "
            "plainly failed, or the two scans are not of the same head. Check that both visits "
            "belong to this subject and cover the same anatomy.",
            {"registration_correlation": correlation},
        )


# Ours: processed pairs whose registered visits correlate less than this inside the brain are
# flagged for a human look (they passed QC, but good pairs sit near 0.9 and above).
REVIEW_REGISTRATION_CORRELATION = 0.8
