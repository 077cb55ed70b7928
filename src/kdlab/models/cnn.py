"""A small convolutional classifier for 8×8 to 32×32 images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """[Conv3×3 → BatchNorm → ReLU → MaxPool2] per entry of ``channels``, then a small MLP head.

    Blocks are ``features.0``, ``features.1``, …; the head is ``head`` (paths for feature taps).
    Pooling is skipped once the map is 2×2 or smaller, so 8×8 digits work as well as 32×32 CIFAR.
    """

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
        if not channels or any(c < 1 for c in channels) or hidden < 1:
            raise ValueError(f"channels and hidden must be ≥ 1, got {list(channels)}, {hidden}")
        size = list(input_shape[-2:]) if input_shape is not None else [28, 28]
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["SmallCNN", "count_parameters"]
