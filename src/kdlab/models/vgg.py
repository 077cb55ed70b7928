"""VGG with BatchNorm (Simonyan & Zisserman 2015) as the KD literature trains it on CIFAR.

Five stages of 3×3 conv-BN-ReLU layers (configurations A/B/D/E of the paper give vgg11/13/16/19;
``vgg8`` is the KD literature's one-conv-per-stage net), widths 64/128/256/512/512. The CIFAR
variant of CRD/RepDistiller keeps no fully connected stack: global average pooling feeds one
linear classifier, and on 32×32 inputs only stages 2–4 open with a 2×2 max-pool, so the maps are
32, 16, 8, 4 and 4 pixels wide (a fifth pool would leave 2×2). Convolutions keep their bias, as
in the paper and the literature's VGG-BN, so ``vgg8`` has 3.97 M parameters for 100 classes
(tables print 3.96 M).

Feature taps (``named_modules()`` paths, all 4-D outputs): ``layer1`` (32×32) … ``layer5``
(4×4), each a stage's output after its last ReLU; ``layerK.i`` are the stage's layers (a leading
``MaxPool2d`` in stages 2–4); ``pool`` is the embedding ``[batch, 512, 1, 1]``; ``fc`` gives the
logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.mlp import check_size, check_sizes
from kdlab.models.preset import preset
from kdlab.models.zoo import init_weights

#: Convolutions per stage: "S" is the KD literature's vgg8, A/B/D/E the paper's vgg11/13/16/19.
LAYERS_PER_STAGE: dict[str, tuple[int, ...]] = {
    "S": (1, 1, 1, 1, 1),
    "A": (1, 1, 2, 2, 2),
    "B": (2, 2, 2, 2, 2),
    "D": (2, 2, 3, 3, 3),
    "E": (2, 2, 4, 4, 4),
}
WIDTHS = (64, 128, 256, 512, 512)
#: Stages that open with a 2×2 max-pool on 32×32 inputs.
POOLED_STAGES = (1, 2, 3)


def check_vgg_arguments(
    num_classes: Any = 100,
    in_channels: Any = 3,
    layers: Any = LAYERS_PER_STAGE["S"],
) -> list[int]:
    """Check :class:`VGG`'s arguments; returns the convolutions per stage."""
    check_size("num_classes", num_classes)
    check_size("in_channels", in_channels)
    counts = check_sizes("layers", layers, "[2, 2, 3, 3, 3]")
    if len(counts) != len(WIDTHS):
        raise ConfigError(
            f"layers must give the convolutions of each of the 5 stages, e.g. [2, 2, 3, 3, 3] "
            f"for vgg16, got {quote(layers)}"
        )
    return counts


def _stage(in_planes: int, planes: int, convs: int, pooled: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pooled else []
    for _ in range(convs):
        layers += [nn.Conv2d(in_planes, planes, 3, padding=1), nn.BatchNorm2d(planes), nn.ReLU()]
        in_planes = planes
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A CIFAR VGG-BN, ``layers[k]`` convolutions in stage ``k``; the named variants fix them."""

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_vgg_arguments)
    #: Module paths whose outputs are feature maps (see the module docstring).
    feature_taps = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        layers: Sequence[int] = LAYERS_PER_STAGE["S"],
    ) -> None:
        super().__init__()
        counts = check_vgg_arguments(num_classes, in_channels, layers)
        width = in_channels
        for k, (planes, convs) in enumerate(zip(WIDTHS, counts, strict=True)):
            self.add_module(f"layer{k + 1}", _stage(width, planes, convs, k in POOLED_STAGES))
            width = planes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        for k in range(len(WIDTHS)):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.fc(self.pool(x).flatten(1))


VGG8 = preset(
    VGG, "VGG8", "vgg8: one convolution per stage (a common student).", layers=LAYERS_PER_STAGE["S"]
)


VGG11 = preset(VGG, "VGG11", "vgg11: configuration A.", layers=LAYERS_PER_STAGE["A"])


VGG13 = preset(
    VGG, "VGG13", "vgg13: configuration B (the usual VGG teacher).", layers=LAYERS_PER_STAGE["B"]
)


VGG16 = preset(VGG, "VGG16", "vgg16: configuration D.", layers=LAYERS_PER_STAGE["D"])


VGG19 = preset(VGG, "VGG19", "vgg19: configuration E.", layers=LAYERS_PER_STAGE["E"])


__all__ = ["LAYERS_PER_STAGE", "VGG", "VGG8", "VGG11", "VGG13", "VGG16", "VGG19"]
