"""Variational information distillation (Ahn et al., CVPR 2019): −log q(t | s).

The teacher feature t is modelled by a Gaussian whose mean μ(s) is a small regressor on the
student feature and whose variance is one learned value per teacher channel:

    σ_c² = softplus(α_c) + ε,
    −log q(t | s) = Σ_c Σ_positions [ log σ_c + (t_c − μ_c(s))² / (2σ_c²) ] + const.

The constant ½·log 2π per element is dropped (it has no gradient). μ is, as in the paper, three
1×1 convolutions with ReLUs between them for [C, H, W] maps (three linear layers for vectors),
``hidden`` wide (default: the teacher's channel count); when the maps' spatial sizes differ the
student map is resized to the teacher's first (parameter-free; the authors' code pools whichever
map is larger). kdlab's layers have biases, the authors' 1×1 convolutions have none.
α starts where σ_c² = ``init_variance`` (5 in the authors' code; ε = 1e-5).

Normalisation (``reduction``):

- ``channels`` (default, kdlab's choice): Σ over channels, mean over batch and positions — the
  per-position negative log-likelihood of the teacher's whole channel vector, so the value does
  not grow with the map's size but keeps the paper's per-channel sum.
- ``mean``: mean over every element — what the authors' code
  (ssahn0215/variational-information-distillation, reused in RepDistiller) computes:
  ``mean(½·((μ − t)²/σ² + log σ²))`` = ``channels`` / C.
- ``batchmean``: Σ over channels and positions, mean over the batch — the paper's sum over the
  whole feature (its Eq. for −log q summed over C, H, W), averaged over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.connectors import Connector, Resize
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("channels", "mean", "batchmean")


def vid_loss(
    mean: Tensor,
    teacher: Tensor,
    alpha: Tensor,
    *,
    eps: float = 1e-5,
    reduction: str = "channels",
) -> Tensor:
    """−log q(t | s) without ½·log 2π: ``mean`` = μ(s) and ``teacher`` = t, both [B, C, ...];
    ``alpha`` [C] gives σ_c² = softplus(α_c) + eps. ``reduction`` as in the module docstring."""
    check_reduction(reduction, REDUCTIONS)
    variance = (F.softplus(alpha) + eps).view(1, -1, *([1] * (teacher.dim() - 2)))
    nll = 0.5 * torch.log(variance) + (teacher - mean).pow(2) / (2 * variance)
    if reduction == "mean":
        return nll.mean()
    if reduction == "channels":
        return nll.sum(1).mean()
    return flat(nll).sum(1).mean()


def alpha_for_variance(variance: float, eps: float) -> float:
    """The α with softplus(α) + eps = variance (inverse softplus)."""
    target = variance - eps
    return target + math.log(-math.expm1(-target))


def _regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...], hidden: int) -> Connector:
    """μ(s): three 1×1 convolutions (or linear layers) with ReLUs between them."""
    widths = list(zip((s_shape[0], hidden, hidden), (hidden, hidden, t_shape[0]), strict=True))
    if len(s_shape) == 1:
        layers: list[nn.Module] = [nn.Linear(a, b) for a, b in widths]
    else:
        layers = [nn.Conv2d(a, b, kernel_size=1) for a, b in widths]
    body: list[nn.Module] = [layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2]]
    if len(s_shape) == 3 and s_shape[1:] != t_shape[1:]:
        body.insert(0, Resize(t_shape[1:]))
    return Connector(*body)


@register_term
class VID(FeatureTerm):
    """VID: Gaussian −log-likelihood of the teacher feature given the student's (see module)."""

    kind = "vid"
    match = "all"
    ranks = (1, 3)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        hidden: int | None = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        reduction: str = "channels",
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, "auto", False, name)
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int)
                                   or hidden < 1):  # fmt: skip
            raise ConfigError(
                f"hidden must be a positive integer (the regressor's width) or null for the "
                f"teacher's channel count, got {hidden!r}"
            )
        if not eps > 0:
            raise ConfigError(f"eps must be > 0 (the smallest variance), got {eps}")
        if not init_variance > eps:
            raise ConfigError(
                f"init_variance must be > eps ({eps}), got {init_variance}; the paper's code "
                "starts at 5.0"
            )
        check_reduction(reduction, REDUCTIONS)
        self.hidden, self.eps, self.reduction = hidden, float(eps), reduction
        self.init_variance = float(init_variance)
        self.alpha: nn.Parameter | None
        self.register_parameter("alpha", None)  # built with the regressor, in prepare

    def _build(self, s: Tensor, t: Tensor) -> Connector:
        s_shape, t_shape = tuple(s.shape[1:]), tuple(t.shape[1:])
        if len(s_shape) not in self.ranks or len(s_shape) != len(t_shape):
            raise ConfigError(
                f"{self._where()}VID needs two [channels, height, width] maps or two vectors, got "
                f"student {s_shape} and teacher {t_shape}; tap modules whose outputs have the "
                "same rank"
            )
        regressor = _regressor(s_shape, t_shape, self.hidden or t_shape[0])
        self.connector = regressor.to(device=s.device, dtype=s.dtype)
        self._built_for = (s_shape, t_shape)
        start = alpha_for_variance(self.init_variance, self.eps)
        self.alpha = nn.Parameter(torch.full((t_shape[0],), start, device=s.device, dtype=s.dtype))
        return self.connector

    def variance(self) -> Tensor:
        """σ_c² per teacher channel."""
        if self.alpha is None:
            raise ConfigError(f"{self._where()}call prepare() before reading the variance")
        return F.softplus(self.alpha) + self.eps

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        mean, t = self.features(student, teacher)
        assert self.alpha is not None  # built with the regressor
        return vid_loss(mean, t, self.alpha, eps=self.eps, reduction=self.reduction)
