"""Patch tensors for the CNN: scaling, cropping, and padding variable sizes into one batch.

Patches in one batch are padded to the largest and carry a mask of their real voxels, so the
loss ignores padding (bucketing by size would give batches of uneven size and composition,
breaking the paper's sampling proportions within each batch).
"""

from __future__ import annotations

import numpy as np
import torch

from msnl.config import CNNConfig


def scale(patch: np.ndarray, cfg: CNNConfig) -> np.ndarray:
    """Channels to ~[0, 1]: grey levels and distance maps (mm) by their `input_scale`."""
    return (patch / np.asarray(cfg.input_scale, dtype=np.float32)[:, None, None, None]).astype(np.float32)


def centre_window(shape: tuple[int, ...], max_shape: tuple[int, int, int]) -> tuple[slice, ...]:
    """The voxels of a patch of spatial `shape` that its centre crop to at most `max_shape` keeps."""
    return tuple(slice(max((size - cap) // 2, 0), max((size - cap) // 2, 0) + min(size, cap))
                 for size, cap in zip(shape, max_shape))


def centre_crop(patch: np.ndarray, truth: np.ndarray, max_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop a (C, X, Y, Z) patch and its truth to at most `max_shape`, around the centre."""
    box = centre_window(patch.shape[1:], max_shape)
    return patch[(slice(None), *box)], truth[box]


def pad_batch(patches: list[torch.Tensor], truths: list[torch.Tensor] | None = None):
    """Stack (C, X, Y, Z) tensors of different sizes into (N, C, X*, Y*, Z*), zero-padded.

    Returns the batch, the padded truths (N, 1, ...) or None, and the valid-voxel mask (N, 1, ...).
    """
    shape = [max(p.shape[d] for p in patches) for d in (1, 2, 3)]
    n, c = len(patches), patches[0].shape[0]
    x = patches[0].new_zeros((n, c, *shape))
    mask = patches[0].new_zeros((n, 1, *shape))
    y = None if truths is None else patches[0].new_zeros((n, 1, *shape))
    for i, p in enumerate(patches):
        sx, sy, sz = p.shape[1:]
        x[i, :, :sx, :sy, :sz] = p
        mask[i, :, :sx, :sy, :sz] = 1
        if y is not None:
            y[i, 0, :sx, :sy, :sz] = truths[i]
    return x, y, mask


def candidate_hits(labels: np.ndarray, truth: np.ndarray, candidate_labels: np.ndarray) -> np.ndarray:
    """Whether each candidate (its label in the `labels` volume) overlaps the truth with at
    least one of its own voxels; truth that only falls in a candidate's padded box doesn't count."""
    touched = np.unique(labels[truth & (labels > 0)])
    return np.isin(np.asarray(candidate_labels), touched)
