"""`msnl train`: step one on every training pair (in parallel), then the CNN.

Training sources are simulated BIDS cohorts (truth under derivatives/msnl-simulate) or real
pairs in the Lesjak form. Each is ingested into a work store and step one runs once per pair;
a re-run reuses what is there.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import dask

from msnl.config import StepOneConfig
from msnl.errors import InputError
from pipelines.ingest import run_ingest
from pipelines.progress import dask_progress, progress_bar
from pipelines.threads import capped_threads, process_options, usable_cpus
from storage.pairs import process_pair
from storage.training_data import TrainingPair, training_pairs, work_store

log = logging.getLogger(__name__)


def with_options(base, options: list[str], flag: str = "--option", example: str = "size_bucket_window=8"):
    """A copy of the config `base` with `KEY=VALUE` overrides (VALUE in JSON: 8, null, [16, 32];
    a text field also takes its value bare, as in tp_patches=own_component). `flag` and
    `example` are for the messages."""
    import json

    from msnl.config import ConfigError

    values = base.to_dict()
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {option!r}: write it as KEY=VALUE, e.g. {flag} {example}")
        key = key.strip()
        if key not in values:
            raise ConfigError(f"{flag} {option!r}: {type(base).__name__} has no field {key!r} (see msnl/config.py)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if not isinstance(values.get(key), str):
                raise ConfigError(f"{flag} {option!r}: the value must be JSON (a number, true or false, null, "
                                  "or a list like [16, 32])") from None
            value = raw.strip()
        values[key] = value
    try:
        return type(base).from_dict(values)
    except (TypeError, ValueError) as exc:  # a value of the wrong kind, e.g. a number for a list
        raise ConfigError(f"{' '.join(f'{flag} {o}' for o in options)}: a value of the wrong kind ({exc}); see msnl/config.py "
                          f"for each field's type, e.g. {flag} {example}") from None


def cnn_config(options: list[str], epochs: int | None = None, base=None):
    """`base` (default: the default CNNConfig) with `--option KEY=VALUE` overrides and the epochs."""
    from msnl.config import CNNConfig

    cfg = with_options(base or CNNConfig(), options)
    return cfg if epochs is None else replace(cfg, epochs=epochs)


def step_one_config(options: list[str]) -> StepOneConfig:
    """The paper's StepOneConfig with `--step-one KEY=VALUE` overrides."""
    return with_options(StepOneConfig(), options, "--step-one", "opening_radius_mm=1.0")


def inference_options(options: list[str]) -> dict:
    """`KEY=VALUE` options parsed as `cnn_config` parses them, only the keys named: the fields a
    weights file's config is to change with CNNConfig.with_inference."""
    parsed = cnn_config(options)
    return {key: getattr(parsed, key) for key in (o.partition("=")[0].strip() for o in options)}


def _step_one(pair: TrainingPair, cfg: StepOneConfig) -> tuple[TrainingPair, str, str]:
    outcome = process_pair(pair.store, pair.subject, pair.from_visit, pair.to_visit, cfg)
    return pair, outcome.status, outcome.message


def prepare_pairs(sources: list[Path], work: Path, cfg: StepOneConfig | None = None,
                  workers: int | None = None, progress: bool = True, exclude: Collection[str] = ()) -> list[TrainingPair]:
    """Ingest every source into its work store and run step one on each pair whose subject is not
    in `exclude`; returns the usable pairs."""
    cfg = cfg or StepOneConfig()
    pairs: list[TrainingPair] = []
    for source in sources:
        source = Path(source)
        store = work_store(work, source)
        summary = run_ingest(source, store, progress=False)
        if summary.failed:
            log.warning("%s: %d scans failed to ingest; their pairs are left out", source, summary.failed)
        pairs += [p for p in training_pairs(source, store) if p.subject not in exclude]
    options = process_options(len(pairs), workers)
    workers = options.get("num_workers", 1)
    tasks = [dask.delayed(_step_one, pure=False)(p, cfg) for p in pairs]
    with capped_threads(max(1, usable_cpus() // workers)):
        if progress:
            print(f"train: step one on {len(pairs)} pairs ({workers} workers)")
            with dask_progress("train: step one", minimum=1.0):
                results = dask.compute(*tasks, **options)
        else:
            results = dask.compute(*tasks, **options)
    usable = []
    for pair, status, message in results:
        if status in ("ok", "skipped"):
            usable.append(pair)
        else:
            log.warning("%s left out of training: %s %s", pair.name, status, message)
    return usable


def collect(pairs: list[TrainingPair], *, flair_input: str, context_voxels: int = 0, progress: bool = True):
    """All patches of `pairs` as a TrainingSet (read from the work stores), with the FLAIR
    channels and the context that CNNConfig.flair_input and context_voxels name."""
    from msnl.training import TrainingSet
    from storage.training_data import pair_patches, step_one_candidates

    data = TrainingSet(step_one=step_one_candidates(pairs))
    for pair in pairs:
        items, _ = pair_patches(pair, flair_input=flair_input, context_voxels=context_voxels)
        for patch, truth, infra, own_hit in items:
            data.add(patch, truth, infra, pair.name, own_hit)
    if progress:
        tp = int(data.is_tp.sum())
        own = int(data.tp_flags("own_component").sum())
        print(f"train: {len(data)} patches from {len(pairs)} pairs: {tp} TP ({own} with truth in their own "
              f"candidate), {len(data) - tp} FP, {int(sum(data.infratentorial))} infratentorial")
    return data


def check_trainable(data, sources: list[Path]) -> None:
    """Refuse, with what to do, training data without TP or without FP patches: the paper's
    batches draw both in equal numbers."""
    tp = int(data.is_tp.sum())
    fp = len(data) - tp
    if tp and fp:
        return
    names = ", ".join(str(s) for s in sources)
    if not len(data):
        raise InputError(f"step one left no usable pair with truth in {names}: nothing to train on. Check the "
                         "warnings above for pairs left out, and that each source holds labelled pairs.")
    missing = "TP patches (no step-one candidate holds a truth voxel)" if not tp else "FP patches"
    raise InputError(f"the {len(set(data.sources))} training pair(s) of {names} give {tp} TP and {fp} FP patches: "
                     f"training needs both, and there are no {missing}. Add labelled pairs with new lesions "
                     "(a simulated cohort from `msnl simulate` has them), and check that each truth mask is "
                     "that pair's new lesions at its later visit.")


def checkpoint_path(out: Path) -> Path:
    """Where `train_and_save` keeps its training's state while it runs: beside the weights."""
    return out.with_name(out.name + ".checkpoint")


def train_and_save(data, out: Path, cfg, seed: int, init: Path | None = None, progress: bool = True) -> list[list[float]]:
    """Train `cfg.ensemble_size` members, then write the weights (with seed, data and loss
    histories in their metadata) and a loss curve; returns one loss history per member.

    After every epoch the training's state is saved beside `out` (`checkpoint_path`). A
    training stopped part-way (a crash, a kill, a lost node) and run again with the same data,
    options, seed and --out goes on from its last whole epoch, to the weights an unbroken run
    would give; the checkpoint is deleted once the weights are written."""
    import torch
    from msnl.cnn import members_of
    from msnl.inference import check_candidates, load_weights, weights_digest
    from msnl.training import device_for, epochs_done, read_checkpoint, save_weights, train_members, write_checkpoint

    init_states = None
    if init is not None:
        model, _, meta = load_weights(init)
        if data.step_one is not None:
            check_candidates(meta, data.step_one, init, use="the training pairs' step one made them with")
        init_states = [m.state_dict() for m in members_of(model)]
    checkpoint = checkpoint_path(out)
    key = {"config": cfg.to_dict(), "seed": seed, "data": data.digest(),
           "init": None if init is None else weights_digest(init)}
    resume = read_checkpoint(checkpoint, key)
    done = 0 if resume is None else epochs_done(resume, cfg)
    if resume is not None and progress:
        print(f"train: going on from {checkpoint} ({done} of {cfg.epochs * cfg.ensemble_size} epochs done)")
    bar = progress_bar(cfg.epochs * cfg.ensemble_size, "train", "epoch", initial=done, enabled=progress)

    def on_batch(epoch: int, i: int, n: int, loss: float) -> None:
        bar.set_postfix(batch=f"{i + 1}/{n}", epoch_loss=f"{loss:.4f}")  # the mean so far: one batch's is noisy
        if i + 1 == n:
            bar.update(1)

    device = device_for()
    torch.set_num_threads(min(torch.get_num_threads(), usable_cpus()))  # a job's CPUs, not the node's
    members, histories = train_members(data, cfg, seed, init_states, on_batch, device, resume,
                                       lambda state: write_checkpoint(checkpoint, key, state))
    bar.close()
    save_weights(out, members, cfg, seed, histories, device, data, init)
    loss_curve(histories, seed, out.with_suffix(".loss.png"))
    checkpoint.unlink(missing_ok=True)
    return histories


def loss_curve(histories: list[list[float]], seed: int, path: Path) -> None:
    """The training loss per epoch, one line per member (member i has seed + i)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, history in enumerate(histories):
        ax.plot(range(1, len(history) + 1), history, marker="o", label=f"seed {seed + i}")
    if len(histories) > 1:
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE + soft Dice (training)")
    ax.set_yscale("log")
    ax.set_title("msnl patch CNN training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
