"""Training sources for the CNN: simulated BIDS cohorts (truth under derivatives/) and real
pairs in the patient folders of a public longitudinal dataset (Lesjak, MSSEG-2). Each becomes
a work store of ingested scans and a list of visit pairs whose new-lesion truth can be read on
visit 2's grid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from msnl.candidates import patch_box
from msnl.config import StepOneConfig
from msnl.errors import InputError
from msnl.patches import candidate_hits
from msnl.resample import resample_labels
from msnl.scan import LabelMap
from storage.bids import DERIVATIVES, truth_path
from storage.manifest import read_source
from storage.masks import dataset_truths
from storage.pairs import read_candidates, read_pair_array, read_pair_attrs


@dataclass(frozen=True)
class TrainingPair:
    """A visit pair of a work store, and where its truth lives."""

    store: str
    subject: str
    from_visit: str
    to_visit: str
    truth: str  # a NIfTI mask
    transform: str | None = None  # Lesjak: the common-grid truth needs study 2's transform, inverted
    source: str = ""

    @property
    def name(self) -> str:
        return f"{Path(self.source).name}:{self.subject}:{self.from_visit}-{self.to_visit}"


def work_store(work: Path, source: Path) -> Path:
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    return work / f"{source.name}-{digest}.zarr"


def _visits(source: Path) -> dict[str, list[str]]:
    """Each subject's visits in the source, in order."""
    visits: dict[str, list[str]] = {}
    for r in read_source(source)[0]:
        visits.setdefault(r.subject, []).append(r.visit)
    return {subject: sorted(vs) for subject, vs in visits.items()}


def training_pairs(source: Path, store: Path) -> list[TrainingPair]:
    """Consecutive visit pairs of a source, with their truth files."""
    truths = dataset_truths(source)
    if truths:  # each patient's truth belongs to its second visit
        visits = _visits(source)
        pairs = []
        for (patient, visit), (truth, transform) in sorted(truths.items()):
            earlier = [v for v in visits.get(patient, []) if v < visit]
            if earlier:
                pairs.append(TrainingPair(str(store), patient, earlier[-1], visit, str(truth),
                                          str(transform) if transform else None, str(source)))
        return pairs
    if not (source / DERIVATIVES).exists():
        raise InputError(
            f"has no truth under {DERIVATIVES}. Expected a cohort from `msnl simulate`, or real pairs in "
            "patient folders of the Lesjak form (study1_FLAIR.nii.gz, study2_FLAIR.nii.gz, newlesions.nii.gz, "
            "study2_FLAIR_to_common_space.txt) or the MSSEG-2 form (flair_time01_on_middle_space.nii.gz, "
            "flair_time02_on_middle_space.nii.gz, ground_truth.nii.gz).",
            source,
        )
    pairs = []
    for subject, vs in sorted(_visits(source).items()):
        for a, b in zip(vs, vs[1:]):
            truth = truth_path(source, subject, b, "newlesions")
            if truth.exists():
                pairs.append(TrainingPair(str(store), subject, a, b, str(truth), None, str(source)))
    return pairs


def read_truth(pair: TrainingPair, grid: LabelMap) -> np.ndarray:
    """The pair's new-lesion truth on `grid` (visit 2's grid), as booleans."""
    img = nib.load(pair.truth)
    truth = LabelMap((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine)
    if pair.transform is None and truth.shape == grid.shape and np.allclose(truth.affine, grid.affine, atol=1e-3):
        return truth.data > 0
    return resample_labels(truth, grid, pair.transform, invert=pair.transform is not None).data > 0


def step_one_candidates(pairs: list[TrainingPair]) -> dict | None:
    """The candidate settings (StepOneConfig.candidate_settings) step one ran with on every pair
    (None for no pair); the weights record them, and `msnl run` refuses candidates made otherwise."""
    settings = [StepOneConfig.from_dict((read_pair_attrs(p.store, p.subject, p.from_visit, p.to_visit) or {})
                                        .get("config", {})).candidate_settings() for p in pairs]
    for pair, own in zip(pairs[1:], settings[1:]):
        differ = [name for name in own if own[name] != settings[0][name]]
        if differ:
            raise InputError(
                f"{pair.name}'s step one made candidates with {', '.join(f'{n}={own[n]}' for n in differ)}, but "
                f"{pairs[0].name}'s with {', '.join(f'{n}={settings[0][n]}' for n in differ)}: one network learns "
                "from one kind of candidate. Run step one of every training pair with the same config (a fresh "
                "--work folder does).", pair.store)
    return settings[0] if settings else None


def pair_patches(pair: TrainingPair, *, flair_input: str, context_voxels: int = 0):
    """The pair's step-one patches (FLAIR channels as CNNConfig.flair_input says), each with its
    truth patch, infratentorial flag, and whether its own candidate (not a neighbour inside its
    margin) overlaps the truth."""
    attrs = read_pair_attrs(pair.store, pair.subject, pair.from_visit, pair.to_visit)
    table, patches = read_candidates(pair.store, pair.subject, pair.from_visit, pair.to_visit,
                                     flair_input=flair_input, context_voxels=context_voxels)
    labels = read_pair_array(pair.store, pair.subject, pair.from_visit, pair.to_visit, "candidates")
    truth = read_truth(pair, LabelMap(np.zeros(labels.shape, bool), np.asarray(attrs["affine"])))
    hits = candidate_hits(labels, truth, table.label.to_numpy())
    out = []
    for row, patch, hit in zip(table.itertuples(), patches, hits):
        out.append((patch, truth[patch_box(row)], bool(row.infratentorial), bool(hit)))
    return out, truth
