"""The paper's batch sampling (§2.1): balanced TP/FP patches, plus 30% extra patches that lean
towards infratentorial and false-positive ones.

Drawing is separate from loading: `epoch_indices` returns which patches an epoch holds, from a
seeded generator, and `batches` cuts them into batches.
"""

from __future__ import annotations

import numpy as np

from msnl.config import CNNConfig


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int, fallback: np.ndarray) -> np.ndarray:
    source = pool if len(pool) else fallback
    return rng.choice(source, size=n, replace=True) if n and len(source) else np.zeros(0, dtype=int)


def _source_weights(pool: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Draw probabilities over `pool` that give each source present in it an equal share."""
    _, group, counts = np.unique(sources[pool], return_inverse=True, return_counts=True)
    weights = 1.0 / counts[group]
    return weights / weights.sum()


def _hard_fp(rng: np.random.Generator, fp: np.ndarray, n: int, scores: np.ndarray | None) -> np.ndarray:
    """`n` FP patches drawn with probability proportional to their score (the net's last highest
    voxel probability on them), plus a little so that no patch is ever out of reach."""
    if scores is None or len(scores) <= fp.max():
        raise ValueError("hard_fp_share needs one score per patch")
    weights = np.asarray(scores, float)[fp] + 1e-3
    return rng.choice(fp, n, replace=True, p=weights / weights.sum())


def epoch_indices(is_tp: np.ndarray, infratentorial: np.ndarray, cfg: CNNConfig, rng: np.random.Generator,
                  sources: np.ndarray | None = None, fp_scores: np.ndarray | None = None) -> np.ndarray:
    """Patch indices of one epoch, shuffled.

    As many FP as TP patches, each drawn uniformly (2 x #TP of them, or `patches_per_epoch`
    less the extras; `tp_share` other than the paper's 0.5 changes the ratio), then
    `extra_share` more: `extra_infratentorial` of those infratentorial (`extra_infratentorial_tp`
    of them TP, the rest FP) and the remainder supratentorial FP. When a pool is empty (say, no
    infratentorial TP), its draws come from the nearest pool that isn't.

    With `cfg.balance_sources`, `sources` (one label per patch) is required, and the TP and the
    FP draws give every source in their pool an equal share instead of every patch.

    With `cfg.hard_fp_share`, `fp_scores` (one per patch) is required, and that share of the
    balanced FP draws is drawn in proportion to it instead (`_hard_fp`).
    """
    is_tp, infra = np.asarray(is_tp, bool), np.asarray(infratentorial, bool)
    tp, fp = np.flatnonzero(is_tp), np.flatnonzero(~is_tp)
    if len(tp) == 0 or len(fp) == 0:
        raise ValueError("training needs both TP and FP patches")
    if cfg.patches_per_epoch is None:
        n_tp = len(tp)
        n_fp = int(round(n_tp * (1 - cfg.tp_share) / cfg.tp_share))
    else:
        n_base = int(round(cfg.patches_per_epoch / (1 + cfg.extra_share)))
        n_tp = int(n_base * cfg.tp_share)
        n_fp = n_base - n_tp
    if cfg.balance_sources:
        if sources is None or len(sources) != len(is_tp):
            raise ValueError("balance_sources needs one source label per patch")
        sources = np.asarray(sources)
        base = np.concatenate([rng.choice(tp, n_tp, replace=True, p=_source_weights(tp, sources)),
                               rng.choice(fp, n_fp, replace=True, p=_source_weights(fp, sources))])
    else:
        base = np.concatenate([rng.choice(tp, n_tp, replace=True), rng.choice(fp, n_fp, replace=True)])
    if n_hard := int(round(cfg.hard_fp_share * n_fp)):
        base[len(base) - n_hard :] = _hard_fp(rng, fp, n_hard, fp_scores)
    n_extra = int(round(cfg.extra_share * len(base)))
    n_infra = int(round(cfg.extra_infratentorial * n_extra))
    n_infra_tp = int(round(cfg.extra_infratentorial_tp * n_infra))
    n_supra_fp = n_extra - n_infra
    extra = np.concatenate([
        _draw(rng, np.flatnonzero(is_tp & infra), n_infra_tp, tp),
        _draw(rng, np.flatnonzero(~is_tp & infra), n_infra - n_infra_tp, fp),
        _draw(rng, np.flatnonzero(~is_tp & ~infra), n_supra_fp, fp),
    ])
    out = np.concatenate([base, extra]).astype(int)
    rng.shuffle(out)
    return out


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def size_bucketed_batches(indices: np.ndarray, volumes: np.ndarray, batch_size: int, window: int,
                          rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar-sized patches, so a padded batch wastes little compute.

    The epoch's drawn patches are cut into windows of `window` batches, each window is sorted
    by patch volume and cut into batches, and the batches are shuffled. The epoch holds exactly
    the patches drawn, so the paper's proportions hold over the epoch; within one batch they
    vary with size.
    """
    out = []
    step = batch_size * window
    for start in range(0, len(indices), step):
        chunk = indices[start : start + step]
        out += batches(chunk[np.argsort(volumes[chunk], kind="stable")], batch_size)
    return [out[i] for i in rng.permutation(len(out))]
