"""A small convolutional classifier for 8×8 to 32×32 images."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.models.mlp import check_parameters, check_rate, check_size, check_sizes


def check_cnn_arguments(
    in_channels: Any = 1,
    num_classes: Any = 10,
    channels: Any = (32, 64),
    hidden: Any = 128,
    dropout: Any = 0.0,
    input_shape: Any = None,
) -> list[int]:
    """Check :class:`SmallCNN`'s arguments; returns the image's (height, width)."""
    check_size("in_channels", in_channels)
    check_size("num_classes", num_classes)
    if not check_sizes("channels", channels, "[32, 64]"):
        raise ConfigError("channels must list at least one convolution width, e.g. [32, 64]")
    check_size("hidden", hidden)
    check_rate("dropout", dropout)
    if input_shape is None:
        return [28, 28]
    shape = check_sizes("input_shape", input_shape, "[1, 28, 28]")
    if len(shape) not in (2, 3):
        raise ConfigError(
            f"SmallCNN needs image inputs [channels, height, width], got inputs of shape "
            f"{quote(input_shape)}; load the data without flatten (data.flatten: false)"
        )
    return shape[-2:]


class SmallCNN(nn.Module):
    """[Conv3×3 → BatchNorm → ReLU → MaxPool2] per entry of ``channels``, then a small MLP head.

    Blocks are ``features.0``, ``features.1``, …; the head is ``head`` (paths for feature taps).
    Pooling is skipped once the map is 2×2 or smaller, so 8×8 digits work as well as 32×32 CIFAR.
    """

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_cnn_arguments)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        size = check_cnn_arguments(in_channels, num_classes, channels, hidden, dropout, input_shape)
        _check_count(in_channels, num_classes, list(channels), hidden, size)
        blocks: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers: list[nn.Module] = [
                nn.Conv2d(width, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            if min(size) > 2:
                layers.append(nn.MaxPool2d(2))
                size = [s // 2 for s in size]
            blocks.append(nn.Sequential(*layers))
            width = c
        self.features = nn.Sequential(*blocks)
        flat = width * size[0] * size[1]
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # [B, H, W] grayscale without channel axis
            x = x.unsqueeze(1)
        if x.dim() != 4:
            raise ValueError(
                f"SmallCNN expects images [batch, channels, height, width], got {tuple(x.shape)}; "
                "load the data without flatten=True"
            )
        return self.head(self.features(x))


def _check_count(
    in_channels: int, num_classes: int, channels: list[int], hidden: int, size: list[int]
) -> None:
    widths, count = [in_channels, *channels], 0
    for c_in, c_out in itertools.pairwise(widths):  # conv 3×3 and BatchNorm
        count += 9 * c_in * c_out + 2 * c_out
        size = [s // 2 for s in size] if min(size) > 2 else size
    count += (widths[-1] * size[0] * size[1] + 1) * hidden + (hidden + 1) * num_classes
    check_parameters(f"SmallCNN (channels {channels}, hidden {hidden})", count,
                     "use fewer channels or a smaller hidden layer")  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["SmallCNN", "check_cnn_arguments", "count_parameters"]
