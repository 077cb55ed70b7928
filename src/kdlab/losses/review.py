"""ReviewKD — "Distilling Knowledge via Knowledge Review" (Chen, Liu, Zhao & Jia, CVPR 2021).

The student's features at n levels F^S_1 … F^S_n (shallow → deep) are *reviewed*: each level is
fused with what the deeper levels carry before it is compared with the teacher's F^T_i. From the
deepest level down, an attention-based fusion (ABF) block computes

    x_i = BN(conv1×1(F^S_i))                                     (mid_channels channels)
    r_i = x_n                                                    at the deepest level i = n
    r_i = a_i ⊙ x_i + b_i ⊙ up(r_{i+1}),  [a_i, b_i] = σ(conv1×1([x_i, up(r_{i+1})]))   else
    O_i = BN(conv3×3(resize(r_i)))                               (the teacher's channels)

(``up``: nearest resize to level i's size; ``resize``: nearest resize to the teacher's size),
and the hierarchical context loss (HCL) compares O_i with F^T_i at several context sizes:

    HCL(O, T) = Σ_i [ Σ_k w_k · MSE(pool_k(O_i), pool_k(T_i)) ] / Σ_k w_k,

pool_k = adaptive average pooling to k × k for k in (full size, 4, 2, 1), w = (1, ½, ¼, ⅛); a
pooled size not smaller than the map is skipped (its weight too). MSE is a mean over batch,
channels and positions. Vector levels (e.g. the pooled penultimate feature) are [C, 1, 1] maps.

Paper vs the authors' code (Jia-Research-Lab/ReviewKD), which kdlab follows — it produced the
reported numbers, and the paper leaves these details open:
- HCL's pyramid (4, 2, 1), the halving weights, skipping sizes ≥ the map and dividing by the
  total weight are the code's; the fused map is resized to the teacher's size (nearest) before
  the 3×3 convolution, and the fused map at that size is what the next level receives.
- mid_channels defaults to min(512, channels of the deepest student level) as in the code.
- The code multiplies the loss by min(1, epoch / 20) (0-based epochs: the first epoch trains on
  CE alone) over 240 CIFAR epochs; here ``warmup_epochs`` (default 0: off; at most epochs − 1,
  the last 0-based epoch, or the loss never reaches full weight and is refused). Its CIFAR scripts
  use loss weights 0.6 (ResNet56 → ResNet20) to 5 (WRN, ResNet32×4 → 8×4, ShuffleV1) and 8
  (ResNet32×4 → ShuffleV2), default 1.
- The code taps the teacher's pre-activation features; kdlab reads whatever modules are named.
A batch-norm layer that sees one value per channel (a batch of one sample at a 1×1 level) uses
its running statistics, since batch statistics are undefined there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError, quote
from kdlab.losses.base import Term, register_term
from kdlab.losses.feature import captured
from kdlab.types import Batch, ModelOutput

#: The authors' context sizes below the full map (each halves the previous weight).
PYRAMID = (4, 2, 1)
#: The authors' cap on the fusion width.
MAX_MID_CHANNELS = 512

Size = tuple[int, int]


def as_map(x: Tensor) -> Tensor:
    """A [B, C] vector level as a [B, C, 1, 1] map; maps pass unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


def context_sizes(height: int, width: int, pyramid: Sequence[int] = PYRAMID) -> list[Size]:
    """The pooled sizes HCL compares besides the full map: k × k (clipped to the map) for each
    k in ``pyramid`` smaller than the map, as the authors skip k ≥ the map's size."""
    return [(min(k, height), min(k, width)) for k in pyramid if k < max(height, width)]


def hcl_loss(
    student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], pyramid: Sequence[int] = PYRAMID
) -> Tensor:
    """Hierarchical context loss: per level, Σ_k w_k · MSE at context size k over Σ_k w_k, with
    w = 1 for the full map and halving for each pooled size; summed over levels.

    Both lists hold tensors of equal shapes level by level ([B, C, H, W] maps or [B, C] vectors).
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ConfigError(
            f"hcl_loss needs as many student maps as teacher maps (at least one), got "
            f"{len(student_maps)} and {len(teacher_maps)}; pass one pair per level"
        )
    total = None
    for i, (s, t) in enumerate(zip(student_maps, teacher_maps, strict=True)):
        if s.shape != t.shape:
            raise ConfigError(
                f"hcl_loss level {i}: student {tuple(s.shape)} and teacher {tuple(t.shape)} "
                "differ; map the student to the teacher's shape first (e.g. with ReviewKD's ABF)"
            )
        s, t = as_map(s), as_map(t.to(s.dtype))
        level, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in context_sizes(s.shape[2], s.shape[3], pyramid):
            weight /= 2
            pooled = F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            level, weights = level + weight * pooled, weights + weight
        total = level / weights if total is None else total + level / weights
    assert total is not None
    return total


class StatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that uses its running statistics where a training batch holds one value per
    channel (batch statistics are undefined there, and PyTorch would raise)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def _conv_bn(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # the authors' initialisation (gain 1)
    return nn.Sequential(conv, StatsBatchNorm2d(c_out))


class AttentionFusion(nn.Module):
    """One ABF block: student level → (output at the teacher's shape, residual for the next,
    shallower level). Without ``fuse`` (the deepest level) it takes no residual."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = _conv_bn(in_channels, mid_channels, 1)
        self.attention: nn.Sequential | None = None
        if fuse:  # two maps: how much of this level and of the deeper residual to keep
            self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
        self.output = _conv_bn(mid_channels, out_channels, 3)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: Size) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if (residual is None) != (self.attention is None):
            raise RuntimeError("the deepest ABF block takes no residual; every other one does")
        if self.attention is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, residual], dim=1))
            x = x * weights[:, :1] + residual * weights[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.output(x), x


def build_fusions(
    student_shapes: Sequence[Sequence[int]],
    teacher_shapes: Sequence[Sequence[int]],
    mid_channels: int | None = None,
) -> nn.ModuleList:
    """ABF blocks for levels with per-sample [C, H, W] shapes, shallow → deep."""
    mid = mid_channels or min(MAX_MID_CHANNELS, int(student_shapes[-1][0]))
    last = len(student_shapes) - 1
    return nn.ModuleList(
        AttentionFusion(int(s[0]), mid, int(t[0]), fuse=i < last)
        for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes, strict=True))
    )


def review(
    fusions: Sequence[AttentionFusion],
    student_maps: Sequence[Tensor],
    teacher_sizes: Sequence[Size],
) -> list[Tensor]:
    """The ABF outputs per level (shallow → deep), computed from the deepest level down."""
    outputs: list[Tensor] = [student_maps[0]] * len(student_maps)
    residual: Tensor | None = None
    for i in reversed(range(len(student_maps))):
        outputs[i], residual = fusions[i](student_maps[i], residual, teacher_sizes[i])
    return outputs


def _paths(kind: str, role: str, paths: object) -> tuple[str, ...]:
    valid = isinstance(paths, (list, tuple)) and all(isinstance(p, str) and p for p in paths)
    if not valid or not paths:
        raise ConfigError(
            f"loss {kind!r} needs the {role}'s module paths as a list `{role}:`, shallow → deep, "
            f"e.g. {{type: {kind}, student: [features.1, features.2, head.2], teacher: "
            f"[features.1, features.2, head.2]}}; got {quote(paths)}"
        )
    return tuple(str(p) for p in paths)  # type: ignore[union-attr]


@register_term
class ReviewKD(Term):
    """HCL between the ABF-reviewed student levels and the teacher's levels (see module doc)."""

    kind = "review"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weight: float = 1.0,
        mid_channels: int | None = None,
        warmup_epochs: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.student_taps = _paths(self.kind, "student", student)
        self.teacher_taps = _paths(self.kind, "teacher", teacher)
        if len(self.student_taps) != len(self.teacher_taps):
            raise ConfigError(
                f"loss {self.kind!r}: student has {len(self.student_taps)} levels but teacher "
                f"{len(self.teacher_taps)}; list one teacher module per student module, "
                "in the same shallow → deep order"
            )
        valid = isinstance(mid_channels, int) and not isinstance(mid_channels, bool)
        if mid_channels is not None and not (valid and mid_channels >= 1):
            raise ConfigError(
                f"mid_channels must be a positive integer or null (the authors' "
                f"min({MAX_MID_CHANNELS}, deepest student channels)), got {quote(mid_channels)}"
            )
        if not 0 <= warmup_epochs < float("inf"):
            raise ConfigError(
                f"warmup_epochs must be a finite number ≥ 0 (0: no warm-up; the authors use 20), "
                f"got {warmup_epochs}"
            )
        self.mid_channels, self.warmup_epochs = mid_channels, float(warmup_epochs)
        self.fusions = nn.ModuleList()
        self._built_for: tuple[tuple[int, ...], ...] | None = None

    def _where(self) -> str:
        return (
            f"loss term {self.name!r} ({self.kind}, student {list(self.student_taps)} → teacher "
            f"{list(self.teacher_taps)}): "
        )

    def _read(self, out: ModelOutput, path: str, role: str) -> Tensor:
        value = captured(out, path, role, self._where())
        if not isinstance(value, Tensor) or value.dim() not in (2, 4):
            what = tuple(value.shape[1:]) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(
                f"{self._where()}the {role}'s module {path!r} outputs {what} per sample; ReviewKD "
                "needs [channels, height, width] maps or [features] vectors: tap convolutional "
                "blocks or the pooled penultimate layer"
            )
        return as_map(at_least_float32(value))

    def levels(
        self, student: ModelOutput, teacher: ModelOutput | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """(student maps, detached teacher maps), shallow → deep, vectors as [C, 1, 1] maps."""
        teacher = self._teacher(teacher)
        s = [self._read(student, p, "student") for p in self.student_taps]
        t = [self._read(teacher, p, "teacher").detach() for p in self.teacher_taps]
        if s[0].shape[0] != t[0].shape[0]:
            raise ConfigError(
                f"{self._where()}student batch {s[0].shape[0]} and teacher batch "
                f"{t[0].shape[0]} differ; both models must see the same inputs"
            )
        return s, t

    def _check_order(self, student_maps: Sequence[Tensor]) -> None:
        sizes = [tuple(x.shape[2:]) for x in student_maps]
        for i in range(len(sizes) - 1):
            if sizes[i + 1][0] > sizes[i][0] or sizes[i + 1][1] > sizes[i][1]:
                raise ConfigError(
                    f"{self._where()}student level {i + 2} ({self.student_taps[i + 1]!r}, "
                    f"{sizes[i + 1][0]}×{sizes[i + 1][1]}) is larger than level {i + 1} "
                    f"({self.student_taps[i]!r}, {sizes[i][0]}×{sizes[i][1]}); list the levels "
                    "shallow → deep, so that map sizes shrink or stay"
                )

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Build the ABF blocks from one batch of features (call before building optimizers);
        check the warm-up against the run's length, which the sample batch carries."""
        self.check_run(0, sample.epochs if sample is not None else 0)
        s, t = self.levels(student, teacher)
        self._check_order(s)
        fusions = build_fusions([x.shape[1:] for x in s], [x.shape[1:] for x in t],
                                self.mid_channels)  # fmt: skip
        self.fusions = fusions.to(device=s[0].device, dtype=s[0].dtype)
        self._built_for = self._shapes(s, t)

    def check_run(self, train_size: int, epochs: int) -> None:
        """A warm-up the run outlasts never reaches full weight (0 epochs: unknown). The factor
        min(1, epoch / warmup_epochs) counts epochs from 0, so it is 1 from epoch warmup_epochs
        on, and the last epoch is epochs − 1."""
        if epochs > 0 and self.warmup_epochs > epochs - 1:
            fix = f"≤ {epochs - 1} (e.g. a tenth of the epochs) or 0" if epochs > 1 else "0"
            raise ConfigError(
                f"{self._where()}warmup_epochs is {self.warmup_epochs:g} but training runs only "
                f"{epochs} epoch(s): the weight min(1, epoch / warmup_epochs), epochs counted "
                f"from 0, reaches 1 at epoch {self.warmup_epochs:g} and the last is epoch "
                f"{epochs - 1}, so the loss never reaches full weight; set warmup_epochs {fix} "
                "for no warm-up"
            )

    @staticmethod
    def _shapes(s: Sequence[Tensor], t: Sequence[Tensor]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(x.shape[1:]) for x in [*s, *t])

    def warmup(self, batch: Batch) -> float:
        """The authors' min(1, epoch / warmup_epochs); 1 when off or the epoch count is unknown."""
        if self.warmup_epochs == 0 or batch.epochs == 0:
            return 1.0
        return min(1.0, batch.epoch / self.warmup_epochs)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        if self._built_for is None:
            raise ConfigError(
                f"{self._where()}the ABF blocks are trainable and must exist before the optimizer "
                "is built: call kdlab.losses.feature.prepare_terms (kdlab's schemes do it in "
                "prepare())"
            )
        s, t = self.levels(student, teacher)
        if self._shapes(s, t) != self._built_for:
            raise ConfigError(
                f"{self._where()}the ABF blocks were built for other feature shapes than this "
                "batch's; inputs of one run must all have the same size"
            )
        sizes = [(x.shape[2], x.shape[3]) for x in t]
        outputs = review(self.fusions, s, sizes)  # type: ignore[arg-type]
        return self.warmup(batch) * hcl_loss(outputs, [x.to(outputs[0].dtype) for x in t])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, student={list(self.student_taps)}, "
            f"teacher={list(self.teacher_taps)}, mid_channels={self.mid_channels}"
        )


__all__ = [
    "PYRAMID",
    "AttentionFusion",
    "ReviewKD",
    "as_map",
    "build_fusions",
    "context_sizes",
    "hcl_loss",
    "review",
]
