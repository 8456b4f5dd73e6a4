"""The patch CNN of paper §2.2: convolutional blocks, no pooling, two skips, distance maps.

    flair1, flair2 -> conv1 -> conv2 -> conv3 -> [+ DM, DMz, DMx] -> conv4
    [conv4 + conv2] -> conv5 -> conv6 -> [+ flair2] -> conv7 -> one logit per voxel

Every block is Conv3d (kernel 3, stride 1, padding 1), BatchNorm3d and ReLU; conv7 is a bare
Conv3d, since it outputs logits. With no pooling the output has the patch's own size.
"""

from __future__ import annotations

import torch
from torch import nn

from msnl.config import CNNConfig


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, 1, 1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class PatchCNN(nn.Module):
    """Input: (N, 5, X, Y, Z) = flair1, flair2, DM, DMz, DMx (normalised). Output: (N, 1, X, Y, Z) logits."""

    def __init__(self, cfg: CNNConfig | None = None) -> None:
        super().__init__()
        w1, w2, w3, w4, w5, w6 = (cfg or CNNConfig()).widths
        self.conv1 = _block(2, w1)
        self.conv2 = _block(w1, w2)
        self.conv3 = _block(w2, w3)
        self.conv4 = _block(w3 + 3, w4)  # distance maps join here
        self.conv5 = _block(w4 + w2, w5)  # short skip from conv2
        self.conv6 = _block(w5, w6)
        self.conv7 = nn.Conv3d(w6 + 1, 1, 3, 1, 1)  # long skip: flair2 joins here

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (N, 1, X, Y, Z) marks each patch's real voxels in a zero-padded batch. Every
        block's output is zeroed outside them, so a patch sees zeros around it at every layer,
        as it would alone: its prediction never depends on the size of its batch-mates."""
        def block(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            out = layer(inputs)
            return out if valid is None else out * valid

        flairs, maps, flair2 = x[:, :2], x[:, 2:5], x[:, 1:2]
        c2 = block(self.conv2, block(self.conv1, flairs))
        c3 = block(self.conv3, c2)
        c4 = block(self.conv4, torch.cat([c3, maps], dim=1))
        c6 = block(self.conv6, block(self.conv5, torch.cat([c4, c2], dim=1)))
        return self.conv7(torch.cat([c6, flair2], dim=1))


class PatchEnsemble(nn.Module):
    """Several PatchCNNs trained alike with different seeds (CNNConfig.ensemble_size; ours, the
    paper trains one). The output is the logit of the members' mean probability, so stitching,
    the sigmoid and the 0.75 threshold apply unchanged."""

    def __init__(self, members: list[PatchCNN]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        prob = torch.stack([torch.sigmoid(m(x, valid)) for m in self.members]).mean(dim=0)
        return torch.logit(prob, eps=1e-6)


def as_model(members: list[PatchCNN]) -> nn.Module:
    """One member as itself (its logits untouched), several as a PatchEnsemble."""
    return members[0] if len(members) == 1 else PatchEnsemble(members)


def members_of(model: nn.Module) -> list[PatchCNN]:
    return list(model.members) if isinstance(model, PatchEnsemble) else [model]  # type: ignore[list-item]
