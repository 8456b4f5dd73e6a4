"""Inference (paper §2.4): batched patches, closest-to-centre stitching, sigmoid, threshold.

Arrays in (patches, bounding boxes, visit 2's grid), a new-lesion mask and a lesion table out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from msnl.cnn import PatchCNN, as_model
from msnl.config import CNNConfig, StepOneConfig
from msnl.errors import InputError
from msnl.patches import pad_batch, scale
from msnl.scan import LabelMap

DEFAULT_WEIGHTS = "patch_cnn.pt"
_MAX_BATCH_VOXELS = 1_000_000  # a padded batch of big patches stays under ~1 GiB of activations
# Patch shapes are rounded up to even sizes along voxel axes 0 and 1 to form batches: on the real pairs this pads
# 5-14 % of the voxels, against about twice the voxels when patches were batched in order of size.
_SHAPE_BIN = (2, 2, 1)


def default_weights_path() -> Path:
    return Path(str(resources.files("msnl") / "weights" / DEFAULT_WEIGHTS))


def load_weights(path: str | Path | None = None, device: torch.device | None = None) -> tuple[nn.Module, CNNConfig, dict[str, Any]]:
    """The model (a PatchCNN, or a PatchEnsemble of `ensemble_size` members), its config and
    its metadata; the shipped weights when `path` is None. Files from before ensembles, with
    one "state_dict", load as one member."""
    path = Path(path) if path else default_weights_path()
    if not path.exists():
        raise InputError("no such weights file. Train one with `msnl train`, or omit it to use the shipped weights.", path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message is long, and suggests loading untrusted pickles
        raise InputError("is not an msnl weights file (not a PyTorch file that loads safely). Use a file `msnl train` wrote.", path) from None
    try:
        cfg = CNNConfig.from_dict(saved["config"])
        states = saved["state_dicts"] if "state_dicts" in saved else [saved["state_dict"]]
        if len(states) != cfg.ensemble_size:
            raise ValueError(f"{len(states)} member state(s) for ensemble_size {cfg.ensemble_size}")
        members = [PatchCNN(cfg) for _ in states]
        for member, state in zip(members, states):
            member.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"is not an msnl weights file ({type(exc).__name__}: {exc}). Use a file `msnl train` wrote.", path) from None
    model = as_model(members).eval()
    return model.to(device or torch.device("cpu")), cfg, {k: v for k, v in saved.items() if k not in ("state_dict", "state_dicts")}


def trained_candidates(meta: dict[str, Any]) -> dict[str, Any]:
    """The step-one candidate settings (StepOneConfig.candidate_settings) that weights were
    trained on. What a file does not record is the paper's: the shipped file predates the
    record, and files from before it record only `patch_padding_voxels`."""
    recorded = meta.get("step_one") or {}
    if "patch_padding_voxels" not in recorded and meta.get("patch_padding_voxels") is not None:
        recorded = {**recorded, "patch_padding_voxels": int(meta["patch_padding_voxels"])}
    return {**StepOneConfig().candidate_settings(), **recorded}


def check_candidates(meta: dict[str, Any], settings: dict[str, Any], path: str | Path | None = None,
                     use: str = "step one is set to") -> None:
    """Refuse weights trained on step-one candidates made with other `settings` (the fields of
    StepOneConfig.candidate_settings): the network would see patches unlike any it learnt from,
    and nothing would say so. `use` names what makes the new candidates, for the message."""
    trained = trained_candidates(meta)
    differ = [name for name in trained if name in settings and settings[name] != trained[name]]
    if differ:
        was = ", ".join(f"{name}={trained[name]}" for name in differ)
        now = ", ".join(f"{name}={settings[name]}" for name in differ)
        fix = " ".join(f"--step-one {name}={json.dumps(trained[name])}" for name in differ)  # as --step-one parses
        raise InputError(
            f"these weights were trained on step-one candidates made with {was}, but {use} {now}. Use the "
            f"weights' values ({fix}), or train weights on candidates made the new way with `msnl train`.",
            path or default_weights_path())


def weights_digest(path: str | Path | None = None) -> str:
    import hashlib

    return hashlib.sha256(Path(path or default_weights_path()).read_bytes()).hexdigest()


@torch.no_grad()
def predict_patches(model: nn.Module, patches: list[np.ndarray], cfg: CNNConfig, device: torch.device | None = None) -> list[np.ndarray]:
    """Logits (X, Y, Z) for each (C, X, Y, Z) patch, in the input's order. A batch holds only
    patches whose shapes round up to the same bin (_SHAPE_BIN), so little of it is padding."""
    device = device or next(model.parameters()).device
    bins: dict[tuple[int, ...], list[int]] = {}
    for i, patch in enumerate(patches):
        bins.setdefault(tuple(-(-n // q) * q for n, q in zip(patch.shape[1:], _SHAPE_BIN)), []).append(i)
    out: list[np.ndarray | None] = [None] * len(patches)
    for shape, members in sorted(bins.items()):
        per_batch = max(1, min(cfg.inference_batch_size, _MAX_BATCH_VOXELS // int(np.prod(shape))))
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            x, _, valid = pad_batch([torch.from_numpy(scale(patches[i], cfg)) for i in chunk])
            logits = flip_averaged(model, x.to(device), valid.to(device), cfg.test_time_flip_axes).float().cpu().numpy()
            for j, i in enumerate(chunk):
                sx, sy, sz = patches[i].shape[1:]
                out[i] = logits[j, 0, :sx, :sy, :sz]
    return out  # type: ignore[return-value]


def flip_averaged(model: nn.Module, x: torch.Tensor, valid: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """The model's logits on a (N, C, X, Y, Z) batch; with `axes` (CNNConfig.test_time_flip_axes),
    the logit of the mean probability over every combination of flips along those patch axes,
    each prediction flipped back first. No axes: the model's own logits, untouched."""
    if not axes:
        return model(x, valid)
    views = [tuple(2 + a for a in combo) for r in range(len(axes) + 1) for combo in combinations(axes, r)]
    prob = torch.stack([torch.sigmoid(model(x.flip(d), valid.flip(d))).flip(d) for d in views]).mean(dim=0)
    return torch.logit(prob, eps=1e-6)


def stitch(values: list[np.ndarray], boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
           shape: tuple[int, int, int], spacing: tuple[float, float, float], fill: float = -np.inf) -> np.ndarray:
    """One volume from overlapping patches: each voxel takes the value of the patch whose
    centre is closest to it, in mm (paper §2.4). Voxels outside every patch get `fill`."""
    out = np.full(shape, fill, dtype=np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)
    sp = np.asarray(spacing, dtype=np.float32)
    for value, (lo, hi) in zip(values, boxes):
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        centre = (np.asarray(lo) + np.asarray(hi) - 1) / 2.0
        axes = [((np.arange(a, b) - c) * s) ** 2 for a, b, c, s in zip(lo, hi, centre, sp)]
        dist = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
        closer = dist < best[box]
        best[box] = np.where(closer, dist, best[box])
        out[box] = np.where(closer, value, out[box])
    return out


@dataclass(frozen=True)
class Segmentation:
    mask: LabelMap
    probability: np.ndarray
    lesions: pd.DataFrame


def segment(logits: np.ndarray, dmz: np.ndarray, grid: LabelMap, cfg: CNNConfig, infratentorial_dmz_mm: float) -> Segmentation:
    """Sigmoid, threshold, and the table of new lesions (26-connected components); lesions
    under `cfg.min_lesion_mm3` are dropped (none by default)."""
    prob = np.zeros(logits.shape, np.float32)
    inside = np.isfinite(logits)
    prob[inside] = 1.0 / (1.0 + np.exp(-logits[inside]))
    mask = prob > cfg.threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if cfg.min_lesion_mm3 > 0 and n:
        small = np.flatnonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:] * grid.voxel_volume < cfg.min_lesion_mm3) + 1
        mask &= ~np.isin(labels, small)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    index = np.arange(1, n + 1)
    columns = ["lesion", "x_mm", "y_mm", "z_mm", "volume_mm3", "mean_probability", "infratentorial"]
    if n == 0:
        table = pd.DataFrame({c: pd.Series(dtype=bool if c == "infratentorial" else float) for c in columns})
    else:
        centroid = np.array(ndimage.center_of_mass(mask, labels, index)) @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        table = pd.DataFrame({
            "lesion": index,
            "x_mm": centroid[:, 0], "y_mm": centroid[:, 1], "z_mm": centroid[:, 2],
            "volume_mm3": np.bincount(labels.ravel())[1:] * grid.voxel_volume,
            "mean_probability": np.asarray(ndimage.mean(prob, labels, index)),
            "infratentorial": np.asarray(ndimage.mean(dmz, labels, index)) > infratentorial_dmz_mm,
        })
    return Segmentation(LabelMap(mask, grid.affine), prob, table)


def boxes_of(table: pd.DataFrame) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    return [((int(r.lo_i), int(r.lo_j), int(r.lo_k)), (int(r.hi_i), int(r.hi_j), int(r.hi_k))) for r in table.itertuples()]
