"""Connectors: trainable adapters that map a student feature to the shape of a teacher feature.

A feature term compares a student feature with a teacher feature; when their shapes differ, an
adapter (FitNets' "regressor") sits on the student side: a linear layer for vectors
``[batch, features]``, a 1×1 convolution (optionally + BatchNorm) for maps
``[batch, channels, height, width]``, and a parameter-free spatial resize when the map sizes
differ. ``adapter: regressor`` builds RepDistiller's / mdistiller's hint regressor instead
(see :func:`regressor`): convolution → BatchNorm → ReLU, the convolution's stride or
transposition changing the map's size. Adapters belong to the loss term, not to the student: they
are trained with the student (the scheme's optimizer sees the objective's parameters), saved in
its checkpoints, and absent from the exported student (``model.pt`` holds the student's weights
only).

What "differ" means depends on the term (its ``match``): a FitNets hint compares whole
tensors, attention transfer only needs equal spatial sizes (it sums over channels), channel
attention only equal channel counts, and relation losses only compare batch×batch matrices, so
for them no adapter is needed at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError

ADAPTERS = ("none", "auto", "linear", "conv", "regressor")
#: Which per-sample axes of the (adapted) student feature must equal the teacher's.
Match = Literal["all", "channels", "spatial", "batch"]
MATCH_TEXT = {
    "all": "the whole shape",
    "channels": "the channel (first) axis",
    "spatial": "the spatial axes (after the channel axis)",
    "batch": "only the batch size",
}


def check_adapter(adapter: str) -> str:
    if adapter not in ADAPTERS:
        raise ConfigError(
            f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r} "
            "(auto: build what the loss needs; none: shapes must already fit; regressor: "
            "RepDistiller's conv → BatchNorm → ReLU)"
        )
    return adapter


def shapes_fit(student: Sequence[int], teacher: Sequence[int], match: Match) -> bool:
    """Whether per-sample shapes (no batch axis) are compatible for a term with ``match``."""
    s, t = tuple(student), tuple(teacher)
    if match == "batch":
        return True
    if match == "all":
        return s == t
    if len(s) != len(t) or not s:
        return False
    return s[0] == t[0] if match == "channels" else s[1:] == t[1:]


class Resize(nn.Module):
    """Parameter-free spatial resize of ``[B, C, H, W]`` maps to a fixed ``(H, W)``.

    Shrinking uses adaptive average pooling (every input pixel contributes, like the "area"
    mode); growing uses bilinear interpolation.
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h >= self.size[0] and w >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Connector(nn.Sequential):
    """The adapter of one term: [projection] → [resize]; empty means identity."""


def build_connector(
    adapter: str,
    student: Sequence[int],
    teacher: Sequence[int],
    match: Match,
    *,
    batch_norm: bool = False,
    where: str = "",
) -> Connector:
    """An adapter from per-sample shape ``student`` to ``teacher`` for a term with ``match``.

    ``where`` prefixes error messages (which term, which taps). Raises ConfigError when the
    shapes cannot be adapted, naming both shapes and what would fix it.
    """
    s, t = tuple(student), tuple(teacher)
    check_adapter(adapter)
    what = f"student feature {s} and teacher feature {t} (per sample, batch axis left out)"
    if adapter == "none":
        if not shapes_fit(s, t, match):
            raise ConfigError(
                f"{where}{what} differ in {MATCH_TEXT[match]}, which this loss compares, and "
                "adapter is 'none'; use adapter: auto (a trainable linear/1×1-conv adapter and "
                "a resize as needed) or tap modules whose outputs have the same shape"
            )
        return Connector()
    if adapter == "linear":
        if len(s) != 1 or len(t) != 1:
            raise ConfigError(
                f"{where}adapter 'linear' maps vectors [batch, features], but got {what}; "
                "use adapter: conv for maps [batch, channels, height, width]"
            )
        return Connector(nn.Linear(s[0], t[0]))
    if adapter == "regressor":
        return regressor(s, t, where=where)
    if adapter == "conv":
        if len(s) != 3 or len(t) != 3:
            raise ConfigError(
                f"{where}adapter 'conv' maps [batch, channels, height, width] maps, but got "
                f"{what}; use adapter: linear for vectors"
            )
        layers = _conv(s[0], t[0], batch_norm)
        if s[1:] != t[1:]:
            layers.append(Resize(t[1:]))
        return Connector(*layers)
    # auto: the least that makes the compared axes agree.
    if shapes_fit(s, t, match):
        return Connector()
    if len(s) == len(t) == 1:
        return Connector(nn.Linear(s[0], t[0]))
    if len(s) == len(t) == 3:
        layers = []
        if match in ("all", "channels") and s[0] != t[0]:
            layers += _conv(s[0], t[0], batch_norm)
        if match in ("all", "spatial") and s[1:] != t[1:]:
            layers.append(Resize(t[1:]))
        return Connector(*layers)
    raise ConfigError(
        f"{where}no automatic adapter from {what}: adapters map vectors to vectors (linear) and "
        "[C, H, W] maps to maps (1×1 conv + resize); tap modules with outputs of matching rank"
    )


def regressor(student: Sequence[int], teacher: Sequence[int], *, where: str = "") -> Connector:
    """RepDistiller's / mdistiller's hint regressor (``ConvReg``) from ``student`` to ``teacher``.

    Maps ``[C, H, W]``: a convolution to the teacher's channels, then BatchNorm and ReLU. Its form
    follows the ratio of the map sizes, as in the peers: equal sizes → 1×1 convolution (their
    kernel is 1 + H_S − H_T); student twice the teacher → 3×3 convolution, stride 2, padding 1;
    student half the teacher → 4×4 transposed convolution, stride 2, padding 1; any other larger
    student → an unpadded convolution of kernel (1 + H_S − H_T, 1 + W_S − W_T). A smaller student
    that is not half the teacher has no regressor (ConfigError). Vectors ``[features]``: linear →
    BatchNorm → ReLU, the same block one rank down. The ReLU means the regressor cannot output
    negative values: tap post-activation teacher features (as the peers do) or use ``conv``.
    """
    s, t = tuple(student), tuple(teacher)
    if len(s) == len(t) == 1:
        return Connector(nn.Linear(s[0], t[0], bias=False), nn.BatchNorm1d(t[0]), nn.ReLU())
    if not len(s) == len(t) == 3:
        raise ConfigError(
            f"{where}adapter 'regressor' maps [C, H, W] maps to maps or vectors to vectors, but "
            f"got student feature {s} and teacher feature {t}; tap modules with outputs of "
            "matching rank"
        )
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s, t
    conv: nn.Module
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1, bias=False)
    elif (2 * h_s, 2 * w_s) == (h_t, w_t):
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1, bias=False)
    elif h_s >= h_t and w_s >= w_t:  # equal sizes: a 1×1 convolution
        conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t), bias=False)
    else:
        raise ConfigError(
            f"{where}adapter 'regressor' maps a student map of size {h_s}×{w_s} to a teacher "
            f"map of {h_t}×{w_t} (student {s}, teacher {t}) only when the student's is at least "
            "as large or exactly half; use adapter: conv (1×1 conv + resize) or auto, or tap "
            "layers whose map sizes are equal, double or half"
        )
    # bias-free: the BatchNorm that follows has its own shift
    return Connector(conv, nn.BatchNorm2d(c_t), nn.ReLU())


def _conv(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(c_out)] if batch_norm else [conv]


__all__ = [
    "ADAPTERS",
    "Connector",
    "Match",
    "Resize",
    "build_connector",
    "check_adapter",
    "regressor",
    "shapes_fit",
]
