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
resized (parameter-free): by default the student's map is resized to the teacher's (pooled when
larger, bilinear when smaller); ``at`` with ``resize: pool_larger`` instead adaptive-average-pools
whichever map is larger down to the smaller one's size, as RepDistiller's and mdistiller's
``at_loss`` do (they pool the features before forming Q). The two agree when the student's map is
the larger; when it is the smaller, pool_larger compares at the student's resolution. Channel
attention needs equal channel counts: ``adapter: auto`` adds a 1×1 convolution on the student
side.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.connectors import Match, Resize
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput


def attention_map(a: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis' Q: Σ_c |A_c|^p flattened per sample and L2-normalised."""
    return F.normalize(flat(a.abs().pow(p).sum(1)), dim=1, eps=1e-12)


RESIZE = ("student", "pool_larger")


def same_size(f_s: Tensor, f_t: Tensor, resize: str = "student") -> tuple[Tensor, Tensor]:
    """Maps [B, C, H, W] brought to one spatial size: ``student`` resizes the student's to the
    teacher's (see connectors.Resize); ``pool_larger`` adaptive-average-pools each axis of the
    larger map down to the smaller's (RepDistiller's at_loss)."""
    if resize not in RESIZE:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE)}, got {resize!r}")
    if f_s.shape[-2:] == f_t.shape[-2:]:
        return f_s, f_t
    if resize == "student":
        return Resize(f_t.shape[-2:])(f_s), f_t
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    pool = [x if x.shape[-2:] == size else F.adaptive_avg_pool2d(x, size) for x in (f_s, f_t)]
    return pool[0], pool[1]


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0, resize: str = "student") -> Tensor:
    """Attention transfer on maps [B, C, H, W]: mean_{b, j} (Q_S − Q_T)², Q = attention_map."""
    f_s, f_t = same_size(f_s, f_t, resize)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_term
class AttentionTransfer(FeatureTerm):
    """mean_{b, j} (Q_S[b, j] − Q_T[b, j])² with Q = attention_map(A, p).

    Normalisation and reduction follow the authors' code (``at_loss`` in
    szagoruyko/attention-transfer: ``(at(x) − at(y)).pow(2).mean()``), where the sum over channels
    is a mean — the same after L2 normalisation. The paper writes the unsquared p-norm of the
    difference with a factor β/2 (β = 1000): set ``weight`` ≈ 500 to match the code's scale.
    RepDistiller's AT uses this same value per pair (summed over pairs) with β = 1000, so its
    weight carries over: ``weight: 1000``. ``resize``: see the module docstring.
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
        resize: str = "student",
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if not p > 0:
            raise ConfigError(f"p must be > 0, got {p}")
        if resize not in RESIZE:
            raise ConfigError(
                f"resize must be one of {', '.join(RESIZE)} (pool_larger: pool the larger map "
                f"down, as RepDistiller), got {resize!r}"
            )
        self.p, self.resize = float(p), resize

    def adapter_match(self) -> Match:
        # pool_larger may shrink the teacher's map, so the adapter must not resize the student's
        return "batch" if self.resize == "pool_larger" else self.match

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return at_loss(s, t, self.p, self.resize)


def attention_mask(g: Tensor, temperature: float) -> Tensor:
    """n·softmax(G/τ) over G's n entries per sample: ×n keeps the mean at 1, so the mask scales
    features without shrinking them."""
    return g.shape[1] * torch.softmax(g / temperature, dim=1)


def attention_descriptor(a: Tensor, axes: tuple[int, ...], temperature: float | None) -> Tensor:
    """Zhang & Ma's G (|A| averaged over ``axes``, flattened) or its mask n·softmax(G/τ)."""
    g = flat(a.abs().mean(axes))
    return g if temperature is None else attention_mask(g, temperature)


def attention_distance(
    f_s: Tensor, f_t: Tensor, axes: tuple[int, ...], temperature: float | None, distance: str
) -> Tensor:
    """Mean L1 (``l1``) or squared (``l2``) distance of the two maps' attention descriptors."""
    diff = attention_descriptor(f_s, axes, temperature) - attention_descriptor(
        f_t, axes, temperature
    )
    # mean over batch and entries: the value does not grow with the map's size
    return diff.abs().mean() if distance == "l1" else diff.pow(2).mean()


def spatial_attention_loss(
    f_s: Tensor, f_t: Tensor, temperature: float | None = 0.5, distance: str = "l1"
) -> Tensor:
    """Zhang & Ma's spatial attention loss on maps of equal spatial size."""
    return attention_distance(f_s, f_t, (1,), temperature, distance)


def channel_attention_loss(
    f_s: Tensor, f_t: Tensor, temperature: float | None = 0.5, distance: str = "l1"
) -> Tensor:
    """Zhang & Ma's channel attention loss on maps with equal channel counts."""
    return attention_distance(f_s, f_t, (2, 3), temperature, distance)


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
        return attention_descriptor(a, self.reduce_axes, self.temperature)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return attention_distance(s, t, self.reduce_axes, self.temperature, self.distance)


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


def attention_masks(f_s: Tensor, f_t: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(M^S [B, 1, H, W], M^C [B, C, 1, 1]) from both models' attention."""
    b, c, h, w = f_t.shape
    g_spatial = f_s.abs().mean(1) + f_t.abs().mean(1)  # G^S(A^S) + G^S(A^T)
    g_channel = f_s.abs().mean((2, 3)) + f_t.abs().mean((2, 3))  # G^C(A^S) + G^C(A^T)
    m_spatial = attention_mask(flat(g_spatial), temperature)
    m_channel = attention_mask(g_channel, temperature)
    return m_spatial.view(b, 1, h, w), m_channel.view(b, c, 1, 1)


def attention_feature_loss(
    f_s: Tensor, f_t: Tensor, temperature: float = 0.5, detach_masks: bool = True
) -> Tensor:
    """Zhang & Ma's attention-guided feature loss on (adapted) maps of equal shape."""
    m_spatial, m_channel = attention_masks(f_s.detach() if detach_masks else f_s, f_t, temperature)
    weighted = (f_t - f_s).pow(2) * m_spatial * m_channel
    return flat(weighted).mean(1).mean()


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
        return attention_masks(s, t, self.temperature)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return attention_feature_loss(s, t, self.temperature, self.detach_masks)
