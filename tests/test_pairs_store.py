"""The step-one adapter on a temporary store: results written once, skipped on a re-run."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest

from msnl.config import StepOneConfig
from msnl.errors import StoreError
from msnl.scan import Scan
from msnl.template import mni152_anatomy
from pipelines.ingest import run_ingest
from storage.bids import BidsVisit, write_bids
from storage.layout import clear_staging
from storage.pairs import process_pair, read_candidates, read_pair_array, read_pair_attrs
from tests.test_step_one import _planted_pair


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    anatomy = mni152_anatomy(resolution=2)
    flair1, flair2, _ = _planted_pair((anatomy.flair, anatomy.brain))
    noise = Scan(np.random.default_rng(3).normal(300, 30, flair2.shape).astype(np.float32), flair2.affine)
    root = tmp_path_factory.mktemp("pairs")
    write_bids(root / "bids", [
        BidsVisit("good", "01", flair1, "2020-01-01", "placebo", "A"),
        BidsVisit("good", "02", flair2, "2021-01-01", "placebo", "A"),
        BidsVisit("nobrain", "01", noise, "2020-01-01", "active", "A"),
        BidsVisit("nobrain", "02", flair2, "2021-01-01", "active", "A"),
    ])
    run_ingest(root / "bids", root / "store.zarr", progress=False)
    return root / "store.zarr"


def test_pair_result_is_stored_and_readable(store):
    outcome = process_pair(store, "good", "01", "02")
    assert outcome.status == "ok" and outcome.n_candidates >= 1
    attrs = read_pair_attrs(store, "good", "01", "02")
    assert StepOneConfig.from_dict(attrs["config"]) == StepOneConfig()  # replayable
    assert {"antspyx", "mask_model", "msnl"} <= set(attrs["versions"])
    assert attrs["qc"]["registration_correlation"] > 0.9
    table, patches = read_candidates(store, "good", "01", "02", flair_input="grey_levels")
    assert len(table) == len(patches) == outcome.n_candidates
    labels = read_pair_array(store, "good", "01", "02", "candidates")
    levels2 = read_pair_array(store, "good", "01", "02", "levels2")
    row = table.iloc[0]
    box = (slice(row.lo_i, row.hi_i), slice(row.lo_j, row.hi_j), slice(row.lo_k, row.hi_k))
    np.testing.assert_array_equal(patches[0][1], levels2[box])
    assert (labels[box] == row.label).any()
    assert row.volume_mm3 == pytest.approx((labels == row.label).sum() * 8.0)


def test_patches_with_intensities_carry_the_flairs_before_discretisation(store):
    process_pair(store, "good", "01", "02")
    table, levels = read_candidates(store, "good", "01", "02", flair_input="grey_levels")
    _, continuous = read_candidates(store, "good", "01", "02", flair_input="intensities")
    brain = read_pair_array(store, "good", "01", "02", "brain") > 0
    row = table.iloc[0]
    box = (slice(row.lo_i, row.hi_i), slice(row.lo_j, row.hi_j), slice(row.lo_k, row.hi_k))
    inside = brain[box]
    for g, c in zip(levels, continuous):
        np.testing.assert_array_equal(c[2:], g[2:])  # distance maps untouched
        assert not np.array_equal(c[:2], g[:2])
        below_top, top = (g[:2] > 0) & (g[:2] < 6), g[:2] == 6  # within half a level (float32) of the grey level
        assert (np.abs(c[:2] - g[:2])[below_top] <= 0.5 + 1e-5).all() and (c[:2][top] >= 5.5 - 1e-5).all()
    assert (continuous[0][1][inside] > 0).all() and (continuous[0][1][~inside] == 0).all()
    with pytest.raises(StoreError, match="flair_input"):
        read_candidates(store, "good", "01", "02", flair_input="raw")


def test_context_voxels_crop_the_patches_step_one_draws_with_more_padding(store):
    from msnl.candidates import detect_candidates, extract_patches
    from msnl.distance_maps import distance_maps
    from msnl.scan import LabelMap

    process_pair(store, "good", "01", "02")
    table, _ = read_candidates(store, "good", "01", "02", flair_input="grey_levels")
    wide, patches = read_candidates(store, "good", "01", "02", flair_input="grey_levels", context_voxels=1)
    attrs = read_pair_attrs(store, "good", "01", "02")
    brain = LabelMap(read_pair_array(store, "good", "01", "02", "brain") > 0, np.asarray(attrs["affine"]))
    levels = [read_pair_array(store, "good", "01", "02", f"levels{v}") for v in (1, 2)]
    maps = distance_maps(brain)
    padded = detect_candidates(*levels, brain, maps, StepOneConfig(patch_padding_voxels=3))
    boxes = ["lo_i", "lo_j", "lo_k", "hi_i", "hi_j", "hi_k"]
    np.testing.assert_array_equal(wide[boxes].to_numpy(), padded.table[boxes].to_numpy())
    assert (wide[boxes[:3]].to_numpy() < table[boxes[:3]].to_numpy()).any()  # the boxes grew
    for got, expected in zip(patches, extract_patches(padded.table, *levels, maps), strict=True):
        np.testing.assert_array_equal(got, expected)
    _, continuous = read_candidates(store, "good", "01", "02", flair_input="intensities", context_voxels=1)
    assert [c.shape for c in continuous] == [p.shape for p in patches]


def test_intensities_without_stored_flairs_is_a_clear_store_error(store, tmp_path):
    process_pair(store, "good", "01", "02")
    own = tmp_path / "store.zarr"
    shutil.copytree(store, own, ignore=lambda folder, names: [n for n in names if n == "flair1"])
    read_candidates(own, "good", "01", "02", flair_input="grey_levels")  # grey levels need no FLAIR
    with pytest.raises(StoreError, match="no stored FLAIRs"):
        read_candidates(own, "good", "01", "02", flair_input="intensities")


def test_cnn_task_reads_the_flair_channels_its_weights_were_trained_on(store, tmp_path, monkeypatch):
    import pipelines.run as run
    from pipelines.train import train_and_save
    from tests.test_cnn import _toy_set
    from tests.test_step_two import TINY

    process_pair(store, "good", "01", "02")
    weights = tmp_path / "w.pt"
    train_and_save(_toy_set(), weights, replace(TINY, flair_input="intensities"), seed=0, progress=False)
    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs["flair_input"])
        return read_candidates(*args, **kwargs)

    monkeypatch.setattr(run, "read_candidates", spy)
    own = tmp_path / "store.zarr"  # the prediction it writes must not reach the other tests
    shutil.copytree(store, own)
    done = run.cnn_task(str(own), [("good", "01", "02")], str(weights), StepOneConfig())
    assert [d[3] for d in done] == ["ok"] and asked == ["intensities"]


def test_rerun_with_same_inputs_and_config_does_nothing(store):
    process_pair(store, "good", "01", "02")
    group = store / "pairs/good/01/02/zarr.json"
    before = group.stat().st_mtime_ns
    assert process_pair(store, "good", "01", "02").status == "skipped"
    assert group.stat().st_mtime_ns == before
    assert process_pair(store, "good", "01", "02", StepOneConfig(ratio_threshold=1.3)).status == "ok"
    assert read_pair_attrs(store, "good", "01", "02")["config"]["ratio_threshold"] == 1.3


def test_a_visit_without_a_brain_gets_a_recorded_status(store):
    outcome = process_pair(store, "nobrain", "01", "02")
    assert outcome.status in {"implausible_brain_mask", "registration_failed"}
    attrs = read_pair_attrs(store, "nobrain", "01", "02")
    assert attrs["status"] == outcome.status and "visit" in attrs["message"]
    assert not (store / "pairs/nobrain/01/02/candidates").exists()


def test_run_knows_what_is_done_stale_or_new(store):
    from msnl.step_one import software_versions
    from pipelines.run import interval_state
    from storage.results import prediction_result_key, write_prediction

    process_pair(store, "good", "01", "02")
    versions, cfg = software_versions(), StepOneConfig()
    assert interval_state(str(store), "good", "01", "02", cfg, "weights-a", versions) == "new"  # no CNN result yet
    key = prediction_result_key(read_pair_attrs(store, "good", "01", "02")["result_key"], "weights-a")
    write_prediction(store, "good", "01", "02", key, None, None, {"status": "ok"})
    assert interval_state(str(store), "good", "01", "02", cfg, "weights-a", versions) == "done"
    assert interval_state(str(store), "good", "01", "02", cfg, "weights-b", versions) == "stale"  # new weights
    assert interval_state(str(store), "good", "01", "02", StepOneConfig(ratio_threshold=1.3), "weights-a", versions) == "stale"
    assert interval_state(str(store), "good", "02", "03", cfg, "weights-a", versions) == "new"
    process_pair(store, "nobrain", "01", "02")
    assert interval_state(str(store), "nobrain", "01", "02", cfg, "weights-a", versions) == "failed"


def test_scan_voxel_counts_come_from_the_array_metadata(store):
    from storage.scans import read_scan, stored_scan_voxels

    assert stored_scan_voxels(store, "good", "02") == read_scan(store, "good", "02").data.size
    assert stored_scan_voxels(store, "good", "07") == 0


@pytest.mark.parametrize(("pending", "unfinished", "ready"), [
    (0, 0, False),   # nothing waiting
    (4, 10, True),   # a full batch
    (3, 10, False),  # part of a batch while step one keeps both workers busy
    (3, 1, True),    # one step-one task left: the other worker would idle
    (1, 0, True),    # step one is over: flush what is left
])
def test_cnn_batches_go_when_full_or_when_a_worker_would_idle(pending, unfinished, ready):
    from pipelines.run import cnn_batch_ready

    assert cnn_batch_ready(pending, batch=4, unfinished_step_one=unfinished, workers=2) is ready


def test_training_pairs_whose_candidates_were_made_differently_are_refused(store, tmp_path):
    from msnl.errors import InputError
    from storage.training_data import TrainingPair, step_one_candidates

    process_pair(store, "good", "01", "02")
    wider, unopened = tmp_path / "wider.zarr", tmp_path / "unopened.zarr"
    for own, cfg in ((wider, StepOneConfig(patch_padding_voxels=3)), (unopened, StepOneConfig(opening_radius_mm=0))):
        shutil.copytree(store, own)
        assert process_pair(own, "good", "01", "02", cfg).status == "ok"
    paper, wide, flat = (TrainingPair(str(s), "good", "01", "02", truth="unused.nii.gz", source=name)
                         for s, name in ((store, "paper"), (wider, "wider"), (unopened, "unopened")))
    assert step_one_candidates([paper, paper]) == StepOneConfig().candidate_settings()
    assert step_one_candidates([wide])["patch_padding_voxels"] == 3 and step_one_candidates([]) is None
    assert step_one_candidates([flat])["opening_radius_mm"] == 0
    with pytest.raises(InputError, match="wider:good:01-02's step one made candidates with patch_padding_voxels=3, "
                                         "but paper:good:01-02's with patch_padding_voxels=2"):
        step_one_candidates([paper, wide])
    with pytest.raises(InputError, match="unopened:good:01-02's step one made candidates with opening_radius_mm=0"):
        step_one_candidates([paper, paper, flat])


def test_xarray_opens_the_whole_store_with_every_array_named_by_its_axes(store, tmp_path):
    import pandas as pd
    import xarray as xr

    from storage.results import write_prediction

    process_pair(store, "good", "01", "02")
    own = tmp_path / "store.zarr"
    shutil.copytree(store, own)
    levels2 = read_pair_array(own, "good", "01", "02", "levels2")
    lesions = pd.DataFrame({"volume_mm3": [8.0, 16.0], "infratentorial": [False, True]})
    write_prediction(own, "good", "01", "02", "key", (levels2 > 4).astype(np.uint8), lesions, {"status": "ok"})
    clear_staging(own)  # as `msnl run` does when it finishes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in the store that Zarr does not recognise
        tree = xr.open_datatree(own, engine="zarr", zarr_format=3, consolidated=False)
    pair = tree["pairs/good/01/02"].dataset
    assert pair["levels2"].dims == ("i", "j", "k") and pair["levels2"].shape == levels2.shape
    assert pair["patches"].dims == ("element",)
    assert pair["table"].dims == ("table_row", "table_column")
    prediction = tree["predictions/good/01/02"].dataset
    assert prediction["newlesions"].dims == ("i", "j", "k")
    assert prediction["lesions"].sizes == {"lesions_row": 2, "lesions_column": 2}
    assert prediction["lesions"].attrs["columns"] == ["volume_mm3", "infratentorial"]
    assert tree["scans/good/02"].dataset["0"].dims == ("i", "j", "k")
