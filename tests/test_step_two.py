"""Step two end to end on arrays: predicted patches become a mask and a lesion table; weights
are saved with their metadata, fine-tuned with --init, and the shipped ones load offline."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from msnl.cnn import PatchCNN, PatchEnsemble
from msnl.config import CNNConfig, StepOneConfig
from msnl.errors import InputError
from msnl.inference import default_weights_path, load_weights, segment, trained_candidates
from msnl.scan import LabelMap
from pipelines.train import step_one_config, train_and_save
from tests.test_cnn import _toy_set

TINY = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=3, batch_size=8, lr_step_epochs=10, patches_per_epoch=None)


def test_segment_thresholds_at_075_and_tabulates_lesions():
    logits = np.full((20, 20, 10), -np.inf, np.float32)
    logits[2:5, 2:5, 2:4] = 3.0  # p = 0.95: kept
    logits[10:13, 10:13, 2:4] = 0.5  # p = 0.62: under 0.75, dropped
    logits[15:17, 15:17, 5:7] = 1.5  # p = 0.82: kept
    dmz = np.zeros(logits.shape, np.float32)
    dmz[15:17, 15:17, 5:7] = 120.0
    grid = LabelMap(np.zeros(logits.shape, bool), np.diag([1.0, 1.0, 2.0, 1.0]))
    seg = segment(logits, dmz, grid, CNNConfig(), StepOneConfig().infratentorial_dmz_mm)
    assert seg.mask.data.sum() == 18 + 8
    table = seg.lesions.sort_values("volume_mm3").reset_index(drop=True)
    assert table.volume_mm3.tolist() == [16.0, 36.0]
    assert table.mean_probability.tolist() == pytest.approx([1 / (1 + np.exp(-1.5)), 1 / (1 + np.exp(-3.0))])
    assert table.infratentorial.tolist() == [True, False]
    assert (table.x_mm.iloc[1], table.z_mm.iloc[1]) == pytest.approx((3.0, 5.0))


def test_an_optional_floor_drops_small_lesions_after_the_threshold():
    logits = np.full((20, 20, 10), -np.inf, np.float32)
    logits[2:5, 2:5, 2:4] = 3.0  # 18 voxels, 36 mm³
    logits[15:17, 15:17, 5:6] = 3.0  # 4 voxels, 8 mm³
    logits[10, 10, 2] = 3.0  # 1 voxel, 2 mm³
    grid = LabelMap(np.zeros(logits.shape, bool), np.diag([1.0, 1.0, 2.0, 1.0]))
    dmz = np.zeros(logits.shape, np.float32)
    assert len(segment(logits, dmz, grid, CNNConfig(), 90.0).lesions) == 3  # the paper keeps all
    seg = segment(logits, dmz, grid, replace(CNNConfig(), min_lesion_mm3=7.0), 90.0)
    assert sorted(seg.lesions.volume_mm3) == [8.0, 36.0] and seg.mask.data.sum() == 22


def test_no_patch_no_lesion():
    grid = LabelMap(np.zeros((4, 4, 4), bool), np.eye(4))
    seg = segment(np.full((4, 4, 4), -np.inf, np.float32), np.zeros((4, 4, 4)), grid, CNNConfig(), 90.0)
    assert not seg.mask.data.any() and isinstance(seg.lesions, pd.DataFrame) and len(seg.lesions) == 0


def test_weights_carry_seed_data_and_history_and_fine_tune_with_init(tmp_path):
    path = tmp_path / "w.pt"
    histories = train_and_save(_toy_set(), path, TINY, seed=3, progress=False)
    model, cfg, meta = load_weights(path)
    assert cfg == TINY and meta["seed"] == 3 and meta["data"] == ["toy"] and meta["histories"] == histories
    assert isinstance(model, PatchCNN) and len(histories) == 1
    assert (tmp_path / "w.loss.png").stat().st_size > 1000
    tuned = tmp_path / "tuned.pt"
    again = train_and_save(_toy_set(seed=1), tuned, TINY, seed=4, init=path, progress=False)
    assert again[0][0] < histories[0][0]  # starting from trained weights, the first epoch is already better
    assert load_weights(tuned)[2]["init"] == str(path)


def test_an_ensemble_trains_member_i_with_seed_plus_i_and_predicts_their_mean(tmp_path):
    single = train_and_save(_toy_set(), tmp_path / "one.pt", replace(TINY, epochs=2), seed=4, progress=False)
    pair_cfg = replace(TINY, epochs=2, ensemble_size=2)
    histories = train_and_save(_toy_set(), tmp_path / "two.pt", pair_cfg, seed=3, progress=False)
    model, cfg, meta = load_weights(tmp_path / "two.pt")
    assert cfg.ensemble_size == 2 and meta["seed"] == 3 and len(histories) == 2
    assert histories[1] == single[0]  # member 1 is the model seed 4 trains alone
    assert isinstance(model, PatchEnsemble) and len(model.members) == 2
    one, _, _ = load_weights(tmp_path / "one.pt")
    x = torch.rand(1, 5, 6, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.members[1](x), one(x))
        first = model.members[0](x)
        expected = (torch.sigmoid(first) + torch.sigmoid(one(x))) / 2
        torch.testing.assert_close(torch.sigmoid(model(x)), expected, atol=1e-5, rtol=1e-5)
    tuned = train_and_save(_toy_set(seed=1), tmp_path / "tuned.pt", pair_cfg, seed=5, init=tmp_path / "two.pt", progress=False)
    assert tuned[0][0] < histories[0][0] and tuned[1][0] < histories[1][0]  # each member from its own


def test_members_trained_apart_combine_into_the_file_one_run_writes(tmp_path, capsys):
    from msnl.training import combine_weights
    from pipelines.cli import main

    cfg = replace(TINY, epochs=2)
    one_run = train_and_save(_toy_set(), tmp_path / "one-run.pt", replace(cfg, ensemble_size=2), seed=3, progress=False)
    for seed in (3, 4):
        train_and_save(_toy_set(), tmp_path / f"seed{seed}.pt", cfg, seed=seed, progress=False)
    assert main(["combine-weights", str(tmp_path / "seed4.pt"), str(tmp_path / "seed3.pt"), "--out", str(tmp_path / "joined.pt")]) == 0
    assert "2 members written" in capsys.readouterr().out and (tmp_path / "joined.loss.png").stat().st_size > 1000
    joined, joined_cfg, meta = load_weights(tmp_path / "joined.pt")
    expected, expected_cfg, expected_meta = load_weights(tmp_path / "one-run.pt")
    assert joined_cfg == expected_cfg and meta["seed"] == 3 and meta["histories"] == one_run
    assert all(meta[k] == expected_meta[k] for k in ("data", "patches", "tp_patches", "init"))
    assert [s["seed"] for s in meta["combined_from"]] == [3, 4]
    for got, want in zip(joined.members, expected.members):
        for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(InputError, match="consecutive seeds"):
        combine_weights([tmp_path / "seed3.pt", tmp_path / "one-run.pt"], tmp_path / "bad.pt")  # seed 3 twice
    train_and_save(_toy_set(), tmp_path / "other-config.pt", replace(cfg, epochs=1), seed=4, progress=False)
    with pytest.raises(InputError, match="differs .* in epochs"):
        combine_weights([tmp_path / "seed3.pt", tmp_path / "other-config.pt"], tmp_path / "bad.pt")
    train_and_save(_toy_set(n=40), tmp_path / "other-data.pt", cfg, seed=4, progress=False)
    with pytest.raises(InputError, match="other data"):
        combine_weights([tmp_path / "seed3.pt", tmp_path / "other-data.pt"], tmp_path / "bad.pt")
    torch.save({"state_dict": PatchCNN(cfg).state_dict(), "config": cfg.to_dict()}, tmp_path / "no-seed.pt")
    with pytest.raises(InputError, match="no seed"):
        combine_weights([tmp_path / "seed3.pt", tmp_path / "no-seed.pt"], tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_inference_fields_change_in_a_weights_file_without_retraining(tmp_path, capsys):
    from msnl.config import ConfigError
    from msnl.inference import predict_patches, weights_digest
    from msnl.training import combine_weights
    from pipelines.cli import main

    train_and_save(_toy_set(), tmp_path / "seed0.pt", replace(TINY, epochs=1), seed=0, progress=False)
    assert main(["combine-weights", str(tmp_path / "seed0.pt"), "--out", str(tmp_path / "tta.pt"),
                 "--option", "test_time_flip_axes=[0, 1]", "--option", "threshold=0.8"]) == 0
    (model, cfg, _), (same, flips, meta) = load_weights(tmp_path / "seed0.pt"), load_weights(tmp_path / "tta.pt")
    assert flips == replace(cfg, test_time_flip_axes=(0, 1), threshold=0.8) and meta["seed"] == 0
    assert weights_digest(tmp_path / "tta.pt") != weights_digest(tmp_path / "seed0.pt")  # `msnl run` predicts again
    patch = _toy_set().patches[0]
    once, averaged = predict_patches(model.eval(), [patch], cfg)[0], predict_patches(same.eval(), [patch], flips)[0]
    assert not np.allclose(once, averaged) and np.allclose(once, predict_patches(same.eval(), [patch], cfg)[0])
    with pytest.raises(ConfigError, match="widths: only inference fields"):
        combine_weights([tmp_path / "seed0.pt"], tmp_path / "bad.pt", {"widths": (8,) * 6})
    assert main(["combine-weights", str(tmp_path / "seed0.pt"), "--out", str(tmp_path / "bad.pt"),
                 "--option", "test_time_flip_axes=[0, 0]"]) == 2
    assert "test_time_flip_axes" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()


def test_weights_from_before_ensembles_load_and_a_member_count_mismatch_is_refused(tmp_path):
    model = PatchCNN(TINY)
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": model.state_dict(), "config": TINY.to_dict(), "seed": 1}, legacy)
    loaded, cfg, meta = load_weights(legacy)
    assert isinstance(loaded, PatchCNN) and cfg.ensemble_size == 1 and meta == {"config": TINY.to_dict(), "seed": 1}
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dicts": [model.state_dict()], "config": replace(TINY, ensemble_size=2).to_dict()}, wrong)
    with pytest.raises(InputError, match="1 member state"):
        load_weights(wrong)


def test_shipped_weights_load_offline_and_predict():
    path = default_weights_path()
    if not path.exists():
        pytest.fail(f"the package must ship its weights at {path}")
    model, cfg, meta = load_weights()
    assert cfg.threshold == 0.75 and meta["seed"] is not None and meta["data"]
    assert path.stat().st_size < 5 * 2**20
    with torch.no_grad():
        assert model(torch.zeros(1, 5, 6, 6, 3)).shape == (1, 1, 6, 6, 3)


def test_weights_record_step_ones_candidate_settings_and_a_run_made_another_way_is_refused_before_any_work(tmp_path):
    from msnl.inference import check_candidates
    from pipelines.run import run_cohort

    data = _toy_set()
    data.step_one = StepOneConfig(patch_padding_voxels=3, opening_radius_mm=0).candidate_settings()
    path = tmp_path / "w3.pt"
    train_and_save(data, path, replace(TINY, epochs=1), seed=0, progress=False)
    meta = load_weights(path)[2]
    assert meta["step_one"]["patch_padding_voxels"] == 3 and meta["step_one"]["opening_radius_mm"] == 0
    check_candidates(meta, StepOneConfig(patch_padding_voxels=3, opening_radius_mm=0).candidate_settings(), path)
    with pytest.raises(InputError, match=r"w3\.pt: .*made with opening_radius_mm=0, patch_padding_voxels=3, but step one is "
                                         r"set to opening_radius_mm=1\.0, patch_padding_voxels=2\. Use the weights' values "
                                         r"\(--step-one opening_radius_mm=0 --step-one patch_padding_voxels=3\)"):
        check_candidates(meta, StepOneConfig().candidate_settings(), path)
    store = tmp_path / "store.zarr"
    with pytest.raises(InputError, match="opening_radius_mm=0"):
        run_cohort(tmp_path / "no-source", store, weights=str(path), cfg=StepOneConfig(patch_padding_voxels=3), progress=False)
    assert not store.exists()  # refused before ingest
    # fine-tuning from these weights on candidates made the paper's way is refused too
    data.step_one = StepOneConfig().candidate_settings()
    with pytest.raises(InputError, match="the training pairs' step one made them with opening_radius_mm=1.0"):
        train_and_save(data, tmp_path / "tuned.pt", replace(TINY, epochs=1), seed=0, init=path, progress=False)
    assert not (tmp_path / "tuned.pt").exists()
    shipped = load_weights()[2]  # trained before the record: the paper's candidates
    check_candidates(shipped, StepOneConfig().candidate_settings())
    for field, value in (("patch_padding_voxels", 3), ("ratio_threshold", 1.1), ("min_component_mm3", 3.0),
                         ("match_resolution_ratio", 1.5)):
        with pytest.raises(InputError, match=f"--step-one {field}="):
            check_candidates(shipped, StepOneConfig(**{field: value}).candidate_settings())
    # the fix the message gives is one `--step-one` takes: matching switched off reads as null
    with pytest.raises(InputError) as refused:
        check_candidates(shipped, StepOneConfig(match_resolution_ratio=1.5).candidate_settings())
    fix = re.search(r"\(--step-one (\S+)\)", str(refused.value)).group(1)
    assert step_one_config([fix]) == StepOneConfig()
    # weights trained on matched candidates refuse candidates made without matching
    with pytest.raises(InputError, match=r"--step-one match_resolution_ratio=1\.5\)"):
        check_candidates({"step_one": StepOneConfig(match_resolution_ratio=1.5).candidate_settings()},
                         StepOneConfig().candidate_settings())
    # files written between the two records hold only the padding
    assert trained_candidates({"patch_padding_voxels": 3}) == StepOneConfig(patch_padding_voxels=3).candidate_settings()
