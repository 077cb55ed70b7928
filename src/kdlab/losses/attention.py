"""Attention-based feature terms: where a network looks, not what its features are.

- ``at`` — attention transfer (Zagoruyko & Komodakis 2017): Q = vec(Σ_c |A_c|^p), L2-normalised
  per sample; loss = mean over batch and positions of (Q_S − Q_T)².
- ``spatial_attention`` / ``channel_attention`` — seed 001 §3.2 (Zhang & Ma 2021):
  G^S(A) = (1/C)·Σ_c |A_c| (one value per position), G^C(A) = (1/HW)·Σ_ij |A_·ij| (one per
  channel), turned into attention masks HW·softmax(G^S/τ) and C·softmax(G^C/τ) and compared
  with an L1 (default, as in the paper) or squared distance.
- ``attention_feature`` — Zhang & Ma's attention-guided feature loss: squared feature differences
  weighted by the spatial and channel masks of teacher and student together,
  Σ_kij (A^T_kij − f(A^S)_kij)² · M^S_ij · M^C_k with M^S = HW·softmax((G^S(A^S) + G^S(A^T))/τ)
  and M^C = C·softmax((G^C(A^S) + G^C(A^T))/τ), so the student copies most where either looks.

Feature maps are ``[batch, channels, height, width]``. AT and spatial attention sum over
channels, so the channel counts may differ (no adapter needed); differing spatial sizes are
resized (parameter-free). Channel attention needs equal channel counts: ``adapter: auto`` adds a
1×1 convolution on the student side.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput


def attention_map(a: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis' Q: Σ_c |A_c|^p flattened per sample and L2-normalised."""
    return F.normalize(flat(a.abs().pow(p).sum(1)), dim=1, eps=1e-12)


@register_term
class AttentionTransfer(FeatureTerm):
    """mean_{b, j} (Q_S[b, j] − Q_T[b, j])² with Q = attention_map(A, p).

    Normalisation and reduction follow the authors' code (``at_loss`` in
    szagoruyko/attention-transfer: ``(at(x) − at(y)).pow(2).mean()``), where the sum over channels
    is a mean — the same after L2 normalisation. The paper writes the unsquared p-norm of the
    difference with a factor β/2 (β = 1000): set ``weight`` ≈ 500 to match the code's scale.
    """

    kind = "at"
    match = "spatial"
    ranks = (3,)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        p: float = 2.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if not p > 0:
            raise ConfigError(f"p must be > 0, got {p}")
        self.p = float(p)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()


def attention_mask(g: Tensor, temperature: float) -> Tensor:
    """n·softmax(G/τ) over G's n entries per sample: ×n keeps the mean at 1, so the mask scales
    features without shrinking them."""
    return g.shape[1] * torch.softmax(g / temperature, dim=1)


class _AttentionMask(FeatureTerm):
    """Zhang & Ma's masks: compare n·softmax(G/τ) (or G itself when τ is null)."""

    ranks = (3,)
    #: Axes averaged away to form G: channels for spatial attention, positions for channel.
    reduce_axes: ClassVar[tuple[int, ...]] = ()

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        temperature: float | None = 0.5,
        distance: str = "l1",
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if temperature is not None and not temperature > 0:
            raise ConfigError(f"temperature must be > 0 or null (raw G), got {temperature}")
        if distance not in ("l1", "l2"):
            raise ConfigError(f"distance must be 'l1' or 'l2', got {distance!r}")
        self.temperature = None if temperature is None else float(temperature)
        self.distance = distance

    def attention(self, a: Tensor) -> Tensor:
        """G^S [B, H·W] or G^C [B, C]; as a mask n·softmax(G/τ) when τ is set."""
        g = flat(a.abs().mean(self.reduce_axes))
        return g if self.temperature is None else attention_mask(g, self.temperature)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        diff = self.attention(s) - self.attention(t)
        # mean over batch and entries: the value does not grow with the map's size
        return diff.abs().mean() if self.distance == "l1" else diff.pow(2).mean()


@register_term
class SpatialAttention(_AttentionMask):
    """G^S(A) = (1/C)·Σ_c |A_c| per position; mask H·W·softmax(G^S/τ); L1 (or L2) distance.

    ``temperature`` 0.5 is the paper's τ (its code uses 0.1); ``null`` compares G^S itself.
    """

    kind = "spatial_attention"
    match = "spatial"
    reduce_axes = (1,)


@register_term
class ChannelAttention(_AttentionMask):
    """G^C(A) = (1/HW)·Σ_ij |A_·ij| per channel; mask C·softmax(G^C/τ); L1 (or L2) distance."""

    kind = "channel_attention"
    match = "channels"
    reduce_axes = (2, 3)


@register_term
class AttentionFeature(FeatureTerm):
    """Attention-guided feature imitation (Zhang & Ma 2021), f the adapter (1×1 conv if needed).

    Per sample the weighted squared error Σ_kij (A^T − f(A^S))²_kij · M^S_ij · M^C_k is divided by
    C·H·W — the masks average 1, so this is a weighted mean squared error whose scale does not
    depend on the map's size (the paper sums: multiply ``weight`` by C·H·W to match) — then
    averaged over the batch. ``detach_masks`` (default) makes the masks fixed weights, so the
    student cannot lower the loss by moving its attention away from its errors.
    """

    kind = "attention_feature"
    match = "all"
    ranks = (3,)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        temperature: float = 0.5,
        detach_masks: bool = True,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.detach_masks = float(temperature), bool(detach_masks)

    def masks(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(M^S [B, 1, H, W], M^C [B, C, 1, 1]) from both models' attention."""
        b, c, h, w = t.shape
        g_spatial = s.abs().mean(1) + t.abs().mean(1)  # G^S(A^S) + G^S(A^T)
        g_channel = s.abs().mean((2, 3)) + t.abs().mean((2, 3))  # G^C(A^S) + G^C(A^T)
        m_spatial = attention_mask(flat(g_spatial), self.temperature)
        m_channel = attention_mask(g_channel, self.temperature)
        return m_spatial.view(b, 1, h, w), m_channel.view(b, c, 1, 1)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        m_spatial, m_channel = self.masks(s.detach() if self.detach_masks else s, t)
        weighted = (t - s).pow(2) * m_spatial * m_channel
        return flat(weighted).mean(1).mean()
