"""Step two of the method (paper §2), chained: step one's patches in, new-lesion mask out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from msnl.candidates import PATCH_CHANNELS
from msnl.config import CNNConfig, StepOneConfig
from msnl.inference import Segmentation, boxes_of, predict_patches, segment, stitch
from msnl.scan import LabelMap

_DMZ = PATCH_CHANNELS.index("dmz")


def run_step_two(table: pd.DataFrame, patches: list[np.ndarray], grid: LabelMap, model: nn.Module,
                 cfg: CNNConfig, step_one: StepOneConfig | None = None, device: torch.device | None = None) -> Segmentation:
    """Predict every patch, stitch by closest centre, sigmoid, threshold, and tabulate lesions."""
    step_one = step_one or StepOneConfig()
    volume, dmz = stitched_logits(table, patches, grid, model, cfg, device)
    return segment(volume, dmz, grid, cfg, step_one.infratentorial_dmz_mm)


def stitched_logits(table: pd.DataFrame, patches: list[np.ndarray], grid: LabelMap, model: nn.Module,
                    cfg: CNNConfig, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The logits of every patch and their DMz channel, each stitched by closest centre onto
    `grid`: what `segment` thresholds (one prediction can be segmented at several thresholds)."""
    boxes = boxes_of(table)
    logits = predict_patches(model, patches, cfg, device) if patches else []
    return (stitch(logits, boxes, grid.shape, grid.spacing),
            stitch([p[_DMZ] for p in patches], boxes, grid.shape, grid.spacing, fill=0.0))
