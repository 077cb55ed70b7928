"""Fully connected classifier (Hinton's 784-1200-1200-10 teacher is ``MLP(784, [1200, 1200])``).

Also the argument checks the built-in models share: every bad size, rate or name is a
ConfigError naming the argument and what it must be, raised before any tensor is allocated.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError, quote

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
#: Most parameters a built-in model may have (1 GiB of float32 weights, ten times a large CIFAR
#: MLP): a larger one is a typo, such as ``hidden: [100000]``, that would take minutes and
#: gigabytes to build before training even starts.
MAX_PARAMETERS = 2**28


def check_size(name: str, value: Any) -> int:
    """``value`` as a positive integer (a layer width, a class count), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {quote(value)}")
    return int(value)


def check_sizes(name: str, value: Any, example: str = "[64, 32]") -> list[int]:
    """``value`` as a list of positive integers (layer widths), or a ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, range)):
        raise ConfigError(
            f"{name} must be a list of layer sizes (positive integers) like {example}, "
            f"got {quote(value)}"
        )
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, Integral) or v < 1]
    if bad:
        raise ConfigError(
            f"{name} must hold positive integers like {example}, but it holds {quote(bad[0])} "
            f"({name} = {quote(value)})"
        )
    return [int(v) for v in value]


def check_rate(name: str, value: Any) -> float:
    """``value`` as a dropout probability in [0, 1), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), e.g. 0.2, got {quote(value)}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {quote(value)}")
    return value


def check_parameters(model: str, count: int, hint: str) -> None:
    """Refuse a model with more than ``MAX_PARAMETERS`` parameters before it is allocated."""
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"{model} would have {count:,} parameters, over the {MAX_PARAMETERS:,} (1 GiB of "
            f"weights) a built-in model may have; {hint}"
        )


def check_mlp_arguments(
    in_features: Any = None,
    hidden: Any = (256, 256),
    num_classes: Any = None,
    dropout: Any = 0.0,
    input_dropout: Any = 0.0,
    activation: Any = "relu",
) -> list[int]:
    """Check :class:`MLP`'s arguments (those not known yet, None); returns every layer width."""
    widths = [
        *([check_size("in_features", in_features)] if in_features is not None else []),
        *check_sizes("hidden", hidden),
        *([check_size("num_classes", num_classes)] if num_classes is not None else []),
    ]
    check_rate("dropout", dropout)
    check_rate("input_dropout", input_dropout)
    check_choice("activation", activation, list(ACTIVATIONS))
    count = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    check_parameters(f"MLP {widths}", count, "use smaller hidden layers")
    return widths


class MLP(nn.Module):
    """Flatten → [Linear → activation → dropout] × len(hidden) → Linear to ``num_classes`` logits.

    Hidden layers live in ``features`` (paths ``features.0``, ``features.1``, … for feature taps);
    the output layer is ``head``. ``hidden: []`` is a linear model.
    """

    #: Checks the arguments a config gives, before the data fill in the rest.
    check_arguments = staticmethod(check_mlp_arguments)

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
        widths = check_mlp_arguments(
            in_features, hidden, num_classes, dropout, input_dropout, activation
        )
        self.in_features, self.num_classes = widths[0], widths[-1]
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        blocks: list[nn.Module] = []
        width = widths[0]
        for size in widths[1:-1]:
            layers: list[nn.Module] = [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, widths[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.input_dropout(x.flatten(1))))


__all__ = ["ACTIVATIONS", "MAX_PARAMETERS", "MLP", "check_mlp_arguments"]
