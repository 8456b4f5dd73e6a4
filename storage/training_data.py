"""Training sources for the CNN: simulated BIDS cohorts (truth under derivatives/) and real
pairs in the Lesjak longitudinal form. Each becomes a work store of ingested scans and a list
of visit pairs whose new-lesion truth can be read on visit 2's grid."""

from __future__ import annotations

import csv
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


def is_lesjak(folder: Path) -> bool:
    return any((p / "study1_FLAIR.nii.gz").exists() for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else False


def work_store(work: Path, source: Path) -> Path:
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    return work / f"{source.name}-{digest}.zarr"


def lesjak_manifest(folder: Path, work: Path, patients: list[str] | None = None) -> Path:
    """A CSV manifest of a Lesjak folder's pairs (patient -> visits 1 and 2)."""
    rows = []
    for patient in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "study1_FLAIR.nii.gz").exists()):
        if patients is None or patient.name in patients:
            rows += [(patient.name, str(v), str((patient / f"study{v}_FLAIR.nii.gz").resolve())) for v in (1, 2)]
    manifest = work / f"{folder.name}-manifest.csv"
    work.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "visit", "path"])
        writer.writerows(rows)
    return manifest


def training_pairs(source: Path, store: Path) -> list[TrainingPair]:
    """Consecutive visit pairs of a source, with their truth files."""
    if is_lesjak(source):
        return [
            TrainingPair(str(store), p.name, "1", "2", str(p / "newlesions.nii.gz"),
                         str(p / "study2_FLAIR_to_common_space.txt"), str(source))
            for p in sorted(source.iterdir()) if (p / "newlesions.nii.gz").exists()
        ]
    if not (source / DERIVATIVES).exists():
        raise InputError(
            f"has no truth under {DERIVATIVES}. Expected a cohort from `msnl simulate`, or real pairs in the "
            "Lesjak form (patient folders with study1_FLAIR.nii.gz, study2_FLAIR.nii.gz, newlesions.nii.gz).",
            source,
        )
    records, _ = read_source(source)
    visits: dict[str, list[str]] = {}
    for r in records:
        visits.setdefault(r.subject, []).append(r.visit)
    pairs = []
    for subject, vs in sorted(visits.items()):
        vs = sorted(vs)
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
