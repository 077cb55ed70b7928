"""MobileNetV2 (Sandler et al. 2018) as the KD literature adapts it to CIFAR.

Inverted residual blocks: a 1×1 expansion by ``t``, a 3×3 depthwise convolution, a linear 1×1
projection, and a residual sum when the block keeps width and resolution. The KD literature's
CIFAR "MobileNetV2" (CRD's ``mobile_half``, from Jin et al. 2019) is width 0.5 with expansion 6:
channels ``int(c × 0.5)`` of the paper's 16/24/32/64/96/160/320 (no rounding to multiples of 8),
a 1280-channel last 1×1 conv, ReLU instead of ReLU6, and — to suit 32×32 inputs — the second
stage keeps stride 1 (the paper's stride 2), so the 32×32 input is reduced 16× (stem 2, stages
3, 4, 6) to a 2×2 map. It has 0.81 M parameters for 100 classes.

Feature taps (``named_modules()`` paths, all 4-D outputs): ``stem`` (16×16), ``layer1`` …
``layer7`` (the seven stages of the paper's table 2: 16, 16, 8, 4, 4, 2 and 2 pixels wide),
``conv_head`` (the last 1×1 conv-BN-ReLU, 2×2); ``pool`` is the embedding ``[batch, 1280, 1,
1]``; ``fc`` gives the logits.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.cifar_resnet import conv_bn_relu
from kdlab.models.mlp import check_size
from kdlab.models.zoo import init_weights

#: (expansion t, output channels c, blocks n, first stride s) per stage; t = None is ``expansion``.
#: The paper's table 2 with the CIFAR change of the KD literature: stage 2 has stride 1.
STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU, 3×3 depthwise-BN-ReLU, 1×1 linear projection-BN (+ input)."""

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.residual = stride == 1 and in_planes == planes
        self.conv = nn.Sequential(
            conv_bn_relu(in_planes, hidden, kernel=1),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            # Linear bottleneck: no ReLU after the projection (the paper's §3.2).
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


def check_mobilenet_arguments(
    num_classes: Any = 100,
    in_channels: Any = 3,
    width_mult: Any = 0.5,
    expansion: Any = 6,
) -> None:
    """Check :class:`MobileNetV2`'s arguments."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    check_size("expansion", expansion)
    bad_type = isinstance(width_mult, bool) or not isinstance(width_mult, Real)
    if bad_type or not 0.1 <= width_mult <= 4:
        raise ConfigError(
            f"width_mult must be a number in [0.1, 4], e.g. 0.5, got {quote(width_mult)}"
        )


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2; the defaults (width 0.5, expansion 6) are the KD literature's."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_mobilenet_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("stem", *(f"layer{k}" for k in range(1, 8)), "conv_head")

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expansion: int = 6,
    ) -> None:
        super().__init__()
        check_mobilenet_arguments(num_classes, in_channels, width_mult, expansion)
        width = int(32 * width_mult)
        self.stem = conv_bn_relu(in_channels, width, stride=2)
        for k, (t, c, n, s) in enumerate(STAGES, start=1):
            planes = int(c * width_mult)
            blocks = [
                InvertedResidual(
                    width if i == 0 else planes, planes, s if i == 0 else 1, t or expansion
                )
                for i in range(n)
            ]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            width = planes
        last = int(1280 * width_mult) if width_mult > 1 else 1280
        self.conv_head = conv_bn_relu(width, last, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for k in range(1, len(STAGES) + 1):
            x = getattr(self, f"layer{k}")(x)
        return self.fc(self.pool(self.conv_head(x)).flatten(1))


__all__ = ["STAGES", "InvertedResidual", "MobileNetV2"]
