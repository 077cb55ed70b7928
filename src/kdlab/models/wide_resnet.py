"""Wide ResNets (Zagoruyko & Komodakis 2016) for 32×32 inputs, named as in the KD literature.

WRN-d-k: a 3×3 stem of 16 channels, then 3 stages of ``n = (d - 4) / 6`` pre-activation blocks
(BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3) at widths 16k/32k/64k on 32×32, 16×16 and 8×8
maps, a final BN-ReLU, global average pooling and a linear classifier. Where a block changes
width or resolution its shortcut is a 1×1 convolution of the pre-activated input, as in the
paper's code. ``wrn_40_2`` has 2.26 M parameters for 100 classes, ``wrn_16_2`` 0.70 M.

Feature taps (``named_modules()`` paths, all 4-D outputs): ``stem`` (the first convolution,
32×32), ``layer1`` (32×32), ``layer2`` (16×16), ``layer3`` (8×8) — each stage's output, which
in a pre-activation net is a residual sum *before* BN-ReLU; ``norm`` is ``layer3`` after the
final BN-ReLU (the map that is pooled); ``pool`` is the embedding ``[batch, 64k, 1, 1]``;
``fc`` gives the logits.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.mlp import check_rate, check_size
from kdlab.models.preset import preset
from kdlab.models.zoo import init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 added to the shortcut (He et al. 2016b; WRN's block)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        # A projection sees the pre-activated input; the identity keeps the raw sum.
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = self.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


def check_wrn_arguments(
    num_classes: Any = 100,
    in_channels: Any = 3,
    depth: Any = 16,
    widen_factor: Any = 1,
    dropout: Any = 0.0,
) -> int:
    """Check :class:`WideResNet`'s arguments; returns blocks per stage ``n = (depth - 4) / 6``."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    check_size("depth", depth)
    check_size("widen_factor", widen_factor)
    check_rate("dropout", dropout)
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40), got {quote(depth)}"
        )
    return (depth - 4) // 6


def _stage(in_planes: int, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    layers = [PreActBlock(in_planes, planes, stride, dropout)]
    layers += [PreActBlock(planes, planes, 1, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; the named variants fix both (no dropout, as in the KD
    literature)."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_wrn_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", "layer1", "layer2", "layer3", "norm")

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        depth: int = 16,
        widen_factor: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = check_wrn_arguments(num_classes, in_channels, depth, widen_factor, dropout)
        w1, w2, w3 = 16 * widen_factor, 32 * widen_factor, 64 * widen_factor
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.layer1 = _stage(16, w1, n, 1, dropout)
        self.layer2 = _stage(w1, w2, n, 2, dropout)
        self.layer3 = _stage(w2, w3, n, 2, dropout)
        self.norm = nn.Sequential(nn.BatchNorm2d(w3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(self.norm(x)).flatten(1))


WRN16_1 = preset(
    WideResNet, "WRN16_1", "wrn_16_1: depth 16 (n = 2), width factor 1.", depth=16, widen_factor=1
)


WRN16_2 = preset(
    WideResNet,
    "WRN16_2",
    "wrn_16_2: depth 16 (n = 2), width factor 2 (a student of wrn_40_2, 0.70 M parameters).",
    depth=16,
    widen_factor=2,
)


WRN40_1 = preset(
    WideResNet,
    "WRN40_1",
    "wrn_40_1: depth 40 (n = 6), width factor 1 (0.57 M parameters).",
    depth=40,
    widen_factor=1,
)


WRN40_2 = preset(
    WideResNet,
    "WRN40_2",
    "wrn_40_2: depth 40 (n = 6), width factor 2 (the usual WRN teacher, 2.26 M parameters).",
    depth=40,
    widen_factor=2,
)


__all__ = ["WRN16_1", "WRN16_2", "WRN40_1", "WRN40_2", "PreActBlock", "WideResNet"]
