"""Run reports: a task that fails without leaving a result (an error, a child process that died
or was stopped, the CNN) shows as failed, with its message, in `storage.open_results` and so in
the dashboard, instead of as pending; a later run that takes the interval on again clears it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from storage import open_results, results_stamp
from storage.layout import new_staging_dir, open_root, publish, write_group_json
from storage.pairs import pair_key
from storage.results import open_interval, open_lesions, read_prediction_attrs, write_prediction
from storage.report import FAILURE_LOG, RunReport, read_run_reports, run_failures, run_history
from storage.synthetic import write_synthetic_store


@pytest.fixture()
def store(tmp_path):
    return write_synthetic_store(tmp_path / "store.zarr", 6, seed=4, pending_share=0.5)


def _pending(store) -> list[tuple[str, str, str]]:
    results = open_results(store)
    rows = results.status.to_dataframe().reset_index()
    pending = rows[rows.status == "pending"]
    assert len(pending) >= 2, "the fixture needs pending intervals"
    return [(s, *i.split("->")) for s, i in zip(pending.subject, pending.interval)]


def test_a_task_failure_shows_with_its_message_instead_of_pending(store):
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    report = RunReport(store, _pending(store))
    report.failed(s1, f"{a1}->{b1}", "failed", "IsolatedTaskError: step one: its child process was stopped")
    results = open_results(store)
    assert results.status.sel(subject=s1, interval=f"{a1}->{b1}").item() == "failed"
    assert "was stopped" in results.message.sel(subject=s1, interval=f"{a1}->{b1}").item()
    assert results.status.sel(subject=s2, interval=f"{a2}->{b2}").item() == "pending"
    assert np.isnan(results.new_lesion_volume_mm3.sel(subject=s1, interval=f"{a1}->{b1}").item())


def test_a_later_run_that_takes_the_interval_on_again_clears_the_failure(store):
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    first = RunReport(store, _pending(store))
    first.failed(s1, f"{a1}->{b1}", "cnn_failed", "the CNN failed")
    first.failed(s2, f"{a2}->{b2}", "cnn_failed", "the CNN failed")
    first.finish(done=0)
    RunReport(store, [(s1, a1, b1)])  # still running: it has not reached this interval yet
    assert run_failures(store) == {(s2, f"{a2}->{b2}"): {"subject": s2, "interval": f"{a2}->{b2}", "status": "cnn_failed",
                                                          "message": "the CNN failed", "stored_result": None,
                                                          "traceback": ""}}
    results = open_results(store)
    assert results.status.sel(subject=s1, interval=f"{a1}->{b1}").item() == "pending"
    assert results.status.sel(subject=s2, interval=f"{a2}->{b2}").item() == "cnn_failed"


def test_a_stored_result_outranks_an_older_task_failure(store):
    results = open_results(store)
    done = results.status.to_dataframe().reset_index().query("status == 'ok'").iloc[0]
    RunReport(store, [(done.subject, *done.interval.split("->"))]).failed(done.subject, done.interval, "failed", "old")
    assert open_results(store).status.sel(subject=done.subject, interval=done.interval).item() == "ok"


def _done(store) -> tuple[str, str, str, str]:
    """An interval with a stored result and new lesions: subject, interval, visits."""
    results = open_results(store)
    rows = results.new_lesion_count.to_dataframe().reset_index().merge(results.status.to_dataframe().reset_index())
    row = rows[(rows.status == "ok") & (rows.new_lesion_count > 0)].iloc[0]
    return row.subject, row.interval, *row.interval.split("->")


def test_a_later_run_failing_the_interval_supersedes_the_result_it_found(store):
    """A run that took on an interval with a stored result (new weights, say) and failed it:
    the old result no longer stands for that interval, in the table, the lesions or the images."""
    subject, interval, a, b = _done(store)
    assert len(open_lesions(store, subject, interval)) > 0
    stored = read_prediction_attrs(store, subject, a, b)["result_key"]
    RunReport(store, [(subject, a, b)]).failed(subject, interval, "cnn_failed", "CUDA out of memory", stored_result=stored)
    results = open_results(store)
    assert results.status.sel(subject=subject, interval=interval).item() == "cnn_failed"
    assert results.message.sel(subject=subject, interval=interval).item() == "CUDA out of memory"
    assert results.new_lesion_count.sel(subject=subject, interval=interval).item() == -1
    assert open_lesions(store, subject, interval).empty
    assert "newlesions" not in open_interval(store, subject, a, b)


def test_a_result_published_after_the_failure_stands(store):
    subject, interval, a, b = _done(store)
    RunReport(store, [(subject, a, b)]).failed(subject, interval, "cnn_failed", "boom", stored_result="an older result")
    assert open_results(store).status.sel(subject=subject, interval=interval).item() == "ok"
    assert len(open_lesions(store, subject, interval)) > 0


def test_a_result_made_from_a_replaced_step_one_result_no_longer_counts(store):
    """Step one re-ran (another config) and stored a failure: the prediction made from the
    step-one result it replaced shows neither its count nor its lesions."""
    subject, interval, a, b = _done(store)
    zarr.open_group(Path(store) / pair_key(subject, a, b), mode="w", zarr_format=3).attrs.update(
        {"status": "registration_failed", "message": "visits correlate at 0.30", "result_key": "another config"})
    results = open_results(store)
    assert results.status.sel(subject=subject, interval=interval).item() == "registration_failed"
    assert results.new_lesion_count.sel(subject=subject, interval=interval).item() == -1
    assert open_lesions(store, subject, interval).empty
    assert not open_lesions(store).query("subject == @subject and interval == @interval").size


def test_the_run_history_lists_runs_newest_first_with_their_counts(store):
    assert run_history(store).empty
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    first = RunReport(store, [(s1, a1, b1), (s2, a2, b2)])
    first.failed(s1, f"{a1}->{b1}", "failed", "boom")
    first.finish(done=1)
    RunReport(store, [(s1, a1, b1)])  # still running, or stopped
    history = run_history(store)
    assert list(history.intervals) == [1, 2] and list(history.failed) == [0, 1]
    assert pd.isna(history.finished[0]) and pd.isna(history.done[0]) and history.done[1] == 1
    assert history.started[0] > history.started[1] and history.finished[1] >= history.started[1]
    assert pd.isna(history.minutes[0]) and history.minutes[1] >= 0


def test_each_failure_is_on_disk_at_once_and_moves_the_results_stamp(store):
    (s1, a1, b1), *_ = _pending(store)
    report = RunReport(store, [(s1, a1, b1)])
    before = results_stamp(store)
    report.failed(s1, f"{a1}->{b1}", "failed", "boom")  # a run killed now keeps this record
    [stored] = read_run_reports(store)
    assert stored["failures"][0]["message"] == "boom" and stored["finished"] is None
    assert results_stamp(store) != before


def test_a_reader_parses_again_only_the_reports_that_changed_and_sees_every_change(store, monkeypatch):
    import storage.report

    parsed = []
    real = storage.report.group_attrs
    monkeypatch.setattr(storage.report, "group_attrs", lambda path: parsed.append(path.name) or real(path))
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    finished = RunReport(store, [(s1, a1, b1)])
    finished.failed(s1, f"{a1}->{b1}", "failed", "first")
    finished.finish(done=0)
    running = RunReport(store, [(s2, a2, b2)])
    assert [len(r["failures"]) for r in read_run_reports(store)] == [1, 0] and len(parsed) == 2
    read_run_reports(store)
    assert len(parsed) == 2  # nothing changed: nothing parsed

    running.failed(s2, f"{a2}->{b2}", "cnn_failed", "second")
    assert [len(r["failures"]) for r in read_run_reports(store)] == [1, 1]
    assert parsed[2:] == [running.key.split("/")[-1]]  # the finished report is not parsed again
    running.finish(done=0)
    assert [r["done"] for r in read_run_reports(store)] == [0, 0] and parsed[3:] == [running.key.split("/")[-1]]
    assert set(run_failures(store)) == {(s1, f"{a1}->{b1}"), (s2, f"{a2}->{b2}")}


def test_changing_what_read_run_reports_returned_leaves_the_next_read_as_stored(store):
    (s1, a1, b1), *_ = _pending(store)
    report = RunReport(store, [(s1, a1, b1)])
    report.failed(s1, f"{a1}->{b1}", "failed", "boom")
    [first] = read_run_reports(store)
    first["failures"][0]["message"] = "changed"
    first["failures"].clear()
    first["intervals"].append(("someone", "01->02"))
    first["finished"] = "never"
    [again] = read_run_reports(store)
    assert again["failures"][0]["message"] == "boom" and again["intervals"] == [(s1, f"{a1}->{b1}")]
    assert again["finished"] is None


def test_a_failure_is_appended_to_the_log_and_leaves_the_reports_attributes_as_they_were(store):
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    report = RunReport(store, [(s1, a1, b1), (s2, a2, b2)])
    header = store / report.key / "zarr.json"
    written = header.read_bytes()
    report.failed(s1, f"{a1}->{b1}", "failed", "boom", traceback="Traceback ...")
    report.failed(s2, f"{a2}->{b2}", "cnn_failed", "the CNN failed")
    assert header.read_bytes() == written  # not rewritten: a failure costs the same however many came before
    report.finish(done=0)
    [stored] = read_run_reports(store)
    assert stored["finished"] is not None and stored["done"] == 0
    assert [(f["subject"], f["status"], f["traceback"]) for f in stored["failures"]] == [
        (s1, "failed", "Traceback ..."), (s2, "cnn_failed", "")]
    assert set(run_failures(store)) == {(s1, f"{a1}->{b1}"), (s2, f"{a2}->{b2}")}


def test_a_failure_line_cut_short_by_a_crash_is_left_out_and_the_others_stay(store):
    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    report = RunReport(store, [(s1, a1, b1), (s2, a2, b2)])
    report.failed(s1, f"{a1}->{b1}", "failed", "boom")
    with open(store / report.key / FAILURE_LOG, "a") as log:
        log.write('{"subject": "%s", "interval": "%s->%s", "sta' % (s2, a2, b2))  # the client died mid-write
    assert [f["subject"] for f in read_run_reports(store)[0]["failures"]] == [s1]
    results = open_results(store)
    assert results.status.sel(subject=s1, interval=f"{a1}->{b1}").item() == "failed"
    assert results.status.sel(subject=s2, interval=f"{a2}->{b2}").item() == "pending"


def test_a_write_that_stops_short_is_finished_and_one_that_fails_stops_the_run(store, monkeypatch):
    import errno
    import os

    import storage.report

    (s1, a1, b1), (s2, a2, b2), *_ = _pending(store)
    report = RunReport(store, [(s1, a1, b1), (s2, a2, b2)])
    real_write, calls = os.write, []

    def short(fd, data):  # a disk filling up writes part of what it is given
        calls.append(len(data))
        return real_write(fd, data[:10])

    monkeypatch.setattr(storage.report.os, "write", short)
    report.failed(s1, f"{a1}->{b1}", "failed", "boom", traceback="x" * 100)
    assert len(calls) > 1 and read_run_reports(store)[0]["failures"][0]["traceback"] == "x" * 100

    room = [10]

    def full(fd, data):  # then it is full: part of the line, then an error
        if not room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:room.pop()])

    monkeypatch.setattr(storage.report.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        report.failed(s2, f"{a2}->{b2}", "failed", "never recorded")
    assert [f["subject"] for f in read_run_reports(store)[0]["failures"]] == [s1]


def test_reports_written_before_the_failure_log_still_read(store):
    """Until 2026-12-07 a report's failures were in its attributes."""
    (s1, a1, b1), *_ = _pending(store)
    staged = new_staging_dir(store)
    write_group_json(staged, {"started": "20261206T120000000000Z", "finished": "20261206T121000000000Z", "done": 0,
                              "intervals": [[s1, f"{a1}->{b1}"]], "found_done": [],
                              "failures": [{"subject": s1, "interval": f"{a1}->{b1}", "status": "cnn_failed",
                                            "message": "old format", "stored_result": None, "traceback": ""}]})
    publish(store, staged, "reports/run-20261206T120000000000Z")
    assert run_failures(store)[(s1, f"{a1}->{b1}")]["message"] == "old format"
    assert list(run_history(store).failed) == [1]


def test_msnl_run_records_task_failures_for_the_dashboard(tmp_path, monkeypatch):
    """`msnl run` on a cluster in this process, with the child processes replaced: N4 does
    nothing, step one of subject b dies, and subject a's step one 'succeeds' without writing
    anything, so its CNN task finds no candidates."""
    from distributed import LocalCluster

    import pipelines.run as run
    from msnl.scan import Scan
    from pipelines.isolate import IsolatedTaskError
    from storage.bids import BidsVisit, write_bids
    from storage.pairs import PairOutcome, process_pair

    def fake_isolated(func, *args, **kwargs):
        if func is not process_pair:
            return None
        store, subject, a, b, _ = args
        if subject == "b":
            raise IsolatedTaskError(f"{kwargs['what']}: its child process was killed by SIGKILL")
        return PairOutcome(subject, a, b, "ok", "")

    monkeypatch.setattr(run, "run_isolated", fake_isolated)
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    visits = [BidsVisit(s, v, Scan(rng.uniform(100, 200, (24, 24, 16)).astype(np.float32), affine), f"202{i}-01-01", "placebo", "site-1")
              for s in ("a", "b") for i, v in enumerate(("01", "02"))]
    write_bids(tmp_path / "bids", visits)
    store = tmp_path / "store.zarr"
    # a result from earlier weights, which the run's CNN failure supersedes
    open_root(store, create=True)
    write_prediction(store, "a", "01", "02", "earlier result", None, None, {"status": "ok"})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run.run_cohort(tmp_path / "bids", store, scheduler=cluster.scheduler_address, progress=False)
    assert {(f[0], f[2]) for f in summary.failed} == {("a", "cnn_failed"), ("b", "failed")}
    results = open_results(store)
    assert results.status.sel(subject="a", interval="01->02").item() == "cnn_failed"
    assert results.status.sel(subject="b", interval="01->02").item() == "failed"
    assert "killed by SIGKILL" in results.message.sel(subject="b", interval="01->02").item()
    [report] = read_run_reports(store)
    assert report["finished"] is not None and report["done"] == 0
    assert (store / summary.report / "zarr.json").exists() and (store / summary.report / FAILURE_LOG).exists()
    assert {f["subject"]: f["stored_result"] for f in report["failures"]} == {"a": "earlier result", "b": None}
    trace = next(f["traceback"] for f in report["failures"] if f["subject"] == "b")
    assert "in fake_isolated" in trace and "IsolatedTaskError: step one of sub-b" in trace


def test_going_back_to_the_weights_of_a_stored_result_clears_a_newer_failure(tmp_path):
    """A run with new weights failed an interval that had a result; the next run, back on the
    weights that made that result, finds it done, and the result shows again."""
    from msnl.config import StepOneConfig
    from msnl.inference import weights_digest
    from msnl.scan import Scan
    from msnl.step_one import software_versions
    from pipelines.ingest import run_ingest
    from pipelines.run import run_cohort
    from storage.bids import BidsVisit, write_bids
    from storage.pairs import result_key
    from storage.results import prediction_result_key
    from storage.scans import stored_scan_attrs

    rng = np.random.default_rng(1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_bids(tmp_path / "bids", [BidsVisit("a", v, Scan(rng.uniform(100, 200, (24, 24, 16)).astype(np.float32), affine),
                                             f"202{i}-01-01", "placebo", "site-1") for i, v in enumerate(("01", "02"))])
    store = tmp_path / "store.zarr"
    run_ingest(tmp_path / "bids", store, progress=False)
    step_one = result_key(*(stored_scan_attrs(store, "a", v)["sha256"] for v in ("01", "02")), StepOneConfig(), software_versions())
    zarr.open_group(store / pair_key("a", "01", "02"), mode="w", zarr_format=3).attrs.update({"status": "ok", "result_key": step_one})
    shipped = prediction_result_key(step_one, weights_digest())
    write_prediction(store, "a", "01", "02", shipped, None, None, {"status": "ok", "weights_digest": weights_digest(),
                                                                  "new_lesion_count": 2, "new_lesion_volume_mm3": 30.0})
    RunReport(store, [("a", "01", "02")]).failed("a", "01->02", "cnn_failed", "CUDA out of memory", stored_result=shipped)
    assert open_results(store).status.sel(subject="a", interval="01->02").item() == "cnn_failed"

    summary = run_cohort(tmp_path / "bids", store, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (0, 1, [])
    results = open_results(store)
    assert results.status.sel(subject="a", interval="01->02").item() == "ok"
    assert results.new_lesion_count.sel(subject="a", interval="01->02").item() == 2
