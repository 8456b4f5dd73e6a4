"""`msnl train` survives a crash: a training stopped part-way goes on from its last whole epoch
to the weights an unbroken run gives, and never overwrites another training's checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import msnl.training
from msnl.cnn import members_of
from msnl.config import CNNConfig, StepOneConfig
from msnl.errors import InputError
from msnl.inference import load_weights
from pipelines.train import checkpoint_path, train_and_save
from tests.test_cnn import _toy_set

# two members of three epochs, eight batches an epoch
CFG = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=3, batch_size=8, lr_step_epochs=2, patches_per_epoch=64,
                ensemble_size=2)


class PowerCut(Exception):
    pass


def _stop_after(monkeypatch, batches: int) -> None:
    """Make training fail on batch number `batches` + 1, counted across epochs and members."""
    loss = msnl.training.training_loss
    seen = []

    def failing(*args):
        seen.append(1)
        if len(seen) > batches:
            raise PowerCut
        return loss(*args)

    monkeypatch.setattr(msnl.training, "training_loss", failing)


def _states(path):
    return [m.state_dict() for m in members_of(load_weights(path)[0])]


@pytest.mark.parametrize("cfg", [CFG, replace(CFG, hard_fp_share=0.5)], ids=["paper", "hard-fp"])
def test_a_stopped_training_goes_on_to_the_weights_of_an_unbroken_run(tmp_path, monkeypatch, capsys, cfg):
    unbroken = train_and_save(_toy_set(), tmp_path / "unbroken.pt", cfg, seed=0, progress=False)
    assert not checkpoint_path(tmp_path / "unbroken.pt").exists()  # deleted once the weights are written

    out = tmp_path / "w.pt"
    with monkeypatch.context() as patch:
        _stop_after(patch, 8 * 4 + 3)  # member 0 done, member 1 part-way through its second epoch
        with pytest.raises(PowerCut):
            train_and_save(_toy_set(), out, cfg, seed=0, progress=False)
    assert not out.exists() and checkpoint_path(out).exists()

    resumed = train_and_save(_toy_set(), out, cfg, seed=0)
    assert "(4 of 6 epochs done)" in capsys.readouterr().out
    assert resumed == unbroken  # the loss of every epoch, to the last bit
    for mine, theirs in zip(_states(out), _states(tmp_path / "unbroken.pt"), strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not checkpoint_path(out).exists()


def test_a_stop_between_members_goes_on_with_the_next_member(tmp_path, monkeypatch):
    unbroken = train_and_save(_toy_set(), tmp_path / "unbroken.pt", CFG, seed=0, progress=False)
    with monkeypatch.context() as patch:
        _stop_after(patch, 8 * 3)  # member 0's last epoch saved, member 1 not begun
        with pytest.raises(PowerCut):
            train_and_save(_toy_set(), tmp_path / "w.pt", CFG, seed=0, progress=False)
    assert train_and_save(_toy_set(), tmp_path / "w.pt", CFG, seed=0, progress=False) == unbroken


def test_another_trainings_checkpoint_is_refused_and_kept(tmp_path, monkeypatch):
    out = tmp_path / "w.pt"
    with monkeypatch.context() as patch:
        _stop_after(patch, 8)
        with pytest.raises(PowerCut):
            train_and_save(_toy_set(), out, CFG, seed=0, progress=False)
    saved = checkpoint_path(out).read_bytes()
    init = tmp_path / "init.pt"
    train_and_save(_toy_set(), init, replace(CFG, epochs=1, ensemble_size=1), seed=0, progress=False)
    for data, cfg, seed, start, differ in [(_toy_set(), CFG, 1, None, "seed"), (_toy_set(n=40), CFG, 0, None, "data"),
                                           (_toy_set(), replace(CFG, epochs=4), 0, None, "config"),
                                           (_toy_set(), CFG, 0, init, "init")]:
        with pytest.raises(InputError, match=f"another training \\(its {differ} differs from") as error:
            train_and_save(data, out, cfg, seed=seed, init=start, progress=False)
        assert str(checkpoint_path(out)) in str(error.value) and "delete the checkpoint" in str(error.value)
    assert checkpoint_path(out).read_bytes() == saved and not out.exists()


def test_an_unreadable_checkpoint_names_the_file_and_the_fix(tmp_path):
    out = tmp_path / "w.pt"
    checkpoint_path(out).write_bytes(b"half a file")
    with pytest.raises(InputError, match="not a training checkpoint that loads safely. Delete it") as error:
        train_and_save(_toy_set(), out, CFG, seed=0, progress=False)
    assert str(checkpoint_path(out)) in str(error.value)


def _stopped_with_key_config(tmp_path, monkeypatch, edit) -> tuple:
    """A training stopped after its first epoch whose checkpoint's config is then `edit`ed, as a
    checkpoint written by another msnl version would hold it; its path and the file's bytes."""
    out = tmp_path / "w.pt"
    with monkeypatch.context() as patch:
        _stop_after(patch, 8)
        with pytest.raises(PowerCut):
            train_and_save(_toy_set(), out, CFG, seed=0, progress=False)
    saved = torch.load(checkpoint_path(out), weights_only=True)
    edit(saved["key"]["config"])
    torch.save(saved, checkpoint_path(out))
    return out, checkpoint_path(out).read_bytes()


def test_a_checkpoint_from_before_a_config_field_existed_goes_on(tmp_path, monkeypatch, capsys):
    unbroken = train_and_save(_toy_set(), tmp_path / "unbroken.pt", CFG, seed=0, progress=False)
    out, _ = _stopped_with_key_config(tmp_path, monkeypatch, lambda config: config.pop("context_voxels"))
    assert train_and_save(_toy_set(), out, CFG, seed=0) == unbroken
    assert "(1 of 6 epochs done)" in capsys.readouterr().out


@pytest.mark.parametrize("cfg, edit", [
    (replace(CFG, context_voxels=1), lambda config: config.pop("context_voxels")),  # the old default is not this run's
    (CFG, lambda config: config.update(newer_field=3)),  # written by a newer msnl
])
def test_a_checkpoint_whose_config_reads_otherwise_is_refused_and_kept(tmp_path, monkeypatch, cfg, edit):
    out, saved = _stopped_with_key_config(tmp_path, monkeypatch, edit)
    with pytest.raises(InputError, match="another training \\(its config differs from"):
        train_and_save(_toy_set(), out, cfg, seed=0, progress=False)
    assert checkpoint_path(out).read_bytes() == saved and not out.exists()


def test_a_step_one_setting_added_at_its_default_leaves_the_data_digest_as_it_was():
    def digest(settings):
        data = _toy_set()
        data.step_one = settings
        return data.digest()

    now = StepOneConfig().candidate_settings()
    older = {k: v for k, v in now.items() if k != "match_resolution_ratio"}  # before msnl had it
    assert digest(older) == digest(now) == digest(None)
    assert digest(StepOneConfig(match_resolution_ratio=1.5).candidate_settings()) != digest(now)
    assert digest({**older, "opening_radius_mm": 0.0}) != digest(older)
    assert digest({**now, "newer_setting": 1}) != digest(now)  # a setting this msnl does not know
