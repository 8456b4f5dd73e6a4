"""The command line explains itself."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from msnl import __version__
from pipelines.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"msnl {__version__}"


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert {"ingest", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: msnl {name}") and len(out.splitlines()) > 4


def test_fine_tuning_trains_with_the_init_weights_config(tmp_path, monkeypatch):
    import torch

    import pipelines.train as train_module
    from msnl.cnn import PatchCNN
    from msnl.config import CNNConfig
    from msnl.training import TrainingSet, save_weights

    init_cfg = CNNConfig(widths=(4, 4, 4, 4, 4, 4), flair_input="intensities", context_voxels=1, ensemble_size=2,
                         patches_per_epoch=64)
    init = tmp_path / "init.pt"
    save_weights(init, [PatchCNN(init_cfg), PatchCNN(init_cfg)], init_cfg, 0, [[1.0], [1.0]], torch.device("cpu"), TrainingSet())
    seen = {}

    def collect(pairs, *, flair_input, context_voxels=0, progress=True):
        seen["flair_input"], seen["context_voxels"] = flair_input, context_voxels

    def train_and_save(data, out, cfg, seed, init=None, progress=True):
        seen["cfg"] = cfg
        return [[1.0, 0.5]] * cfg.ensemble_size

    monkeypatch.setattr(train_module, "prepare_pairs", lambda *args, **kwargs: [])
    monkeypatch.setattr(train_module, "collect", collect)
    monkeypatch.setattr(train_module, "check_trainable", lambda data, sources: None)
    monkeypatch.setattr(train_module, "train_and_save", train_and_save)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "t.pt"), "--init", str(init), "--option", "epochs=2"]) == 0
    assert seen["flair_input"] == "intensities"  # not the default grey levels
    assert seen["context_voxels"] == 1  # patches cropped as the init weights saw them
    assert seen["cfg"] == CNNConfig.from_dict({**init_cfg.to_dict(), "epochs": 2})


def test_train_options_are_checked_before_any_work(tmp_path, capsys):
    from pipelines.train import cnn_config

    assert cnn_config(["size_bucket_window=8", "widths=[8, 8, 8, 8, 8, 8]"], epochs=3).size_bucket_window == 8
    assert cnn_config(["tp_patches=own_component"]).tp_patches == cnn_config(['tp_patches="own_component"']).tp_patches == "own_component"
    assert cnn_config(["flair_input=intensities"]).flair_input == "intensities"
    assert cnn_config(["balance_sources=true"]).balance_sources is True
    for option, said in (("no_such_field=1", "CNNConfig has no field 'no_such_field'"),
                         ("size_bucket_window", "KEY=VALUE"),
                         ("size_bucket_window=eight", "must be JSON"),
                         ("size_bucket_window=0", "size_bucket_window must be at least 1"),
                         ("tp_patches=margin", "tp_patches must be 'any_truth' or 'own_component'"),
                         ("flair_input=raw", "flair_input must be 'grey_levels' or 'intensities'"),
                         ("context_voxels=-1", "context_voxels must be at least 0"),
                         ("balance_sources=1", "balance_sources must be true or false, got 1"),
                         ("widths=3", "--option widths=3: a value of the wrong kind")):
        assert main(["train", str(tmp_path), "--out", str(tmp_path / "w.pt"), "--work", str(tmp_path / "work"),
                     "--option", option]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "w.pt").exists()


def test_step_one_options_reach_step_one_and_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import pipelines.run as run_module
    import pipelines.train as train_module
    from msnl.inference import default_weights_path
    from pipelines.run import RunSummary

    store = tmp_path / "store.zarr"
    for option, said in (("opening=1", "--step-one 'opening=1': StepOneConfig has no field 'opening'"),
                         ("opening_radius_mm", "write it as KEY=VALUE, e.g. --step-one opening_radius_mm=1.0"),
                         ("opening_radius_mm=-1", "invalid step-one configuration: opening_radius_mm=-1"),
                         ("grey_levels=[6]", "--step-one grey_levels=[6]: a value of the wrong kind"),
                         # the shipped weights were trained on the paper's candidates
                         ("ratio_threshold=1.1", "made with ratio_threshold=1.15, but step one is set to ratio_threshold=1.1. "
                                                 "Use the weights' values (--step-one ratio_threshold=1.15)")):
        assert main(["run", str(tmp_path), str(store), "--step-one", option]) == 2
        assert said in capsys.readouterr().err
    assert not store.exists()
    seen = {}

    def run_cohort(source, store, *, cfg, **kwargs):
        seen["run"] = cfg
        return RunSummary(0, 0, 0, [], 0)

    def prepare_pairs(sources, work, cfg, **kwargs):
        seen["train"] = cfg
        return []

    monkeypatch.setattr(run_module, "run_cohort", run_cohort)
    monkeypatch.setattr(train_module, "prepare_pairs", prepare_pairs)
    monkeypatch.setattr(train_module, "collect", lambda pairs, **kwargs: None)
    monkeypatch.setattr(train_module, "check_trainable", lambda data, sources: None)
    monkeypatch.setattr(train_module, "train_and_save", lambda *args, **kwargs: [[1.0]])
    assert main(["run", str(tmp_path), str(store), "-q", "--step-one", "patch_padding_voxels=3"]) == 0
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "w.pt"), "--step-one", "opening_radius_mm=0",
                 "--step-one", "min_component_mm3=5"]) == 0
    assert seen["run"].patch_padding_voxels == 3 and seen["run"].opening_radius_mm == 1.0
    assert seen["train"].opening_radius_mm == 0 and seen["train"].min_component_mm3 == 5
    assert seen["train"].ratio_threshold == 1.15  # the paper's, where no option says otherwise
    del seen["train"]  # fine-tuning the shipped weights on candidates made another way: refused before step one
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "w.pt"), "--init", str(default_weights_path()),
                 "--step-one", "opening_radius_mm=0"]) == 2
    assert "Use the weights' values (--step-one opening_radius_mm=1.0)" in capsys.readouterr().err and "train" not in seen


def test_demo_into_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert main(["demo", str(target)]) == 2
    assert f"{target}: can't make the demo folder here" in capsys.readouterr().err


def test_train_excluded_subjects_never_reach_step_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pipelines.train as train_module

    stepped, seen = [], {}
    monkeypatch.setattr(train_module, "run_ingest", lambda *args, **kwargs: SimpleNamespace(failed=0))
    monkeypatch.setattr(train_module, "training_pairs",
                        lambda source, store: [SimpleNamespace(subject=s, name=s) for s in ("patient01", "patient12")])

    def step_one(pair, cfg):
        stepped.append(pair.subject)
        return pair, "ok", ""

    monkeypatch.setattr(train_module, "_step_one", step_one)
    kept = train_module.prepare_pairs([tmp_path], tmp_path / "work", workers=1, progress=False, exclude={"patient01"})
    assert [p.subject for p in kept] == stepped == ["patient12"]

    def prepare_pairs(sources, work, cfg, **kwargs):
        seen["exclude"] = kwargs["exclude"]
        return []

    monkeypatch.setattr(train_module, "prepare_pairs", prepare_pairs)
    monkeypatch.setattr(train_module, "collect", lambda pairs, **kwargs: None)
    monkeypatch.setattr(train_module, "check_trainable", lambda data, sources: None)
    monkeypatch.setattr(train_module, "train_and_save", lambda *args, **kwargs: [[1.0]])
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "w.pt"), "--exclude", "patient01"]) == 0
    assert seen["exclude"] == {"patient01"}


def test_status_says_where_a_store_stands_and_lists_every_failure(tmp_path, capsys):
    from storage import open_results
    from storage.report import RunReport
    from storage.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "store.zarr", 10, seed=1, pending_share=0.3, failed_share=0.15)
    rows = open_results(store).status.to_dataframe().reset_index().dropna()
    pending = rows[rows.status == "pending"]
    crashed = (pending.subject.iloc[0], pending.interval.iloc[0])
    RunReport(store, [(crashed[0], *crashed[1].split("->"))]).failed(*crashed, "failed", "its child process was killed")
    assert main(["status", str(store)]) == 0
    out = capsys.readouterr().out
    failed = rows[~rows.status.isin(["ok", "pending"])]
    assert (f"{rows.subject.nunique()} subjects, {len(rows)} intervals: {(rows.status == 'ok').sum()} processed, "
            f"{len(pending) - 1} pending, {len(failed) + 1} failed") in out
    for subject, interval in [*zip(failed.subject, failed.interval), crashed]:
        assert f"sub-{subject} {interval}: " in out
    assert "its child process was killed" in out
    assert "not finished (still running, or stopped): 1 interval(s), 1 failed" in out


def test_status_tracebacks_shows_where_each_task_failure_was_raised(tmp_path, capsys):
    from storage import open_results
    from storage.report import RunReport
    from storage.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "store.zarr", 10, seed=1, pending_share=0.4, failed_share=0.15)
    rows = open_results(store).status.to_dataframe().reset_index().dropna()
    (s1, i1), (s2, i2) = rows[rows.status == "pending"][["subject", "interval"]].head(2).itertuples(index=False)
    report = RunReport(store, [(s1, *i1.split("->")), (s2, *i2.split("->")), ("gone", "01", "02")])
    report.failed(s1, i1, "cnn_failed", "RuntimeError: CUDA out of memory",
                  traceback='Traceback (most recent call last):\n  File "msnl/inference.py", line 1, in predict\nRuntimeError: CUDA out of memory')
    report.failed(s2, i2, "failed", "its child process was killed")
    report.failed("gone", "01->02", "failed", "a subject since taken out of the source")  # not in the cohort
    assert main(["status", str(store), "--tracebacks"]) == 0
    out = capsys.readouterr().out
    assert f"sub-{s1} {i1}: cnn_failed: RuntimeError: CUDA out of memory\nTraceback (most recent call last):" in out
    assert 'File "msnl/inference.py", line 1, in predict' in out and "sub-gone" not in out
    assert f"sub-{s2} {i2}: failed: its child process was killed\n(no traceback recorded" in out
    stored_failures = rows[~rows.status.isin(["ok", "pending"])]
    assert not any(f"sub-{s} {i}:" in out for s, i in zip(stored_failures.subject, stored_failures.interval))
    assert main(["status", str(store), "--tracebacks", "--subject", s2]) == 0
    out = capsys.readouterr().out
    assert f"sub-{s2} {i2}" in out and f"sub-{s1} " not in out


def test_status_tracebacks_without_task_failures_says_so(tmp_path, capsys):
    from storage.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "store.zarr", 4, seed=1, failed_share=0.3)
    assert main(["status", str(store), "--tracebacks"]) == 0
    assert "no task failure to show" in capsys.readouterr().out
    assert main(["status", str(store), "--subject", "001"]) == 2
    assert "--subject narrows --tracebacks" in capsys.readouterr().err


def _refuse_cohort_table(monkeypatch, code):
    """`msnl ingest` fails with `code` where it writes the cohort table (in the client)."""
    import pipelines.ingest

    def refused(store, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(Path(store) / "cohort"))

    monkeypatch.setattr(pipelines.ingest, "write_cohort_table", refused)


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")])
def test_a_full_disk_or_a_refused_write_is_one_line_naming_the_file(bids_cohort, tmp_path, capsys, monkeypatch, code, says):
    _refuse_cohort_table(monkeypatch, code)
    store = tmp_path / "store.zarr"
    assert main(["ingest", str(bids_cohort), str(store), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("msnl ingest: error: ")
    assert str(store / "cohort") in err and says in err


def test_any_other_os_error_keeps_its_traceback(bids_cohort, tmp_path, monkeypatch):
    _refuse_cohort_table(monkeypatch, errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        main(["ingest", str(bids_cohort), str(tmp_path / "store.zarr"), "--quiet"])


def test_export_skips_an_interval_whose_scan_is_missing_and_writes_the_rest(tmp_path, capsys):
    """`storage.synthetic` stores hold results but no scans, as a store would whose scan
    groups were lost: no mask has a scanner space to go in."""
    from storage import open_results
    from storage.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "store.zarr", 3, seed=1)
    done = open_results(store).status.to_dataframe().reset_index().query("status == 'ok'")
    assert main(["export", str(store), str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("  [skipped] ")]
    assert len(skipped) == len(done) > 0
    assert all("is not in the store" in line and "msnl ingest" in line for line in skipped)
    assert f"scans/{done.subject.iloc[0]}/{done.interval.iloc[0].split('->')[1]}" in captured.err
    assert f"{len(done)} interval(s) skipped" in captured.out
    assert (tmp_path / "out" / "intervals.csv").read_text().count("\n") == len(open_results(store).to_dataframe()) + 1
    assert (tmp_path / "out" / "lesions.csv").exists()


def test_status_of_a_missing_store_is_one_clear_line(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nowhere.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere.zarr: no such store" in err


def test_printed_commands_use_the_path_msnl_was_started_by_when_path_does_not_reach_it(tmp_path, monkeypatch):
    from pipelines.cli import _msnl_command

    script = tmp_path / "my env" / "bin" / "msnl"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr("sys.argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert _msnl_command() == f"'{script}'"  # quoted: the path holds a space
    monkeypatch.setenv("PATH", str(script.parent))
    assert _msnl_command() == "msnl"
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/pytest", "demo"])  # not the console script
    assert _msnl_command() == "msnl"


def test_training_data_without_tp_or_without_any_patch_is_a_clear_error_before_training(tmp_path, capsys, monkeypatch):
    import numpy as np

    import pipelines.train as train_module
    from msnl.training import TrainingSet

    fp_only = TrainingSet()
    for i in range(3):
        fp_only.add(np.zeros((2, 4, 4, 4), np.float32), np.zeros((4, 4, 4), bool), False, f"src:p{i}:01-02", False)
    trained = []
    monkeypatch.setattr(train_module, "prepare_pairs", lambda *args, **kwargs: [])
    monkeypatch.setattr(train_module, "train_and_save", lambda *args, **kwargs: trained.append(1))
    for data, says in ((fp_only, "the 3 training pair(s) of"), (TrainingSet(), "step one left no usable pair")):
        monkeypatch.setattr(train_module, "collect", lambda pairs, data=data, **kwargs: data)
        assert main(["train", str(tmp_path), "--out", str(tmp_path / "w.pt"), "--work", str(tmp_path / "work")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
        if data is fp_only:
            assert "give 0 TP and 3 FP patches" in err and "no TP patches" in err
    assert not trained


@pytest.mark.parametrize("trial_facts", [True, False])
def test_run_summary_shows_the_trial_facts_the_source_gave_and_no_empty_columns(tmp_path, capsys, monkeypatch, trial_facts):
    import pipelines.run as run_module
    from pipelines.run import RunSummary
    from storage.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "store.zarr", 3, seed=1, trial_facts=trial_facts)
    monkeypatch.setattr(run_module, "run_cohort", lambda source, store, **kwargs: RunSummary(6, 6, 0, []))
    assert main(["run", str(tmp_path), str(store)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "new_lesion_count" in line).split()
    assert header[:3] == ["new_lesion_count", "new_lesion_volume_mm3", "status"]
    assert {"start", "end", "arm", "site", "interval_days"} <= set(header) if trial_facts else \
        not {"start", "end", "arm", "site", "interval_days"} & set(header)
