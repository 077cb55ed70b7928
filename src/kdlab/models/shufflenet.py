"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) as the KD literature runs on CIFAR.

Both keep the papers' units and stage widths but replace the ImageNet stem (3×3 stride-2 conv
and max-pool) by the KD literature's CIFAR stem, a 1×1 conv-BN-ReLU to 24 channels at full
resolution; each of the 3 stages then halves the map: 32×32 inputs give 16, 8 and 4 pixel maps.

``shufflenetv1`` (g = 3, widths 240/480/960, 4/8/4 units): 1×1 group conv-BN-ReLU, channel
shuffle, 3×3 depthwise conv-BN (no ReLU, as the paper says), 1×1 group conv-BN, added to the
input — or, in a stage's first (stride-2) unit, concatenated with the 3×3 average-pooled input —
then ReLU. The bottleneck is a quarter of the branch's output, and the first unit after the
stem uses no groups in its first 1×1 conv (24 channels are too few to split), as in CRD/
RepDistiller: 0.95 M parameters for 100 classes.

``shufflenetv2`` (1×, widths 116/232/464, 4/8/4 units, 1024-channel last conv): a unit splits
the channels in half, passes one half through and runs the other through 1×1 conv-BN-ReLU, 3×3
depthwise conv-BN, 1×1 conv-BN-ReLU, concatenates and shuffles; a stage's first unit runs both
branches on the whole input with stride 2 (the paper's Fig. 3 c/d). 1.36 M parameters.

Feature taps (``named_modules()`` paths, all 4-D outputs): ``stem`` (32×32), ``layer1``
(16×16), ``layer2`` (8×8), ``layer3`` (4×4), each a stage's output; ``conv_head`` (V2 only, the
last 1×1 conv-BN-ReLU, 4×4); ``pool`` is the embedding ``[batch, channels, 1, 1]``; ``fc`` gives
the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.cifar_resnet import conv_bn_relu
from kdlab.models.mlp import check_size
from kdlab.models.zoo import init_weights

STEM_WIDTH = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups, so the next group conv mixes them all."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(
    in_planes: int, planes: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """A bias-free convolution and BatchNorm, without activation (depthwise / linear layers)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(planes),
    )


def check_shufflenet_arguments(num_classes: Any = 100, in_channels: Any = 3) -> None:
    """Check the arguments the ShuffleNets share."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1's unit (the paper's Fig. 2 b, or c when ``stride`` is 2)."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, groups: int, first_groups: int
    ) -> None:
        super().__init__()
        branch = planes - in_planes if stride == 2 else planes  # stride 2 concatenates the input
        mid = branch // 4
        self.stride, self.first_groups = stride, first_groups
        self.conv1 = conv_bn(in_planes, mid, 1, groups=first_groups)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3 = conv_bn(mid, branch, 1, groups=groups)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(self.relu(self.conv1(x)), self.first_groups)
        out = self.conv3(self.conv2(out))
        if self.stride == 2:
            return self.relu(torch.cat([out, self.shortcut(x)], 1))
        return self.relu(out + x)


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNet V1, 1×, g = 3 (the KD literature's ``ShuffleV1``)."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_shufflenet_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", "layer1", "layer2", "layer3")
    GROUPS = 3
    WIDTHS = (240, 480, 960)
    UNITS = (4, 8, 4)

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        check_shufflenet_arguments(num_classes, in_channels)
        self.stem = conv_bn_relu(in_channels, STEM_WIDTH, kernel=1)
        width = STEM_WIDTH
        for k, (planes, units) in enumerate(zip(self.WIDTHS, self.UNITS, strict=True), start=1):
            layers = []
            for i in range(units):
                first = self.GROUPS if width != STEM_WIDTH else 1
                layers.append(ShuffleV1Unit(width, planes, 2 if i == 0 else 1, self.GROUPS, first))
                width = planes
            self.add_module(f"layer{k}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2's basic unit: split, transform one half, concatenate, shuffle (Fig. 3 c)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.branch = nn.Sequential(
            conv_bn_relu(half, half, kernel=1),
            conv_bn(half, half, 3, groups=half),
            conv_bn_relu(half, half, kernel=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNet V2's stride-2 unit: two branches on the whole input, concatenated (Fig. 3 d)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.left = nn.Sequential(
            conv_bn(in_planes, in_planes, 3, 2, groups=in_planes),
            conv_bn_relu(in_planes, half, kernel=1),
        )
        self.right = nn.Sequential(
            conv_bn_relu(in_planes, half, kernel=1),
            conv_bn(half, half, 3, 2, groups=half),
            conv_bn_relu(half, half, kernel=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


#: Stage widths and last-conv width per scale (the paper's table 5).
V2_WIDTHS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def check_shufflenet_v2_arguments(
    num_classes: Any = 100, in_channels: Any = 3, scale: Any = 1.0
) -> tuple[int, int, int, int]:
    """Check :class:`ShuffleNetV2`'s arguments; returns the widths of ``scale``."""
    check_shufflenet_arguments(num_classes, in_channels)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale not in V2_WIDTHS:
        raise ConfigError(
            f"scale must be one of {', '.join(map(str, V2_WIDTHS))} (the paper's sizes), "
            f"got {quote(scale)}"
        )
    return V2_WIDTHS[scale]


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNet V2; the default 1× is the KD literature's ``ShuffleV2``."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_shufflenet_v2_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", "layer1", "layer2", "layer3", "conv_head")
    UNITS = (4, 8, 4)

    def __init__(self, num_classes: int = 100, in_channels: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        *widths, last = check_shufflenet_v2_arguments(num_classes, in_channels, scale)
        self.stem = conv_bn_relu(in_channels, STEM_WIDTH, kernel=1)
        width = STEM_WIDTH
        for k, (planes, units) in enumerate(zip(widths, self.UNITS, strict=True), start=1):
            layers = [ShuffleV2DownUnit(width, planes)]
            layers += [ShuffleV2Unit(planes) for _ in range(units - 1)]
            self.add_module(f"layer{k}", nn.Sequential(*layers))
            width = planes
        self.conv_head = conv_bn_relu(width, last, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(self.conv_head(x)).flatten(1))


__all__ = [
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1Unit",
    "ShuffleV2DownUnit",
    "ShuffleV2Unit",
    "channel_shuffle",
]
