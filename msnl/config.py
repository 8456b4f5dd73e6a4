"""One frozen, typed configuration per step. Every number from the paper lives here, once.

Source: ../shared/seed-paper.txt (MSSEG-2 hybrid new-lesion pipeline), cited per field.
Spatial parameters are in millimetres, never voxels, except where the paper itself counts voxels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from msnl.errors import MsnlError


class ConfigError(MsnlError):
    """A configuration value is out of its valid range."""


class _Serialisable:
    """Round-trips a frozen config through plain JSON types, and names it by a digest."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    # Optional steps added after results were first stored: left at None (off) they are not
    # part of the digest, so results made before they existed keep their keys.
    _OFF_WHEN_NONE: tuple[str, ...] = ()

    def digest(self) -> str:
        """SHA-256 of the configuration, the key under which its results are stored."""
        values = {k: v for k, v in self.to_dict().items() if not (k in self._OFF_WHEN_NONE and v is None)}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StepOneConfig(_Serialisable):
    """Step one: preprocessing and candidate new-lesion ROIs."""

    # Paper §1: "corrected for bias field with the N4 algorithm".
    n4_shrink_factor: int = 4
    # Paper §1: rigid registration with ANTs, then "an affine registration of the two FLAIRs".
    registration: Literal["rigid+affine"] = "rigid+affine"
    # Ours: ANTs samples metric points at random. A fixed seed makes a registration repeatable
    # on a single-threaded worker (ITK's threads still change the sums, hence one per worker).
    registration_seed: int = 1
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
    # Ours, off by default (the paper has no such step): where one visit's voxels reach at least
    # this many times further than the other's along one of the other's axes (thick slices
    # across a direction the other visit resolves), box-average the other along it over that
    # reach, so tissue that one visit resolves and the other blurs does not look new or gone.
    # The reach is measured between the two headers, before registration, so a head that lies
    # tilted differently in the scanner counts as tilted slices even where registration lines
    # the slice stacks up: real patient01's grids are 9.5 degrees apart (ratio 1.87 in plane),
    # its registered slices 2.6 (1.35), so this blurs it at 1.5 although msnl.qc's
    # resolution_ratio (1.33) leaves it unflagged. docs/benchmarks.md has figures with and without.
    match_resolution_ratio: float | None = None

    _OFF_WHEN_NONE = ("match_resolution_ratio",)

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
            "match_resolution_ratio": self.match_resolution_ratio is None or self.match_resolution_ratio >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ConfigError(f"invalid step-one configuration: {values}. See msnl/config.py for valid ranges.")

    def candidate_settings(self) -> dict[str, Any]:
        """The fields that decide which candidates step one finds and what their patches hold
        (CANDIDATE_FIELDS): weights record them, and inference refuses candidates made otherwise."""
        return {name: getattr(self, name) for name in CANDIDATE_FIELDS}


# Step one's fields that shape the CNN's input: the grey levels, which voxels become candidates,
# the patch cut round each, and resolution matching (it blurs what the patches hold). The rest
# (N4, registration, mask, QC) changes the images a little, not the kind of patch the network
# learnt from.
CANDIDATE_FIELDS = ("grey_levels", "grey_level_percentile", "ratio_threshold", "opening_radius_mm",
                    "min_component_mm3", "brain_erosion_mm", "patch_padding_voxels", "match_resolution_ratio")


@dataclass(frozen=True)
class CNNConfig(_Serialisable):
    """Step two: the patch CNN, its training and its inference."""

    # Channel widths of conv1..conv6 (ours: the paper's figure is not available). Narrow and
    # shallow on purpose: patches are small (a few hundred voxels), training data is limited,
    # and a net without pooling over-fits easily (paper §2.3); ~0.1 M parameters.
    widths: tuple[int, int, int, int, int, int] = (16, 32, 32, 32, 32, 16)
    # Input scaling to ~[0, 1] (ours): grey levels, then DM, DMz, DMx in mm.
    input_scale: tuple[float, float, float, float, float] = (6.0, 6.0, 20.0, 150.0, 200.0)
    # Paper §2.1: "Each training batch included 32 patches".
    batch_size: int = 32
    # Paper §2.3: 20 epochs, Adam from lr 0.001, "decaying it by 0.1 every 4 epochs".
    epochs: int = 20
    learning_rate: float = 1e-3
    lr_decay: float = 0.1
    lr_step_epochs: int = 4
    # Decoupled weight decay (AdamW's; ours, the paper's Adam has none). The shipped recipe's
    # networks fit the simulated pairs they train on far better than unseen ones
    # (docs/benchmarks.md); this pulls every weight towards 0 by lr x weight_decay per step.
    # 0 keeps the paper's. Figures: docs/benchmarks.md.
    weight_decay: float = 0.0
    # Paper §2.1: 30% extra patches; 85% of them infratentorial (33% TP, 67% FP), 15%
    # supratentorial FP.
    extra_share: float = 0.30
    # Share of TP patches among the balanced (non-extra) draws (ours; the paper's "equal
    # numbers" is 0.5). Lower values show the net more FP patches, nearer the ~1 % of
    # candidates that are new lesions at inference. Figures: docs/benchmarks.md.
    tp_share: float = 0.5
    # Draw the balanced TP and FP patches so that every training source (a folder given to
    # `msnl train`) gets an equal share of each (ours; the paper draws patches uniformly). A
    # team's few labelled pairs in a folder of their own then weigh as much as a large
    # simulated cohort. The extras are drawn as before. Figures: docs/benchmarks.md.
    balance_sources: bool = False
    # Patches per epoch, extras included (ours: the paper doesn't say). None means one pass
    # over the TP patches (2 x #TP, plus extras); with a few hundred TP patches that is only
    # ~20 batches, too few steps before the learning rate decays, so we fix the epoch's size.
    patches_per_epoch: int | None = 1024
    extra_infratentorial: float = 0.85
    extra_infratentorial_tp: float = 0.33
    # Paper §2.1: torchio RandomNoise and RandomBiasField, "each, a 30% probability".
    augment_probability: float = 0.30
    # Voxel axes of a patch (its grid's; 0 and 1 are in-plane for the scans we have met) that
    # training flips at random, each with probability 0.5, patch and truth alike (ours; torchio
    # RandomFlip; the paper augments with noise and bias field only). () keeps the paper's.
    augment_flip_axes: tuple[int, ...] = ()
    # Probability that training blurs a patch's visit-1 channel as a thick slice would (ours;
    # the paper augments with noise and bias field only): a running mean along voxel axis 0 or
    # 1, over a width drawn from `thick_slice_voxels`. Step one's false candidates crowd pairs
    # whose visit 1 has thicker slices than visit 2 (docs/benchmarks.md); this shows the net
    # such blur on lesions and non-lesions alike. 0 keeps the paper's. Figures: docs/benchmarks.md.
    augment_thick_slices: float = 0.0
    thick_slice_voxels: tuple[int, int] = (2, 5)
    # Probability that training moves a patch's visit-1 channel by a sub-voxel translation,
    # drawn uniformly within +-`visit1_shift_voxels` on each voxel axis (ours; the paper
    # augments with noise and bias field only). An affine registration cannot follow every
    # change of a brain between visits, and step one turns what stays misaligned at edges into
    # false candidates; this shows the net such shifts on lesions and non-lesions alike. The
    # limits are about 0.7-1 mm on the real pairs' 0.72 x 0.72 x 3 mm grid (slices along axis
    # 2). 0 keeps the paper's. Figures: docs/benchmarks.md.
    augment_visit1_shift: float = 0.0
    visit1_shift_voxels: tuple[float, float, float] = (1.0, 1.0, 0.3)
    # Share of the balanced FP draws that lean towards hard false positives (ours; the paper
    # draws them uniformly): drawn with probability proportional to the net's highest voxel
    # probability on the patch when training last saw it (1 until then). The false lesions
    # left at inference are confident ones (docs/benchmarks.md); this shows the net more of
    # the FP patches it still gets wrong. 0 keeps the paper's. Figures: docs/benchmarks.md.
    hard_fp_share: float = 0.0
    # Paper §2.4: sigmoid, then "binarized the final image with threshold of 0.75".
    threshold: float = 0.75
    # Smallest new lesion kept after the threshold, in mm³ (ours; the paper keeps every
    # component). Step one drops components under 7 mm³; the same floor after the CNN is an
    # option, with figures for both in docs/benchmarks.md.
    min_lesion_mm3: float = 0.0
    # Training crops patches larger than this around their centre (ours: a few giant FP
    # components would otherwise set every batch's padded size; at 0.72 x 0.72 x 3 mm this is
    # 23 x 23 x 24 mm, larger than most lesions). Inference never crops.
    train_max_patch: tuple[int, int, int] = (32, 32, 8)
    # Where training crops a patch larger than `train_max_patch` (ours). "centre": once, round
    # its centre. "random": at every draw, round a truth voxel drawn at random when the patch
    # holds truth (a TP draw stays TP), anywhere in it otherwise, so over the epochs the net
    # sees all of a large patch, as inference does. Step one's largest candidates (patient01:
    # 124 x 124 x 23 voxels) hold most of some pairs' lesions outside the centre crop. "random"
    # cost patient01 left out half its F1, so it is not the default (docs/benchmarks.md).
    train_crop: Literal["centre", "random"] = "centre"
    # Training batches of similar-sized patches (ours): the epoch's patches are sorted by size
    # within windows of this many batches (see msnl.sampling.size_bucketed_batches). None keeps
    # each batch as drawn, padded to its largest patch. Figures for both: docs/benchmarks.md.
    size_bucket_window: int | None = None
    # Which training patches count as TP when the batches are balanced (ours). "any_truth" is
    # the rule: the patch holds a truth voxel. With 2 voxels of padding, 38% of the TP
    # patches of the training pairs hold truth only in their margin, from a neighbouring lesion,
    # while their own candidate is false. "own_component" counts a patch as TP only when its
    # own candidate overlaps the truth. Either way the loss sees every truth voxel.
    tp_patches: Literal["any_truth", "own_component"] = "any_truth"
    # What the two FLAIR channels of a patch hold (ours). "grey_levels" is the paper's (§1: the
    # FLAIRs "after discretization", 1..6). "intensities" gives the net the same images before
    # discretisation, in grey-level units (msnl.preprocess.continuous_levels): a noise flip
    # across a level edge and a lesion twice as bright then look different, and lesions already
    # at the top level at visit 1 keep their contrast. Weights record it, so inference follows.
    flair_input: Literal["grey_levels", "intensities"] = "grey_levels"
    # Voxels of context the CNN sees beyond step one's patch on every side (ours; the paper's
    # patch is the component's box with step one's 2 voxels of padding). The patch is cropped
    # again from the pair's stored images, and its prediction is stitched over the larger box.
    # 1 gives the patches of `StepOneConfig(patch_padding_voxels=3)` without running step one
    # again. Weights record it, so inference follows. Figures: docs/benchmarks.md.
    context_voxels: int = 0
    # Models trained alike, member i with seed + i (ours; the paper trains one). Inference
    # averages their probabilities before the threshold (msnl.cnn.PatchEnsemble), which keeps
    # a voxel only where the members agree. Figures for 1 and 2: docs/benchmarks.md.
    ensemble_size: int = 1
    # Voxel axes whose flips inference adds (ours; the paper predicts once): every combination
    # of them is predicted, flipped back, and the probabilities averaged before the threshold, as
    # for ensemble members. (0, 1) makes four forward passes per patch. () predicts once.
    test_time_flip_axes: tuple[int, ...] = ()
    inference_batch_size: int = 64
    # Ours: intervals per CNN task in `msnl run`. Enough to keep a GPU busy between model loads,
    # few enough that the first results show early.
    intervals_per_task: int = 4

    def __post_init__(self) -> None:
        if len(self.widths) != 6 or min(self.widths) < 1:
            raise ConfigError(f"widths must be six positive channel counts, got {self.widths}")
        if not 0 < self.threshold < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("threshold must be in (0, 1); batch_size and epochs at least 1")
        if self.min_lesion_mm3 < 0:
            raise ConfigError(f"min_lesion_mm3 must be at least 0, got {self.min_lesion_mm3}")
        if self.size_bucket_window is not None and self.size_bucket_window < 1:
            raise ConfigError(f"size_bucket_window must be at least 1 or None, got {self.size_bucket_window}")
        if self.tp_patches not in ("any_truth", "own_component"):
            raise ConfigError(f"tp_patches must be 'any_truth' or 'own_component', got {self.tp_patches!r}")
        if not isinstance(self.balance_sources, bool):  # JSON's 1 or "yes" would read as true
            raise ConfigError(f"balance_sources must be true or false, got {self.balance_sources!r}")
        if self.train_crop not in ("centre", "random"):
            raise ConfigError(f"train_crop must be 'centre' or 'random', got {self.train_crop!r}")
        if self.flair_input not in ("grey_levels", "intensities"):
            raise ConfigError(f"flair_input must be 'grey_levels' or 'intensities', got {self.flair_input!r}")
        if self.context_voxels < 0:
            raise ConfigError(f"context_voxels must be at least 0, got {self.context_voxels}")
        if self.inference_batch_size < 1 or self.intervals_per_task < 1 or self.ensemble_size < 1:
            raise ConfigError("inference_batch_size, intervals_per_task and ensemble_size must be at least 1")
        for name in ("augment_flip_axes", "test_time_flip_axes"):
            axes = getattr(self, name)
            if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
                raise ConfigError(f"{name} must list distinct voxel axes among 0, 1, 2, got {axes}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be at least 0, got {self.weight_decay}")
        if not 0 < self.tp_share < 1:
            raise ConfigError(f"tp_share must be in (0, 1), got {self.tp_share}")
        low, high = self.thick_slice_voxels
        if not 2 <= low <= high:
            raise ConfigError(f"thick_slice_voxels must be two widths with 2 <= low <= high, got {self.thick_slice_voxels}")
        if len(self.visit1_shift_voxels) != 3 or min(self.visit1_shift_voxels) < 0:
            raise ConfigError(f"visit1_shift_voxels must be three limits of at least 0, got {self.visit1_shift_voxels}")
        for name in ("extra_share", "extra_infratentorial", "extra_infratentorial_tp", "augment_probability",
                     "augment_thick_slices", "augment_visit1_shift", "hard_fp_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def with_inference(self, **changes: Any) -> CNNConfig:
        """This config with fields that only inference reads (`INFERENCE_FIELDS`) changed; any
        other field needs retraining and is refused."""
        if unknown := sorted(set(changes) - set(INFERENCE_FIELDS)):
            raise ConfigError(f"{', '.join(unknown)}: only inference fields can change without retraining "
                              f"({', '.join(INFERENCE_FIELDS)}); train again for the others.")
        return replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


# The CNNConfig fields that only inference reads: a weights file's values can change without
# retraining (`msnl combine-weights --option`), and its digest changes with them.
INFERENCE_FIELDS = ("threshold", "min_lesion_mm3", "test_time_flip_axes", "inference_batch_size")
