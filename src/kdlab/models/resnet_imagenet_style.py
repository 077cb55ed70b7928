"""ResNet18/34/50 (He et al. 2016, table 1) with the CIFAR stem the KD literature gives them.

The ImageNet networks' 4 stages (widths 64/128/256/512; basic blocks 2-2-2-2 and 3-4-6-3, or
bottleneck blocks 3-4-6-3 with expansion 4), but the 7×7 stride-2 stem and the max-pool are
replaced by one 3×3 stride-1 conv-BN-ReLU of 64 channels, so 32×32 inputs give 32, 16, 8 and
4 pixel maps. Shortcuts are identities, or 1×1 conv + BN where the shape changes (option B).
Parameters for 100 classes: resnet18 11.22 M, resnet34 21.33 M, resnet50 23.71 M.

Feature taps (``named_modules()`` paths, all 4-D outputs): ``stem`` (32×32), ``layer1``
(32×32), ``layer2`` (16×16), ``layer3`` (8×8), ``layer4`` (4×4), each a stage's output after
its last ReLU; ``pool`` is the embedding ``[batch, 512 × expansion, 1, 1]``; ``fc`` gives the
logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.cifar_resnet import BasicBlock, conv_bn_relu, make_stage, projection
from kdlab.models.mlp import check_choice, check_size, check_sizes
from kdlab.models.preset import preset
from kdlab.models.zoo import init_weights

WIDTHS = (64, 128, 256, 512)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4), each with BN, added to the shortcut, then ReLU (Fig. 5)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_planes, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def check_resnet_cifar_stem_arguments(
    num_classes: Any = 100,
    in_channels: Any = 3,
    block: Any = "basic",
    blocks: Any = (2, 2, 2, 2),
) -> list[int]:
    """Check :class:`ResNetCifarStem`'s arguments; returns the blocks per stage."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    check_choice("block", block, list(BLOCKS))
    counts = check_sizes("blocks", blocks, "[2, 2, 2, 2]")
    if len(counts) != len(WIDTHS):
        raise ConfigError(
            f"blocks must give the blocks of each of the 4 stages, e.g. [3, 4, 6, 3], "
            f"got {quote(blocks)}"
        )
    return counts


class ResNetCifarStem(nn.Module):
    """An ImageNet-layout ResNet with a CIFAR stem; the named variants fix ``block``/``blocks``."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_resnet_cifar_stem_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        block: str = "basic",
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        counts = check_resnet_cifar_stem_arguments(num_classes, in_channels, block, blocks)
        unit = BLOCKS[block]
        expansion = getattr(unit, "expansion", 1)
        self.stem = conv_bn_relu(in_channels, WIDTHS[0])
        width = WIDTHS[0]
        stages = zip(WIDTHS, counts, (1, 2, 2, 2), strict=True)
        for k, (planes, n, stride) in enumerate(stages, start=1):
            self.add_module(f"layer{k}", make_stage(unit, width, planes, n, stride))
            width = planes * expansion
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


ResNet18 = preset(
    ResNetCifarStem,
    "ResNet18",
    "resnet18: basic blocks 2-2-2-2.",
    block="basic",
    blocks=(2, 2, 2, 2),
)


ResNet34 = preset(
    ResNetCifarStem,
    "ResNet34",
    "resnet34: basic blocks 3-4-6-3.",
    block="basic",
    blocks=(3, 4, 6, 3),
)


ResNet50 = preset(
    ResNetCifarStem,
    "ResNet50",
    "resnet50: bottleneck blocks 3-4-6-3 (the KD literature's ``ResNet50`` teacher).",
    block="bottleneck",
    blocks=(3, 4, 6, 3),
)


__all__ = ["BLOCKS", "Bottleneck", "ResNet18", "ResNet34", "ResNet50", "ResNetCifarStem"]
