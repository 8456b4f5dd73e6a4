"""One frozen, typed configuration per step. Every number from the paper lives here, once.

Source: ../shared/seed-paper.txt (MSSEG-2 hybrid new-lesion pipeline), cited per field.
Spatial parameters are in millimetres, never voxels, except where the paper itself counts voxels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from msnl.errors import MsnlError


class ConfigError(MsnlError):
    """A configuration value is out of its valid range."""


@dataclass(frozen=True)
class StepOneConfig:
    """Step one: preprocessing and candidate new-lesion ROIs."""

    # Paper §1: "corrected for bias field with the N4 algorithm".
    n4_shrink_factor: int = 4
    # Paper §1: rigid registration with ANTs, then "an affine registration of the two FLAIRs".
    registration: Literal["rigid+affine"] = "rigid+affine"
    # Paper §1 uses FSL bet; bet is not available as a wheel, deepbet ships its weights in one.
    brain_mask_method: Literal["deepbet"] = "deepbet"
    brain_mask_threshold: float = 0.5
    # Paper §1: histogram matching "considering the second visit as the reference".
    histogram_bins: int = 255
    histogram_match_points: int = 64
    # Paper §1: "intensities were discretized on 6 levels of grey".
    grey_levels: int = 6
    # Upper edge of the grey levels: this percentile of visit 2's brain intensities (ours).
    grey_level_percentile: float = 99.5
    # Paper §1: "we chose a threshold of 1.15 to include 85% of ground truth voxels".
    ratio_threshold: float = 1.15
    # Paper §1: "We used an opening of one millimeter to individualize adjacent structures".
    opening_radius_mm: float = 1.0
    # Paper §1: connected components, "deleted those below 7 mm³".
    min_component_mm3: float = 7.0
    # Paper §1: "We eroded by 1mm the brain mask to avoid ROIs in the pial surface".
    brain_erosion_mm: float = 1.0
    # Paper §1: "crop a patch with a padding of two voxels" (the paper counts voxels here).
    patch_padding_voxels: int = 2
    # Paper §2.1: infratentorial patches are identified "based on a threshold in the DMz".
    # The value is not given; 90 mm below the vertex is about the tentorium in adults (ours).
    infratentorial_dmz_mm: float = 90.0
    # Quality control (ours): plainly failed registration or implausible brain masks.
    min_registration_correlation: float = 0.5
    brain_volume_ml: tuple[float, float] = (600.0, 2500.0)

    def __post_init__(self) -> None:
        checks = {
            "grey_levels": self.grey_levels >= 2,
            "ratio_threshold": self.ratio_threshold > 0,
            "opening_radius_mm": self.opening_radius_mm >= 0,
            "min_component_mm3": self.min_component_mm3 >= 0,
            "brain_erosion_mm": self.brain_erosion_mm >= 0,
            "patch_padding_voxels": self.patch_padding_voxels >= 0,
            "grey_level_percentile": 50 < self.grey_level_percentile <= 100,
            "brain_mask_threshold": 0 < self.brain_mask_threshold < 1,
            "brain_volume_ml": 0 <= self.brain_volume_ml[0] < self.brain_volume_ml[1],
            "n4_shrink_factor": self.n4_shrink_factor >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ConfigError(f"invalid step-one configuration: {values}. See msnl/config.py for valid ranges.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StepOneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown step-one configuration keys: {', '.join(unknown)}")
        cleaned = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**cleaned)

    def digest(self) -> str:
        """SHA-256 of the configuration, the key under which its results are stored."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
