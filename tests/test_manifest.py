"""Reading cohort sources: BIDS folders, CSV manifests and folders of patient folders (the
Lesjak and MSSEG-2 forms), and their row-level problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from msnl.errors import ManifestError
from storage.manifest import read_source
from tests.conftest import LONGITUDINAL, write_bids_cohort


def test_bids_reads_subjects_visits_arm_site_dates(tmp_path):
    root = write_bids_cohort(tmp_path / "bids", n_subjects=3, n_visits=2)
    records, problems = read_source(root)
    assert problems == []
    assert [(r.subject, r.visit) for r in records] == [
        ("001", "01"), ("001", "02"), ("002", "01"), ("002", "02"), ("003", "01"), ("003", "02")
    ]
    first = records[0]
    assert (first.arm, first.site, first.acquired_on) == ("placebo", "site-1", "2021-03-02")
    assert records[2].arm == "active"


def test_a_bids_session_with_two_flairs_is_refused_with_the_way_to_pick_one(tmp_path):
    root = write_bids_cohort(tmp_path / "bids", n_subjects=2, n_visits=2)
    anat = root / "sub-001" / "ses-02" / "anat"
    (anat / "sub-001_ses-02_FLAIR.nii.gz").rename(anat / "sub-001_ses-02_acq-2D_FLAIR.nii.gz")
    (anat / "sub-001_ses-02_acq-3D_FLAIR.nii.gz").write_bytes((anat / "sub-001_ses-02_acq-2D_FLAIR.nii.gz").read_bytes())
    records, problems = read_source(root)
    assert ("001", "02") not in {(r.subject, r.visit) for r in records}
    assert {(r.subject, r.visit) for r in records} >= {("002", "01"), ("002", "02")}  # the others go on
    refused = [p for p in problems if p.level == "error"]
    assert sorted(Path(p.path).name for p in refused) == ["sub-001_ses-02_acq-2D_FLAIR.nii.gz", "sub-001_ses-02_acq-3D_FLAIR.nii.gz"]
    assert all("appears 2 times" in p.message and "CSV manifest" in p.message for p in refused)


def test_csv_manifest_with_relative_paths_and_optional_columns(tmp_path, make_nifti):
    make_nifti("scans/a1.nii.gz")
    make_nifti("scans/a2.nii.gz", seed=1)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "subject,visit,path,acquired_on,arm\n"
        "A,v1,scans/a1.nii.gz,2022-01-01,placebo\n"
        "A,v2,scans/a2.nii.gz,2023-01-01,placebo\n"
    )
    records, problems = read_source(manifest)
    assert problems == []
    assert [(r.subject, r.visit, r.arm, r.site) for r in records] == [("A", "v1", "placebo", None), ("A", "v2", "placebo", None)]
    assert records[1].path == tmp_path / "scans/a2.nii.gz"


def test_csv_missing_columns_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,path\nA,x.nii.gz\n")
    with pytest.raises(ManifestError, match=r"m\.csv.*lacks the column\(s\) visit"):
        read_source(manifest)


def test_missing_file_unsafe_ids_duplicates_and_single_visit(tmp_path, make_nifti):
    for name in ("a1", "a2", "b1", "c1", "c1bis", "d1", "d2"):
        make_nifti(f"s/{name}.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "subject,visit,path\n"
        "A,1,s/a1.nii.gz\nA,2,s/a2.nii.gz\n"  # fine
        "B,1,s/b1.nii.gz\n"  # single visit: a warning
        "C,1,s/c1.nii.gz\nC,1,s/c1bis.nii.gz\n"  # the same visit twice
        "../evil,1,s/d1.nii.gz\nD,a/b,s/d2.nii.gz\n"  # unsafe IDs
        "E,1,s/missing.nii.gz\n"
    )
    records, problems = read_source(manifest)
    assert sorted((r.subject, r.visit) for r in records) == [("A", "1"), ("A", "2"), ("B", "1")]
    messages = {p.path.rsplit("/", 1)[-1]: (p.level, p.message) for p in problems}
    assert messages["missing.nii.gz"][0] == "error" and "does not exist" in messages["missing.nii.gz"][1]
    assert "appears 2 times" in messages["c1.nii.gz"][1] and "appears 2 times" in messages["c1bis.nii.gz"][1]
    assert "keep the right row" in messages["c1.nii.gz"][1]
    assert "'../evil'" in messages["d1.nii.gz"][1] and "refused" in messages["d1.nii.gz"][1]
    assert "'a/b'" in messages["d2.nii.gz"][1]
    assert messages["b1.nii.gz"] == ("warning", messages["b1.nii.gz"][1])
    assert "single visit" in messages["b1.nii.gz"][1]


def test_empty_sources_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="holds no scans") as refused:
        read_source(tmp_path / "empty")
    assert "sub-*/ses-*/anat/*_FLAIR.nii*" in str(refused.value)
    assert "Lesjak longitudinal form (study1_FLAIR.nii.gz, study2_FLAIR.nii.gz)" in str(refused.value)
    assert "MSSEG-2 form (flair_time01_on_middle_space.nii.gz" in str(refused.value)
    (tmp_path / "empty.csv").write_text("subject,visit,path\n")
    with pytest.raises(ManifestError, match="holds no scans"):
        read_source(tmp_path / "empty.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        read_source(tmp_path / "nowhere")


def test_patient_folders_in_the_lesjak_and_msseg2_forms_are_read_with_their_visits(tmp_path, make_nifti):
    for name in ("study1_FLAIR.nii.gz", "study2_FLAIR.nii.gz", "newlesions.nii.gz"):
        make_nifti(f"pairs/patient01/{name}")
    for name in ("flair_time01_on_middle_space.nii.gz", "flair_time02_on_middle_space.nii.gz", "ground_truth.nii.gz"):
        make_nifti(f"pairs/013/{name}")
    make_nifti("pairs/patient05/study1_FLAIR.nii.gz")  # its second visit is missing
    (tmp_path / "pairs" / "notes").mkdir()  # a folder in no form is passed over
    records, problems = read_source(tmp_path / "pairs")
    assert [(r.subject, r.visit, r.path.name) for r in records] == [
        ("013", "01", "flair_time01_on_middle_space.nii.gz"), ("013", "02", "flair_time02_on_middle_space.nii.gz"),
        ("patient01", "1", "study1_FLAIR.nii.gz"), ("patient01", "2", "study2_FLAIR.nii.gz"),
        ("patient05", "1", "study1_FLAIR.nii.gz")]
    assert [(p.level, p.subject) for p in problems] == [("warning", "patient05")]
    assert "single visit" in problems[0].message
    # one patient's folder given alone is that patient
    records, _ = read_source(tmp_path / "pairs" / "patient01")
    assert [(r.subject, r.visit) for r in records] == [("patient01", "1"), ("patient01", "2")]


def test_a_bids_dataset_beside_patient_folders_is_read_as_bids(tmp_path, make_nifti):
    root = write_bids_cohort(tmp_path / "bids", n_subjects=1, n_visits=2)
    make_nifti("bids/patient01/study1_FLAIR.nii.gz")
    make_nifti("bids/patient01/study2_FLAIR.nii.gz")
    records, _ = read_source(root)
    assert {r.subject for r in records} == {"001"}


@pytest.mark.skipif(not LONGITUDINAL.exists(), reason="needs the real pairs in ../shared/data")
def test_the_real_lesjak_longitudinal_folder_reads_as_two_patients_of_two_visits():
    records, problems = read_source(LONGITUDINAL)
    assert problems == []
    assert [(r.subject, r.visit, r.path.name) for r in records] == [
        ("patient01", "1", "study1_FLAIR.nii.gz"), ("patient01", "2", "study2_FLAIR.nii.gz"),
        ("patient12", "1", "study1_FLAIR.nii.gz"), ("patient12", "2", "study2_FLAIR.nii.gz")]
