"""The network of Allen-Zhu & Li (2020, §4): one convolution over patches with a smoothed ReLU.

F_i(X) = Σ_{r ∈ [m]} Σ_{p ∈ [P]} ReLU~(⟨w_{i,r}, x_p⟩) for each class i: m neurons per class, the
same weights applied to every patch (a convolution whose kernel is one patch), outputs summed
over patches and neurons — no bias, no second layer. The smoothed ReLU (their eq. 4.1)

    ReLU~(z) = 0 for z ≤ 0,  z^q / (q·ϱ^{q−1}) for 0 ≤ z ≤ ϱ,  z − (1 − 1/q)·ϱ for z ≥ ϱ

is continuous with a continuous derivative; its polynomial part is what makes training a
"lottery": the feature whose initial correlation is largest grows fastest (∝ z^{q−1}) and wins.
The small Gaussian initialisation (``init_std``) is part of the construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError


def smoothed_relu(z: Tensor, power: int = 3, threshold: float = 1.0) -> Tensor:
    """ReLU~ with exponent q = ``power`` and knee ϱ = ``threshold``."""
    inside = z.clamp(0.0, threshold)
    polynomial = inside.pow(power) / (power * threshold ** (power - 1))
    linear = z - (1.0 - 1.0 / power) * threshold
    return torch.where(z >= threshold, linear, polynomial)


class PatchNet(nn.Module):
    """Inputs ``[batch, patches, dim]`` (or ``[batch, 1, patches, dim]``) → class logits."""

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] | None = None,
        neurons: int = 4,
        power: int = 3,
        threshold: float = 1.0,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        if not input_shape:
            raise ConfigError("patchnet needs input_shape [1, patches, dim] (kdlab fills it in)")
        dim = int(input_shape[-1])
        if neurons < 1 or power < 2 or threshold <= 0 or init_std <= 0:
            raise ConfigError(
                f"patchnet needs neurons ≥ 1, power ≥ 2, threshold > 0 and init_std > 0, got "
                f"neurons={neurons}, power={power}, threshold={threshold}, init_std={init_std}"
            )
        self.num_classes, self.neurons = int(num_classes), int(neurons)
        self.power, self.threshold = int(power), float(threshold)
        self.weight = nn.Parameter(torch.randn(num_classes * neurons, dim) * init_std)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # images [B, 1, P, d]
            x = x.squeeze(1)
        activations = smoothed_relu(x @ self.weight.T, self.power, self.threshold)
        per_neuron = activations.sum(1)  # over patches: [B, classes·neurons]
        return per_neuron.view(len(x), self.num_classes, self.neurons).sum(2)


__all__ = ["PatchNet", "smoothed_relu"]
