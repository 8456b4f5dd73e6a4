"""Training the patch CNN (paper §2.3) on patches built into batches with torchio.

Seeded: the same data, config and seed give the same weights on the same machine (CPU).
Progress is reported through a callback, so the command line can draw its own bar. After every
epoch a second callback gets the training's whole state (weights, optimiser, schedule, random
generators), so a training stopped part-way can go on from its last epoch to the same weights.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchio as tio
from scipy import ndimage
from torch.utils.data import DataLoader

from msnl.cnn import PatchCNN, members_of
from msnl.config import CNNConfig, ConfigError, StepOneConfig
from msnl.errors import InputError
from msnl.inference import load_weights, trained_candidates, weights_digest
from msnl.patches import centre_crop, pad_batch, scale
from msnl.sampling import batches, epoch_indices, size_bucketed_batches

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Patches (C, X, Y, Z; grey levels and distance maps in mm), their truth, and their flags."""

    patches: list[np.ndarray] = field(default_factory=list)
    truths: list[np.ndarray] = field(default_factory=list)
    infratentorial: list[bool] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    own_hits: list[bool] = field(default_factory=list)
    # step one's candidate settings (StepOneConfig.candidate_settings) for every patch; None where
    # the patches did not come from step one
    step_one: dict[str, Any] | None = None

    def add(self, patch: np.ndarray, truth: np.ndarray, infratentorial: bool, source: str,
            own_hit: bool | None = None) -> None:
        """`own_hit`: whether the patch's own candidate overlaps the truth; when not known,
        whether the patch holds any truth voxel."""
        self.patches.append(patch)
        self.truths.append(truth.astype(bool))
        self.infratentorial.append(bool(infratentorial))
        self.sources.append(source)
        self.own_hits.append(bool(truth.any()) if own_hit is None else bool(own_hit))

    @property
    def is_tp(self) -> np.ndarray:
        """A patch is TP when it holds truth voxels, FP otherwise (issue 5)."""
        return np.array([t.any() for t in self.truths], dtype=bool)

    def tp_flags(self, rule: str) -> np.ndarray:
        """The TP flags that balance the batches, under CNNConfig.tp_patches's `rule`."""
        return self.is_tp if rule == "any_truth" else np.array(self.own_hits, dtype=bool) & self.is_tp

    def __len__(self) -> int:
        return len(self.patches)

    def digest(self) -> str:
        """A hash of every patch, truth and flag and of the step-one settings that are not
        StepOneConfig's defaults: two sets with the same digest train the same network. A
        setting that a later msnl adds, at its default, leaves the digest as it was, so a
        training stopped before an upgrade still resumes after it."""
        h = hashlib.blake2b(digest_size=16)
        for patch, truth, infra, source, own in zip(self.patches, self.truths, self.infratentorial, self.sources,
                                                    self.own_hits):
            h.update(repr((patch.shape, str(patch.dtype), infra, source, own)).encode())
            h.update(np.ascontiguousarray(patch))
            h.update(np.packbits(truth))
        defaults = StepOneConfig().candidate_settings()
        changed = {k: v for k, v in (self.step_one or {}).items() if k not in defaults or defaults[k] != v}
        h.update(repr(sorted(changed.items())).encode())
        return h.hexdigest()


def source_of(pair_name: str) -> str:
    """The training source (folder) of a patch, from its pair's name, "SOURCE:SUBJECT:VISITS"
    (storage.training_data.TrainingPair.name)."""
    return pair_name.partition(":")[0]


def _subjects(data: TrainingSet, cfg: CNNConfig) -> list[tio.Subject]:
    subjects = []
    for patch, truth in zip(data.patches, data.truths):
        patch = scale(patch, cfg)
        if cfg.train_crop == "centre":
            patch, truth = centre_crop(patch, truth, cfg.train_max_patch)
        subjects.append(tio.Subject(
            flairs=tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(patch[:2]))),
            maps=tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(patch[2:]))),
            truth=tio.LabelMap(tensor=torch.from_numpy(np.ascontiguousarray(truth[None].astype(np.uint8)))),
        ))
    return subjects


class RandomCrop(tio.Transform):
    """Crop a subject larger than `max_shape` to it at a random place (CNNConfig.train_crop
    "random"): round a truth voxel drawn at random when it holds truth, anywhere otherwise.
    Draws from torch's generator, which training seeds and checkpoints."""

    def __init__(self, max_shape: tuple[int, int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_shape = np.asarray(max_shape)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        shape = np.asarray(subject.spatial_shape)
        keep = np.minimum(shape, self.max_shape)
        if (keep == shape).all():
            return subject
        hits = torch.nonzero(subject["truth"].data[0])
        if len(hits):
            centre = hits[int(torch.randint(len(hits), ()))].numpy()
            start = np.clip(centre - keep // 2, 0, shape - keep)
        else:
            start = np.array([int(torch.randint(int(n - k) + 1, ())) for n, k in zip(shape, keep)])
        after = shape - keep - start
        return tio.Crop([int(v) for pair in zip(start, after) for v in pair])(subject)


class Visit1Transform(tio.Transform):
    """With probability `p`, replace visit 1's FLAIR (channel 0 of "flairs") by `changed(it)`;
    visit 2, the distance maps and the truth are left alone, and the stored patch is not
    changed in place. Draws from torch's generator, which training seeds and checkpoints."""

    def __init__(self, p: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chance = p

    def changed(self, volume: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if float(torch.rand(())) >= self.chance:
            return subject
        data = subject["flairs"].data.clone()
        data[0] = self.changed(data[0])
        subject["flairs"].set_data(data)
        return subject


class RandomThickSlices(Visit1Transform):
    """Visit 1's running mean along voxel axis 0 or 1 over `low`..`high` voxels, edges
    repeated: the partial volume of a slice that many voxels thick
    (CNNConfig.augment_thick_slices)."""

    def __init__(self, p: float, widths: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(p, **kwargs)
        self.widths = widths

    def changed(self, volume: torch.Tensor) -> torch.Tensor:
        axis = int(torch.randint(2, ()))
        width = int(torch.randint(self.widths[0], self.widths[1] + 1, ()))
        return thick_slice(volume, axis, width)


def thick_slice(volume: torch.Tensor, axis: int, width: int) -> torch.Tensor:
    """Running mean of `volume` along `axis` over `width` voxels (the window ends
    `width // 2` voxels after each voxel), edge voxels repeated so the shape is kept."""
    mean = ndimage.uniform_filter1d(volume.numpy(), width, axis=axis, mode="nearest", origin=-(1 - width % 2))
    return torch.from_numpy(mean)


class RandomShift(Visit1Transform):
    """Visit 1 moved by a sub-voxel translation drawn uniformly within +-`limits` voxels on
    each axis, linear interpolation, edges repeated: the residual misregistration a
    rigid-then-affine registration leaves (CNNConfig.augment_visit1_shift)."""

    def __init__(self, p: float, limits: tuple[float, float, float], **kwargs: Any) -> None:
        super().__init__(p, **kwargs)
        self.limits = torch.tensor(limits, dtype=torch.float64)

    def changed(self, volume: torch.Tensor) -> torch.Tensor:
        offset = (2 * torch.rand(3, dtype=torch.float64) - 1) * self.limits
        return shifted(volume, tuple(float(v) for v in offset))


def shifted(volume: torch.Tensor, offset: tuple[float, float, float]) -> torch.Tensor:
    """`volume` translated by `offset` voxels (a voxel's value moves to index + offset),
    linear interpolation, edge voxels repeated so the shape is kept."""
    moved = ndimage.shift(volume.numpy(), offset, order=1, mode="nearest")
    return torch.from_numpy(moved)


def augmentation(cfg: CNNConfig) -> tio.Transform:
    """Paper §2.1: torchio's random noise and random bias field, each with probability 0.3,
    on the two FLAIR channels only (distance maps are geometry, not signal). With
    `augment_flip_axes` (ours), random flips of every channel and the truth come first; with
    `train_crop="random"` (ours), the random crop of a large patch before them; with
    `augment_thick_slices` (ours), visit 1's thick-slice blur after the flips; with
    `augment_visit1_shift` (ours), visit 1's sub-voxel shift after that; both before the
    noise and bias field an acquisition adds on top."""
    p = cfg.augment_probability
    signal = [tio.RandomNoise(p=p, include=["flairs"]), tio.RandomBiasField(p=p, include=["flairs"])]
    flips = [tio.RandomFlip(axes=cfg.augment_flip_axes, flip_probability=0.5)] if cfg.augment_flip_axes else []
    crop = [RandomCrop(cfg.train_max_patch)] if cfg.train_crop == "random" else []
    thick = [RandomThickSlices(cfg.augment_thick_slices, cfg.thick_slice_voxels)] if cfg.augment_thick_slices else []
    shift = [RandomShift(cfg.augment_visit1_shift, cfg.visit1_shift_voxels)] if cfg.augment_visit1_shift else []
    return tio.Compose(crop + flips + thick + shift + signal)


def _collate(subjects: list[tio.Subject]):
    patches = [torch.cat([s["flairs"].data, s["maps"].data]).float() for s in subjects]
    truths = [s["truth"].data[0].float() for s in subjects]
    return pad_batch(patches, truths)


def masked_bce(logits: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over real (unpadded) voxels only."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def masked_soft_dice(logits: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over all real voxels of the batch (pooled, so FP-only patches count too)."""
    prob = torch.sigmoid(logits) * mask
    overlap = (prob * truth).sum()
    return 1 - (2 * overlap + 1) / (prob.sum() + (truth * mask).sum() + 1)


def training_loss(logits: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked BCE plus batch soft Dice.

    BCE alone lets lesion voxels (a few % of a batch's voxels) drown: the net learns to say
    "no" everywhere and nothing passes the 0.75 threshold. The Dice term is pooled over the
    whole batch, which always holds TP patches under the paper's sampling, so it is defined
    for FP-only patches too and rewards confident lesion voxels; BCE keeps FP voxels low.
    """
    return masked_bce(logits, truth, mask) + masked_soft_dice(logits, truth, mask)


def highest_probability(logits: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Each patch's highest voxel probability over its real (unpadded) voxels."""
    prob = torch.sigmoid(logits.detach()) * mask
    return prob.flatten(1).amax(1).cpu().numpy()


def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


ProgressCallback = Callable[[int, int, int, float], None]  # epoch, batch, batches, the epoch's mean loss so far
EpochCallback = Callable[[dict], None]  # the training's state after an epoch


def _rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, rng: np.random.Generator, device: torch.device) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _on_cpu(state_dict: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


def train(data: TrainingSet, cfg: CNNConfig, seed: int, init: dict | None = None,
          on_batch: ProgressCallback | None = None, device: torch.device | None = None,
          resume: dict | None = None, on_epoch: EpochCallback | None = None) -> tuple[PatchCNN, list[float]]:
    """Train (or fine-tune from `init`, a state dict) for `cfg.epochs`; returns the model and
    the mean training loss per epoch.

    `on_epoch` gets the training's state after every epoch. Given back as `resume` (with the
    same data, config and seed), training goes on after that epoch and ends with the weights
    an unbroken run gives on the same device."""
    device = device or device_for()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PatchCNN(cfg).to(device)
    if init is not None:
        model.load_state_dict(init)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 decoupled_weight_decay=True)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=cfg.lr_step_epochs, gamma=cfg.lr_decay)
    history: list[float] = []
    fp_scores = np.ones(len(data))  # for hard_fp_share: the net's last highest probability per patch
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        schedule.load_state_dict(resume["schedule"])
        history = list(resume["history"])
        if "fp_scores" in resume:  # absent from checkpoints written before hard_fp_share
            fp_scores = resume["fp_scores"].numpy().copy()
        _restore_rng(resume["rng"], rng, device)
    dataset = tio.SubjectsDataset(_subjects(data, cfg), transform=augmentation(cfg))
    is_tp, infra = data.tp_flags(cfg.tp_patches), np.asarray(data.infratentorial)
    sources = np.array([source_of(name) for name in data.sources])
    volumes = np.array([np.prod(np.minimum(p.shape[1:], cfg.train_max_patch)) for p in data.patches])
    for epoch in range(len(history), cfg.epochs):
        model.train()
        drawn = epoch_indices(is_tp, infra, cfg, rng, sources, fp_scores)
        if cfg.size_bucket_window is None:
            plan = batches(drawn, cfg.batch_size)
        else:
            plan = size_bucketed_batches(drawn, volumes, cfg.batch_size, cfg.size_bucket_window, rng)
        loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in plan], collate_fn=_collate)
        losses = []
        for i, (batch, (x, y, mask)) in enumerate(zip(plan, loader, strict=True)):
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            optimiser.zero_grad()
            logits = model(x, mask)
            loss = training_loss(logits, y, mask)
            if cfg.hard_fp_share:
                fp_scores[batch] = highest_probability(logits, mask)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if on_batch:
                on_batch(epoch, i, len(plan), float(np.mean(losses)))
        schedule.step()
        history.append(float(np.mean(losses)))
        log.info("epoch %d: loss %.4f", epoch + 1, history[-1])
        if on_epoch:
            on_epoch({"model": _on_cpu(model.state_dict()), "optimiser": copy.deepcopy(optimiser.state_dict()),
                      "schedule": schedule.state_dict(), "history": list(history), "rng": _rng_state(rng, device),
                      "fp_scores": torch.from_numpy(fp_scores.copy())})
    return model, history


def train_members(data: TrainingSet, cfg: CNNConfig, seed: int, init: list[dict] | None = None,
                  on_batch: ProgressCallback | None = None, device: torch.device | None = None,
                  resume: dict | None = None, on_epoch: EpochCallback | None = None
                  ) -> tuple[list[PatchCNN], list[list[float]]]:
    """`cfg.ensemble_size` models, member i trained by `train` with seed `seed + i` (and, when
    fine-tuning, from `init[i % len(init)]`); `on_batch` counts epochs across members.

    `on_epoch` and `resume` work as `train`'s for the whole ensemble: the state holds the
    finished members (weights and loss history) and the current member's state."""
    device = device or device_for()
    finished: list[dict] = [] if resume is None else list(resume["finished"])
    models, histories = [], []
    for i in range(cfg.ensemble_size):
        if i < len(finished):
            model = PatchCNN(cfg).to(device)
            model.load_state_dict(finished[i]["model"])
            models.append(model)
            histories.append(list(finished[i]["history"]))
            continue
        offset = i * cfg.epochs
        step = None if on_batch is None else (lambda e, b, n, loss, offset=offset: on_batch(offset + e, b, n, loss))
        current = resume["current"] if resume is not None and i == len(resume["finished"]) else None
        epoch_done = None if on_epoch is None else (lambda state: on_epoch({"finished": list(finished), "current": state}))
        model, history = train(data, cfg, seed + i, None if init is None else init[i % len(init)], step, device,
                               current, epoch_done)
        finished.append({"model": _on_cpu(model.state_dict()), "history": history})
        models.append(model)
        histories.append(history)
    return models, histories


def epochs_done(state: dict, cfg: CNNConfig) -> int:
    """How many epochs, across members, a `train_members` state holds."""
    return len(state["finished"]) * cfg.epochs + len(state["current"]["history"])


def write_checkpoint(path: Path, key: dict[str, Any], state: dict) -> None:
    """Save a training's state with `key` (what it trains on and how), whole or not at all."""
    _save_whole(path, {"key": key, "state": state})


def read_checkpoint(path: Path, key: dict[str, Any]) -> dict | None:
    """The state saved at `path` by a training with the same `key`, or None when there is none.
    A checkpoint of another training is refused, never overwritten: it may hold hours of work."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message is long, and suggests loading untrusted pickles
        raise InputError("is not a training checkpoint that loads safely. Delete it to train from the start.", path) from None
    theirs = saved.get("key", {}) if isinstance(saved, dict) else {}
    differ = sorted(k for k in key if not _same_key_part(k, theirs.get(k), key[k]))
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise InputError(f"is the checkpoint of another training (its {' and '.join(differ)} {verb} from this one's). "
                         "Re-run that training's command to finish it, give this one another --out, or delete the "
                         "checkpoint to start this one from the beginning.", path)
    return saved["state"]


def _same_key_part(name: str, theirs: Any, ours: Any) -> bool:
    """Whether one part of a checkpoint's key matches this training's. A config saved before
    msnl added a field has no value for it; read as weights files are, it holds that field's
    default, which keeps the older behaviour, so such a checkpoint still resumes."""
    if name != "config" or not isinstance(theirs, dict):
        return theirs == ours
    try:
        return CNNConfig.from_dict(theirs).to_dict() == ours
    except (ConfigError, TypeError):  # a field this msnl does not know, or a value it refuses
        return False


def save_weights(out: Path, members: list[PatchCNN], cfg: CNNConfig, seed: int, histories: list[list[float]],
                 device: torch.device, data: TrainingSet, init: Path | None = None) -> None:
    """Write a weights file that `msnl.inference.load_weights` reads: one state dict per member,
    with the config, seed (member i used seed + i), loss histories, device and data in its
    metadata. It is renamed into place once whole, so a crash never leaves half a file."""
    _write_weights(out, {
        "state_dicts": [_on_cpu(m.state_dict()) for m in members],
        "config": cfg.to_dict(), "seed": seed, "histories": histories, "device": str(device),
        "data": sorted(set(data.sources)), "patches": len(data), "tp_patches": int(data.is_tp.sum()),
        "init": None if init is None else str(init), "step_one": data.step_one,
    })


def _write_weights(out: Path, saved: dict) -> None:
    from msnl import __version__

    _save_whole(out, {**saved, "msnl_version": __version__,
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def _save_whole(out: Path, saved: dict) -> None:
    """torch.save to a hidden file, renamed into place once whole, so a crash never leaves half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    torch.save(saved, partial)
    partial.replace(out)


# Metadata that every file of one ensemble must share: they trained on the same patches.
_SHARED = ("data", "patches", "tp_patches", "init")


def combine_weights(paths: list[Path], out: Path, inference: dict[str, Any] | None = None) -> CNNConfig:
    """One ensemble file from weights files trained apart (e.g. one member per machine) with the
    same config, data and consecutive seeds: the same file `ensemble_size=N` with the lowest
    seed trains in one run. Files are ordered by seed; returns the combined config.

    `inference` sets fields that only inference reads (`INFERENCE_FIELDS`, e.g. the threshold or
    test-time flips) in the written file; one file alone is then rewritten with them."""
    CNNConfig().with_inference(**inference or {})  # refuse a training field before loading anything
    loaded = [(Path(p), *load_weights(p)) for p in paths]
    for path, _, _, meta in loaded:
        if not isinstance(meta.get("seed"), int):
            raise InputError("has no seed in its metadata, so its place in the ensemble is unknown. Use files `msnl train` wrote.", path)
    loaded.sort(key=lambda item: item[3]["seed"])
    first, _, cfg0, meta0 = loaded[0]
    states, histories, sources, seed = [], [], [], meta0["seed"]
    for path, model, cfg, meta in loaded:
        if replace(cfg, ensemble_size=1) != replace(cfg0, ensemble_size=1):
            diff = sorted(k for k, v in cfg.to_dict().items() if k != "ensemble_size" and cfg0.to_dict()[k] != v)
            raise InputError(f"its config differs from {first.name}'s in {', '.join(diff)}; members of one ensemble "
                             "must be trained with the same options.", path)
        mismatch = [k for k in _SHARED if meta.get(k) != meta0.get(k)]
        if trained_candidates(meta) != trained_candidates(meta0):
            mismatch.append("step_one")
        if mismatch:
            raise InputError(f"was trained on other data than {first.name} ({', '.join(mismatch)} differ); members of "
                             "one ensemble must be trained on the same pairs.", path)
        if meta.get("seed") != seed:
            raise InputError(f"has seed {meta.get('seed')}, but the files before it end at seed {seed - 1}: members "
                             "need consecutive seeds (member i has seed + i), so train the missing seed.", path)
        members = members_of(model)
        states += [_on_cpu(m.state_dict()) for m in members]
        histories += meta.get("histories") or [meta.get("history", [])] * len(members)
        sources.append({"file": path.name, "sha256": weights_digest(path), "seed": seed, "members": len(members),
                        "created": meta.get("created")})
        seed += len(members)
    cfg = replace(cfg0, ensemble_size=len(states)).with_inference(**inference or {})
    devices = sorted({str(m.get("device")) for _, _, _, m in loaded})
    _write_weights(out, {"state_dicts": states, "config": cfg.to_dict(), "seed": meta0["seed"], "histories": histories,
                         "device": ",".join(devices), **{k: meta0.get(k) for k in _SHARED},
                         "step_one": trained_candidates(meta0), "combined_from": sources})
    return cfg
