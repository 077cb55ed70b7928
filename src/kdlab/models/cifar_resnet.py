"""CIFAR ResNets (He et al. 2016, §4.2) under the names of the KD literature's CIFAR-100 tables.

``resnet8`` … ``resnet110``: a 3×3 stem, then 3 stages of ``n`` basic blocks (depth = 6n+2) at
widths 16/32/64 on 32×32, 16×16 and 8×8 maps, global average pooling and a linear classifier.
``resnet8x4`` / ``resnet32x4`` (CRD, Tian et al. 2020): a 32-channel stem and stages of width
64/128/256, so the first stage opens with a projection; their 1.23 M / 7.43 M parameters for 100
classes need exactly that layout.

Shortcuts are the identity, or a 1×1 convolution + BatchNorm where the shape changes (the
paper's option B). The paper's CIFAR nets used option A (zero-padding, no parameters); the KD
literature, and its parameter counts, use option B, so this zoo does too.

Feature taps (``named_modules()`` paths, all 4-D outputs): ``stem`` (conv-BN-ReLU, 32×32),
``layer1`` (32×32), ``layer2`` (16×16), ``layer3`` (8×8) — each the output of a whole stage,
after its last ReLU; ``layerK.i`` is block ``i`` of stage ``K``; ``pool`` is the pooled
embedding ``[batch, channels, 1, 1]``; ``fc`` gives the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.mlp import check_size, check_sizes
from kdlab.models.preset import preset
from kdlab.models.zoo import init_weights


def conv_bn_relu(in_planes: int, planes: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """A bias-free convolution (BatchNorm supplies the bias), BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
    )


def projection(in_planes: int, planes: int, stride: int) -> nn.Sequential | None:
    """The 1×1 conv + BN shortcut where a block changes width or resolution, else ``None``."""
    if stride == 1 and in_planes == planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers added to the shortcut, then ReLU (He et al. 2016, Fig. 2 left)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


def make_stage(
    block: type[nn.Module], in_planes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` blocks; the first one changes resolution (``stride``) and width."""
    expansion = getattr(block, "expansion", 1)
    layers = [block(in_planes, planes, stride)]
    layers += [block(planes * expansion, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def check_resnet_arguments(
    num_classes: Any = 100,
    in_channels: Any = 3,
    depth: Any = 20,
    widths: Any = (16, 16, 32, 64),
) -> int:
    """Check :class:`CifarResNet`'s arguments; returns blocks per stage ``n = (depth - 2) / 6``."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    check_size("depth", depth)
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {quote(depth)}"
        )
    if len(check_sizes("widths", widths, "[16, 16, 32, 64]")) != 4:
        raise ConfigError(
            f"widths must list 4 sizes (stem and 3 stages), e.g. [16, 16, 32, 64], "
            f"got {quote(widths)}"
        )
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """A CIFAR ResNet of any depth 6n+2 and stem/stage widths; the named variants fix both."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_resnet_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", "layer1", "layer2", "layer3")

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        depth: int = 20,
        widths: Sequence[int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        n = check_resnet_arguments(num_classes, in_channels, depth, widths)
        stem, w1, w2, w3 = (int(w) for w in widths)
        self.stem = conv_bn_relu(in_channels, stem)
        self.layer1 = make_stage(BasicBlock, stem, w1, n, 1)
        self.layer2 = make_stage(BasicBlock, w1, w2, n, 2)
        self.layer3 = make_stage(BasicBlock, w2, w3, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


ResNet8 = preset(
    CifarResNet,
    "ResNet8",
    "resnet8: n = 1, widths 16/32/64 (a small student).",
    depth=8,
    widths=_BASE,
)


ResNet14 = preset(
    CifarResNet, "ResNet14", "resnet14: n = 2, widths 16/32/64.", depth=14, widths=_BASE
)


ResNet20 = preset(
    CifarResNet,
    "ResNet20",
    "resnet20: n = 3, widths 16/32/64 (0.28 M parameters for 100 classes).",
    depth=20,
    widths=_BASE,
)


ResNet32 = preset(
    CifarResNet, "ResNet32", "resnet32: n = 5, widths 16/32/64.", depth=32, widths=_BASE
)


ResNet44 = preset(
    CifarResNet, "ResNet44", "resnet44: n = 7, widths 16/32/64.", depth=44, widths=_BASE
)


ResNet56 = preset(
    CifarResNet,
    "ResNet56",
    "resnet56: n = 9, widths 16/32/64 (a common teacher, 0.86 M parameters).",
    depth=56,
    widths=_BASE,
)


ResNet110 = preset(
    CifarResNet,
    "ResNet110",
    "resnet110: n = 18, widths 16/32/64 (a common teacher, 1.74 M parameters).",
    depth=110,
    widths=_BASE,
)


ResNet8x4 = preset(
    CifarResNet,
    "ResNet8x4",
    "resnet8x4: n = 1, 32-channel stem, widths 64/128/256 (1.23 M parameters).",
    depth=8,
    widths=_X4,
)


ResNet32x4 = preset(
    CifarResNet,
    "ResNet32x4",
    "resnet32x4: n = 5, 32-channel stem, widths 64/128/256 (the usual teacher, 7.43 M).",
    depth=32,
    widths=_X4,
)


__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ResNet8",
    "ResNet8x4",
    "ResNet14",
    "ResNet20",
    "ResNet32",
    "ResNet32x4",
    "ResNet44",
    "ResNet56",
    "ResNet110",
    "conv_bn_relu",
    "make_stage",
    "projection",
]
