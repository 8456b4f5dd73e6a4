"""The store's layout: publishing is atomic and safe when two tasks publish the same key at once,
and a store written by a newer msnl is refused."""

from __future__ import annotations

import threading

import pytest
import zarr

from msnl.errors import StoreError
from storage.cohort import open_cohort
from storage.layout import STORE_VERSION, clear_staging, group_attrs, new_staging_dir, open_root, publish, write_group_json
from storage.results import open_results


def _stage(store, value: int):
    staged = new_staging_dir(store)
    group = zarr.open_group(staged, mode="w", zarr_format=3)
    group.attrs["value"] = value
    group.create_array("a", shape=(4,), dtype="i4", fill_value=value)
    return staged


def test_concurrent_publishers_of_one_key_all_succeed_and_one_whole_copy_stays(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    writers, rounds = 6, 15
    barrier, errors = threading.Barrier(writers), []

    def writer(w: int) -> None:
        for r in range(rounds):
            staged = _stage(store, w * 100 + r)
            barrier.wait()
            try:
                publish(store, staged, "pairs/s/01/02")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    group = zarr.open_group(store / "pairs/s/01/02", mode="r")
    assert (group["a"][...] == group.attrs["value"]).all()  # one writer's whole copy, never a mix
    clear_staging(store, older_than_s=0)
    assert not (store / ".staging").exists()


def test_writers_stage_and_publish_while_another_command_removes_the_empty_staging_folder(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    done, errors = threading.Event(), []

    def finishing_commands() -> None:
        while not done.is_set():
            clear_staging(store)

    def writer(w: int) -> None:
        try:
            for r in range(40):
                publish(store, _stage(store, w * 100 + r), f"pairs/s{w}/01/02")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    remover = threading.Thread(target=finishing_commands)
    remover.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    remover.join()
    assert errors == []
    assert [zarr.open_group(store / f"pairs/s{w}/01/02", mode="r").attrs["value"] for w in range(4)] == [39, 139, 239, 339]


def test_an_incomplete_staged_group_is_never_published(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    staged = _stage(store, 1)
    (staged / "zarr.json").unlink()  # as when staging was cleared under a running task
    with pytest.raises(StoreError, match="incomplete"):
        publish(store, staged, "pairs/s/01/02")
    assert not (store / "pairs/s/01/02").exists()


def test_only_stale_staging_is_cleared(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    fresh = _stage(store, 1)
    clear_staging(store)
    assert fresh.exists()  # may belong to a task still running
    clear_staging(store, older_than_s=-1)
    assert not fresh.exists() and not (store / ".staging").exists()


def test_a_group_written_directly_is_a_zarr_group_with_its_attributes(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True)
    attrs = {"started": "20261207T000000Z", "intervals": [["001", "01->02"]], "failures": [], "finished": None}
    staged = new_staging_dir(store)
    write_group_json(staged, attrs)
    publish(store, staged, "reports/run-1")
    assert dict(zarr.open_group(store / "reports/run-1", mode="r", zarr_format=3).attrs) == attrs
    assert "run-1" in list(zarr.open_group(store / "reports", mode="r", zarr_format=3).group_keys())
    assert group_attrs(store / "reports/run-1") == attrs


def test_a_store_from_a_newer_msnl_is_refused_before_anything_reads_or_writes_it(tmp_path):
    store = tmp_path / "store.zarr"
    open_root(store, create=True).attrs["msnl_store_version"] = STORE_VERSION + 1
    for read in (open_root, lambda path: open_root(path, create=True), open_results, open_cohort):
        with pytest.raises(StoreError, match=f"newer msnl.*store version {STORE_VERSION + 1}"):
            read(store)
