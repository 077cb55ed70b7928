"""Fully connected classifier (Hinton's 784-1200-1200-10 teacher is ``MLP(784, [1200, 1200])``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Flatten → [Linear → activation → dropout] × len(hidden) → Linear to ``num_classes`` logits.

    Hidden layers live in ``features`` (paths ``features.0``, ``features.1``, … for feature taps);
    the output layer is ``head``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 256),
        num_classes: int = 10,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not 0 <= dropout < 1 or not 0 <= input_dropout < 1:
            raise ValueError(f"dropout rates must be in [0, 1), got {dropout}, {input_dropout}")
        if in_features < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"layer sizes must be ≥ 1: in_features={in_features}, hidden={list(hidden)}, "
                f"num_classes={num_classes}"
            )
        self.in_features, self.num_classes = in_features, num_classes
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        blocks: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers: list[nn.Module] = [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.input_dropout(x.flatten(1))))
