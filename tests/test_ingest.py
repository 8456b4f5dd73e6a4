"""`msnl ingest` end to end on tiny files: the store layout, re-runs, bad input, the lazy view."""

from __future__ import annotations

import shutil

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import zarr

from msnl.errors import StoreError
from pipelines.cli import main
from pipelines.ingest import run_ingest
from storage import open_cohort, read_ingest_reports, read_scan
from tests.conftest import write_bids_cohort


def _scan_group(store, subject, visit):
    return zarr.open_group(store / "scans" / subject / visit, mode="r", zarr_format=3)


def test_ingest_stores_exact_voxels_header_and_ngff(bids_cohort, tmp_path):
    store = tmp_path / "store.zarr"
    summary = run_ingest(bids_cohort, store, progress=False)
    assert summary.count("ingested") == 4 and summary.failed == 0
    path = bids_cohort / "sub-001/ses-02/anat/sub-001_ses-02_FLAIR.nii.gz"
    ref = nib.load(path)
    group = _scan_group(store, "001", "02")
    array = group["0"]
    assert array.dtype == ref.get_data_dtype() and array.shape == ref.shape
    np.testing.assert_array_equal(array[...], np.asarray(ref.dataobj.get_unscaled()))
    assert all(c <= 64 for c in array.chunks)
    assert array.metadata.dimension_names == ("i", "j", "k")
    attrs = group.attrs["msnl"]
    np.testing.assert_allclose(attrs["affine"], ref.affine)
    np.testing.assert_allclose(attrs["qform"], ref.get_qform())
    np.testing.assert_allclose(attrs["sform"], ref.get_sform())
    assert (attrs["qform_code"], attrs["sform_code"], attrs["orientation"]) == (1, 1, "RAS")
    assert attrs["spacing"] == pytest.approx([0.7, 0.7, 3.0])
    assert attrs["source_path"] == str(path.resolve())
    assert len(attrs["sha256"]) == 64
    ngff = group.attrs["ome"]
    assert ngff["version"] == "0.5"
    multiscale = ngff["multiscales"][0]
    assert [a["type"] for a in multiscale["axes"]] == ["space"] * 3
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == pytest.approx([0.7, 0.7, 3.0])
    assert transforms[1]["translation"] == pytest.approx(ref.affine[:3, 3].tolist())
    np.testing.assert_allclose(read_scan(store, "001", "02").data, ref.get_fdata())
    reports = read_ingest_reports(store)
    assert len(reports) == 1 and len(reports[0]["entries"]) == 4
    assert sorted(p.name for p in store.iterdir()) == ["cohort", "reports", "scans", "zarr.json"]  # no empty .staging/


def test_rerun_skips_unchanged_and_reingests_changed_files(bids_cohort, tmp_path):
    store = tmp_path / "store.zarr"
    run_ingest(bids_cohort, store, progress=False)
    chunk = next((store / "scans/002/01/0/c").rglob("*"))
    before = chunk.stat().st_mtime_ns
    again = run_ingest(bids_cohort, store, progress=False)
    assert again.count("unchanged") == 4 and again.count("ingested") == 0
    assert chunk.stat().st_mtime_ns == before

    changed = bids_cohort / "sub-002/ses-01/anat/sub-002_ses-01_FLAIR.nii.gz"
    img = nib.load(changed)
    new = np.asarray(img.dataobj) + 7
    nib.save(nib.Nifti1Image(new, img.affine, img.header), changed)
    third = run_ingest(bids_cohort, store, progress=False)
    assert third.count("changed") == 1 and third.count("unchanged") == 3
    [entry] = [e for e in third.entries if e["status"] == "changed"]
    assert str(changed) in entry["message"] and "re-ingested" in entry["message"]
    np.testing.assert_array_equal(_scan_group(store, "002", "01")["0"][...], new)
    assert len(read_ingest_reports(store)) == 3


def test_bad_scans_are_reported_and_the_others_ingested(tmp_path, capsys):
    root = write_bids_cohort(tmp_path / "bids", n_subjects=3)
    bad = root / "sub-002/ses-01/anat/sub-002_ses-01_FLAIR.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    store = tmp_path / "store.zarr"
    code = main(["ingest", "-q", str(root), str(store)])
    assert code == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated" in err
    cohort = open_cohort(store)
    assert int(cohort.present.sum()) == 5
    assert not bool(cohort.present.sel(subject="002", visit="01"))
    [report] = read_ingest_reports(store)
    failed = [e for e in report["entries"] if e["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["path"] == str(bad)


def test_unsafe_ids_never_write_outside_the_store(tmp_path, make_nifti):
    make_nifti("s/a.nii.gz")
    make_nifti("s/b.nii.gz", seed=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path\n..,1,s/a.nii.gz\n../../escape,2,s/b.nii.gz\n")
    store = tmp_path / "deep" / "store.zarr"
    before = {p for p in tmp_path.rglob("*")}
    assert main(["ingest", "-q", str(manifest), str(store)]) == 1
    after = {p for p in tmp_path.rglob("*")}
    assert all(store in p.parents or p == store for p in after - before if p != store.parent)
    assert not (tmp_path / "escape").exists()
    assert [e["status"] for e in read_ingest_reports(store)[0]["entries"]] == ["failed", "failed"]


def test_empty_source_exits_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["ingest", str(tmp_path / "empty"), str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "holds no scans" in err and str(tmp_path / "empty") in err


def test_open_cohort_is_lazy_and_labelled(bids_cohort, tmp_path):
    store = tmp_path / "store.zarr"
    run_ingest(bids_cohort, store, progress=False)
    for chunks in store.glob("scans/*/*/0/c"):
        shutil.rmtree(chunks)  # no voxels left: opening must still work
    cohort = open_cohort(store)
    assert dict(cohort.sizes) == {"subject": 2, "visit": 2, "axis": 3}
    assert list(cohort.arm.values) == ["placebo", "active"]
    assert list(cohort.site.values) == ["site-1", "site-2"]
    assert str(cohort.acquired_on.sel(subject="002", visit="02").values)[:10] == "2022-03-03"
    flair = cohort["scans/001/02"].flair
    assert isinstance(flair.data, da.Array) and flair.shape == (24, 20, 12)
    assert flair.attrs["spacing"] == pytest.approx([0.7, 0.7, 3.0])
    # the voxels were deleted, so computing reads the fill value: proof that opening read none
    assert int(flair.max().compute()) == 0


def test_open_cohort_on_a_missing_store_says_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="msnl ingest"):
        open_cohort(tmp_path / "nothing.zarr")


def test_a_stored_volume_is_one_file_and_reads_chunk_by_chunk(tmp_path):
    """One shard per array keeps a cluster file system's file count down (a 1 mm brain's 36
    chunks were 36 files); Dask still reads it in 64³ chunks, so a slice reads few of them."""
    from storage.scans import lazy_array, write_array

    data = np.random.default_rng(0).integers(0, 1000, (130, 70, 70)).astype(np.int16)  # 3 x 2 x 2 chunks
    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    write_array(group, "volume", data)
    write_array(group, "flat", np.arange(3 << 20, dtype=np.float32))  # 3 chunks of 1 M elements
    files = {name: [p for p in (tmp_path / "g" / name).rglob("*") if p.is_file()] for name in ("volume", "flat")}
    assert {name: len(found) for name, found in files.items()} == {"volume": 2, "flat": 2}  # zarr.json and one shard
    lazy = lazy_array(group["volume"])
    assert lazy.chunksize == (64, 64, 64)
    np.testing.assert_array_equal(lazy[:, :, 33].compute(), data[:, :, 33])
    np.testing.assert_array_equal(group["flat"][...], np.arange(3 << 20, dtype=np.float32))
