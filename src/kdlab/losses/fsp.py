"""Flow of solution procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning").

For two layers of the SAME model with maps F¹ [C₁, H, W] and F² [C₂, H, W], the FSP matrix is

    G_ij = Σ_{s,t} F¹_{s,t,i} · F²_{s,t,j} / (H·W),   i.e. G = F₁ᵀF₂ / (H·W) ∈ R^{C₁×C₂}

with F₁ [HW, C₁], F₂ [HW, C₂]. The loss compares the teacher's and the student's G for each
configured layer pair: L = mean over pairs of mean_b ‖G_T − G_S‖²_F. The paper writes
L = (1/N)·Σ_x Σ_i λ_i‖G_T,i − G_S,i‖²₂ with equal λ_i — the same up to the number of pairs
(multiply ``weight`` by it to match). ``reduction: mean`` divides each ‖·‖²_F by C₁·C₂ as
RepDistiller's code does (``(s − t).pow(2).mean()``), so the scale does not grow with the widths;
RepDistiller then sums over the pairs where kdlab averages, so its value is the number of pairs
times kdlab's (multiply ``weight`` by the pair count for its scale).

Spatial sizes: the paper pairs layers of equal size. When the two maps of a pair differ, the
larger one is adaptive-average-pooled to the smaller one's size first (what RepDistiller's code
does; it handles square maps only, kdlab pools height and width separately).

Channels: G_T and G_S must have the same C₁ × C₂. When the student's widths differ from the
teacher's, ``adapter: auto`` (default) puts a 1×1 convolution on each student map, to the width
of the teacher's map in the same position, trained with the student; ``adapter: none`` instead
requires equal widths and says which taps differ. (The paper's students have the teacher's
widths; with adapters the student may also match by choosing its 1×1 maps — use ``none`` with
equal-width taps for the paper's exact setting.)

Training: the paper trains the student on this loss alone first and on the main task
afterwards (RepDistiller does the same: FSP only initialises); use ``distill.stages`` for that,
or add the term to the task loss in one stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError
from kdlab.losses.base import Term, check_reduction, register_term
from kdlab.losses.connectors import build_connector, check_adapter
from kdlab.losses.feature import captured
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("batchmean", "mean")


class LayerListTerm(Term):
    """A term reading parallel lists of student and teacher maps [B, C, H, W] (several taps).

    Position i of the student's list is compared with position i of the teacher's; where their
    channel counts differ, ``adapter: auto`` gives that student map a 1×1 convolution to the
    teacher's width (built by ``prepare`` before the optimizer exists). Teacher maps are detached.
    """

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str],
        weight: float = 1.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.student_layers, self.teacher_layers = tuple(student_layers), tuple(teacher_layers)
        self.student_taps = tuple(dict.fromkeys(self.student_layers))
        self.teacher_taps = tuple(dict.fromkeys(self.teacher_layers))
        self.adapter = check_adapter(adapter)
        self.adapter_bn = bool(adapter_bn)
        self.connectors: nn.ModuleList | None = None
        self._built_for: list[tuple[tuple[int, ...], tuple[int, ...]]] | None = None

    def _where(self) -> str:
        return (
            f"loss term {self.name!r} ({self.kind}, student {list(self.student_layers)} → "
            f"teacher {list(self.teacher_layers)}): "
        )

    def _read(self, out: ModelOutput, path: str, role: str) -> Tensor:
        value = captured(out, path, role, self._where())
        if not isinstance(value, Tensor) or value.dim() != 4:
            what = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(
                f"{self._where()}the {role}'s module {path!r} outputs {what}; this loss needs "
                "maps [batch, channels, height, width]: tap convolutional blocks"
            )
        return at_least_float32(value)

    def raw_maps(
        self, student: ModelOutput, teacher: ModelOutput | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """(student maps, detached teacher maps) in the configured order, batch-checked."""
        t_out = self._teacher(teacher)
        s = [self._read(student, p, "student") for p in self.student_layers]
        t = [self._read(t_out, p, "teacher").detach() for p in self.teacher_layers]
        sizes = {x.shape[0] for x in s + t}
        if len(sizes) > 1:
            raise ConfigError(
                f"{self._where()}the tapped maps hold different batch sizes {sorted(sizes)}; "
                "both models must see the same inputs"
            )
        return s, t

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Build the per-layer adapters from one batch (call before building optimizers)."""
        self._build(*self.raw_maps(student, teacher))

    def _build(self, s: list[Tensor], t: list[Tensor]) -> nn.ModuleList:
        shapes = [(tuple(a.shape[1:]), tuple(b.shape[1:])) for a, b in zip(s, t, strict=True)]
        connectors = nn.ModuleList()
        for i, (s_shape, t_shape) in enumerate(shapes):
            where = (
                f"{self._where()}layer {i} (student {self.student_layers[i]!r}, teacher "
                f"{self.teacher_layers[i]!r}): "
            )
            connectors.append(
                build_connector(
                    self.adapter,
                    s_shape,
                    t_shape,
                    "channels",
                    batch_norm=self.adapter_bn,
                    where=where,
                )
            )
        self.connectors = connectors.to(device=s[0].device, dtype=s[0].dtype)
        self._built_for = shapes
        return self.connectors

    def features(
        self, student: ModelOutput, teacher: ModelOutput | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """(adapted student maps, detached teacher maps), widths equal position by position."""
        s, t = self.raw_maps(student, teacher)
        shapes = [(tuple(a.shape[1:]), tuple(b.shape[1:])) for a, b in zip(s, t, strict=True)]
        connectors = self.connectors
        if connectors is None:
            connectors = self._build([a.detach() for a in s], t)
            if any(True for _ in connectors.parameters()):
                self.connectors = None
                raise ConfigError(
                    f"{self._where()}the student's maps need trainable 1×1-conv adapters, which "
                    "must exist before the optimizer is built: call "
                    "kdlab.losses.feature.prepare_terms (kdlab's schemes do it in prepare())"
                )
        elif shapes != self._built_for:
            raise ConfigError(
                f"{self._where()}the adapters were built for maps {self._built_for} (student, "
                f"teacher), but this batch has {shapes}; inputs of one run must all have the "
                "same size"
            )
        adapted = [connector(a) for connector, a in zip(connectors, s, strict=True)]
        return adapted, [b.to(adapted[0].dtype) for b in t]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, student={list(self.student_layers)}, "
            f"teacher={list(self.teacher_layers)}, adapter={self.adapter}"
        )


def _is_path_pair(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(p, str) and p for p in value)
    )


def parse_layer_pairs(value: Any, role: str) -> list[tuple[str, str]]:
    """``[a, b]`` → [(a, b)]; ``[[a, b], [c, d], …]`` → [(a, b), (c, d), …]; else ConfigError."""
    if _is_path_pair(value):
        return [(value[0], value[1])]
    listed = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    if listed and all(_is_path_pair(v) for v in value):
        return [(v[0], v[1]) for v in value]
    raise ConfigError(
        f"loss 'fsp' needs the {role}'s two layers as `{role}: [first, second]` (module paths "
        "of one model, maps of equal size) or a list of such pairs, e.g. {type: fsp, student: "
        f"[features.0, features.1.2], teacher: [features.0, features.1.2]}}; got {value!r}"
    )


def _pool_to_common_size(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller one's height and width."""
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    if tuple(first.shape[2:]) != size:
        first = F.adaptive_avg_pool2d(first, size)
    if tuple(second.shape[2:]) != size:
        second = F.adaptive_avg_pool2d(second, size)
    return first, second


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """G = F₁ᵀF₂ / (H·W) [B, C₁, C₂] for maps [B, C₁, H, W] and [B, C₂, H, W] of one model.

    A map larger than the other is adaptive-average-pooled to the other's size first.
    """
    if first.dim() != 4 or second.dim() != 4 or first.shape[0] != second.shape[0]:
        raise ValueError(
            f"fsp_matrix needs two maps [batch, channels, height, width] of one batch, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    first, second = _pool_to_common_size(first, second)
    positions = first.shape[2] * first.shape[3]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / positions


def fsp_loss(
    student_pairs: Sequence[tuple[Tensor, Tensor]],
    teacher_pairs: Sequence[tuple[Tensor, Tensor]],
    *,
    reduction: str = "batchmean",
) -> Tensor:
    """Mean over pairs of mean_b ‖G_T − G_S‖²_F (``batchmean``) or of the mean squared entry of
    G_T − G_S (``mean``, RepDistiller's scale)."""
    check_reduction(reduction, REDUCTIONS)
    if len(student_pairs) != len(teacher_pairs):
        raise ValueError(
            f"fsp_loss needs as many student as teacher pairs, got {len(student_pairs)} and "
            f"{len(teacher_pairs)}"
        )
    losses = []
    for (s1, s2), (t1, t2) in zip(student_pairs, teacher_pairs, strict=True):
        g_s, g_t = fsp_matrix(s1, s2), fsp_matrix(t1, t2)
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"FSP matrices differ in shape: student {tuple(g_s.shape[1:])}, teacher "
                f"{tuple(g_t.shape[1:])}; map the student's channels to the teacher's first"
            )
        squared = (g_t - g_s).pow(2).flatten(1)
        losses.append(squared.sum(1).mean() if reduction == "batchmean" else squared.mean())
    return torch.stack(losses).mean()


@register_term
class FlowOfSolutionProcedure(LayerListTerm):
    """Mean over the layer pairs of mean_b ‖G_T − G_S‖²_F, G = F₁ᵀF₂/(H·W) (FSP matrices)."""

    kind = "fsp"

    def __init__(
        self,
        student: Any = None,
        teacher: Any = None,
        weight: float = 1.0,
        reduction: str = "batchmean",
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        s_pairs, t_pairs = (
            parse_layer_pairs(student, "student"),
            parse_layer_pairs(teacher, "teacher"),
        )
        if len(s_pairs) != len(t_pairs):
            raise ConfigError(
                f"loss 'fsp' compares pair i of the student with pair i of the teacher, but got "
                f"{len(s_pairs)} student and {len(t_pairs)} teacher pairs; list as many of each"
            )
        meaning = "batchmean: the paper's squared norm per sample; mean: RepDistiller's scale"
        check_reduction(reduction, REDUCTIONS, meaning)
        flat_s = [p for pair in s_pairs for p in pair]
        flat_t = [p for pair in t_pairs for p in pair]
        super().__init__(flat_s, flat_t, weight, adapter, adapter_bn, name)
        self.reduction = reduction

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        s_pairs = list(zip(s[0::2], s[1::2], strict=True))
        t_pairs = list(zip(t[0::2], t[1::2], strict=True))
        return fsp_loss(s_pairs, t_pairs, reduction=self.reduction)


__all__ = [
    "FlowOfSolutionProcedure",
    "LayerListTerm",
    "fsp_loss",
    "fsp_matrix",
    "parse_layer_pairs",
]
