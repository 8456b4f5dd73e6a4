"""Cohort sources: a BIDS dataset, a CSV manifest, or a folder of patient folders in the form
of a public longitudinal MS dataset (Lesjak, MSSEG-2), read into one list of scan records.

A problem with one row (a missing file, an unsafe ID, the same visit twice) is returned as a
`SourceProblem` and leaves the other rows usable; a source that can't be read at all raises
`ManifestError`.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from msnl.errors import ManifestError, UnsafeIdentifierError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_BIDS_FLAIR = "sub-*/ses-*/anat/*_FLAIR.nii*"
_CSV_REQUIRED = ("subject", "visit", "path")
# Public longitudinal MS datasets ship one folder per patient holding its two FLAIRs under
# fixed names: the form's name -> (visit, file name) for each visit. The visit is the number
# in the file name, as written there.
PAIR_FOLDER_FORMS = {
    "Lesjak longitudinal": (("1", "study1_FLAIR.nii.gz"), ("2", "study2_FLAIR.nii.gz")),
    "MSSEG-2": (("01", "flair_time01_on_middle_space.nii.gz"), ("02", "flair_time02_on_middle_space.nii.gz")),
}


@dataclass(frozen=True)
class ScanRecord:
    """One scan of the cohort: who, which visit, where, and the subject's trial facts."""

    subject: str
    visit: str
    path: Path
    acquired_on: str | None = None
    arm: str | None = None
    site: str | None = None


@dataclass(frozen=True)
class SourceProblem:
    """A row of the source that can't be ingested, with what to do about it."""

    path: str
    message: str
    subject: str | None = None
    visit: str | None = None
    level: str = "error"


def check_id(value: str, what: str) -> str:
    """Return `value` if it is safe as a storage key, else raise `UnsafeIdentifierError`."""
    if not _SAFE_ID.match(value):
        raise UnsafeIdentifierError(
            f"{what} ID {value!r} is refused: IDs may hold only letters, digits, '-' and '_' "
            "(at most 64, starting with a letter or digit), so that no key can point outside "
            "the store. Rename it in the source."
        )
    return value


def _blank_to_none(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "n/a", "NA") else value


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _bids_records(root: Path) -> tuple[list[ScanRecord], list[SourceProblem]]:
    participants: dict[str, dict[str, str]] = {}
    if (root / "participants.tsv").exists():
        for row in _read_tsv(root / "participants.tsv"):
            participants[row.get("participant_id", "").removeprefix("sub-")] = row
    records: list[ScanRecord] = []
    problems: list[SourceProblem] = []
    sessions_cache: dict[str, dict[str, str]] = {}
    for path in sorted(root.glob(_BIDS_FLAIR)):
        subject = path.parts[-4].removeprefix("sub-")
        visit = path.parts[-3].removeprefix("ses-")
        if subject not in sessions_cache:
            tsv = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
            sessions_cache[subject] = (
                {r.get("session_id", "").removeprefix("ses-"): r.get("acq_time", "") for r in _read_tsv(tsv)}
                if tsv.exists()
                else {}
            )
        info = participants.get(subject, {})
        records.append(
            ScanRecord(
                subject=subject,
                visit=visit,
                path=path,
                acquired_on=_blank_to_none(sessions_cache[subject].get(visit)),
                arm=_blank_to_none(info.get("arm")),
                site=_blank_to_none(info.get("site")),
            )
        )
    return records, problems


def _pair_folder_records(root: Path) -> list[ScanRecord]:
    """The FLAIRs of `root`'s patient folders in one of `PAIR_FOLDER_FORMS`; the subject is the
    folder's name; `root` itself counts as the one patient folder when it is in such a form. A
    folder holding only one of its two FLAIRs gives that one (a subject with one visit, warned
    about like any other)."""

    def flairs(folder: Path) -> list[ScanRecord]:
        for visits in PAIR_FOLDER_FORMS.values():
            found = [ScanRecord(subject=folder.name, visit=visit, path=folder / name)
                     for visit, name in visits if (folder / name).exists()]
            if found:
                return found
        return []

    return flairs(root) or [record for folder in sorted(p for p in root.iterdir() if p.is_dir())
                            for record in flairs(folder)]


def _csv_records(manifest: Path) -> tuple[list[ScanRecord], list[SourceProblem]]:
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _CSV_REQUIRED if c not in columns]
        if missing:
            raise ManifestError(
                f"lacks the column(s) {', '.join(missing)}. Expected a CSV with a header row "
                "holding subject, visit, path (and optionally acquired_on, arm, site).",
                manifest,
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    records: list[ScanRecord] = []
    problems: list[SourceProblem] = []
    for line, row in enumerate(rows, start=2):
        path = Path(row["path"])
        if not path.is_absolute():
            path = manifest.parent / path
        if not path.exists():
            problems.append(
                SourceProblem(
                    str(path),
                    f"{manifest}, line {line}: the file {path} does not exist. Fix the path "
                    "(relative paths are read from the manifest's folder) or remove the row.",
                    row["subject"] or None,
                    row["visit"] or None,
                )
            )
            continue
        records.append(
            ScanRecord(
                subject=row["subject"],
                visit=row["visit"],
                path=path,
                acquired_on=_blank_to_none(row.get("acquired_on")),
                arm=_blank_to_none(row.get("arm")),
                site=_blank_to_none(row.get("site")),
            )
        )
    return records, problems


def read_source(source: str | Path) -> tuple[list[ScanRecord], list[SourceProblem]]:
    """Read a BIDS folder, a CSV manifest or a folder of patient folders (`PAIR_FOLDER_FORMS`,
    read when the folder holds no BIDS FLAIR) into scan records and per-row problems.

    Rows with unsafe IDs, or a (subject, visit) that appears more than once, are refused as
    problems. A subject with a single visit is kept, with a warning: nothing to compare.
    Raises `ManifestError` when the source is missing, unreadable or holds no scan at all.
    """
    source = Path(source)
    if not source.exists():
        raise ManifestError("does not exist. Give a BIDS folder, a CSV manifest or a folder of patient folders.", source)
    if source.is_dir():
        records, problems = _bids_records(source)
        if not records and not problems:
            records = _pair_folder_records(source)
        forms = "; or ".join(f"patient folders in the {form} form ({', '.join(name for _, name in visits)})"
                             for form, visits in PAIR_FOLDER_FORMS.items())
        expected = f"BIDS FLAIRs matching {_BIDS_FLAIR}; or {forms}"
    else:
        records, problems = _csv_records(source)
        expected = "rows in the manifest"
    if not records and not problems:
        raise ManifestError(
            f"holds no scans. Expected {expected}; check that this is the right folder or file.",
            source,
        )
    safe: list[ScanRecord] = []
    for rec in records:
        try:
            check_id(rec.subject, "subject")
            check_id(rec.visit, "visit")
        except UnsafeIdentifierError as exc:
            problems.append(SourceProblem(str(rec.path), f"{rec.path}: {exc}", None, None))
            continue
        safe.append(rec)
    by_key: dict[tuple[str, str], list[ScanRecord]] = defaultdict(list)
    for rec in safe:
        by_key[(rec.subject, rec.visit)].append(rec)
    kept: list[ScanRecord] = []
    # A BIDS session may rightly hold several FLAIRs (2D and 3D acquisitions, repeated runs):
    # the user picks one without touching the dataset.
    choose = (
        "list one FLAIR per visit in a CSV manifest (columns subject, visit, path; optionally "
        "acquired_on, arm, site) and ingest that instead of the folder"
        if source.is_dir()
        else "keep the right row and remove the others"
    )
    for (subject, visit), group in by_key.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        paths = ", ".join(str(r.path) for r in group)
        for rec in group:
            problems.append(
                SourceProblem(
                    str(rec.path),
                    f"subject {subject} visit {visit} appears {len(group)} times ({paths}). "
                    f"msnl compares one FLAIR per visit: {choose}.",
                    subject,
                    visit,
                )
            )
    visits_per_subject: dict[str, int] = defaultdict(int)
    for rec in kept:
        visits_per_subject[rec.subject] += 1
    for subject, n in sorted(visits_per_subject.items()):
        if n == 1:
            only = next(r for r in kept if r.subject == subject)
            problems.append(
                SourceProblem(
                    str(only.path),
                    f"subject {subject} has a single visit ({only.visit}): it is ingested, but "
                    "there is nothing to compare it with until a second visit arrives.",
                    subject,
                    only.visit,
                    level="warning",
                )
            )
    return kept, problems
