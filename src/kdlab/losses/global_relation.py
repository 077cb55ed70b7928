"""Non-local (global relation) distillation — seed 001 §3.2, Zhang & Ma 2021.

The relation of position (i, j) of a feature map A [C, H, W] with every other position is

    r_ij = (1/WH) · Σ_i'j' f(A_·ij, A_·i'j') · g(A_·i'j'),

a non-local block (Wang et al. 2018, dot-product form): f(a, b) = θ(a)·φ(b) and g are 1×1
convolutions to ``inter_channels``. The teacher and the (adapted) student each get their own
block, trained with the student; the loss is the mean squared difference of their outputs.

``residual: true`` (default, Wang et al.'s block form) outputs A + W_z·r with W_z a 1×1 conv
back to C channels, initialised to zero — the block starts as the identity and the loss as
a plain feature-matching one, so the two trainable blocks cannot agree by shrinking both
relations to zero. ``residual: false`` compares r itself, as the seed writes it; the teacher's
block then stays at its initial (random) weights for the same reason.
Cost: an [HW × HW] matrix per sample — tap small maps (e.g. 7×7 or 14×14).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import FeatureTerm
from kdlab.types import Batch, ModelOutput


class NonLocalBlock(nn.Module):
    """r(A) [B, C', H, W] (or A + W_z·r(A) [B, C, H, W] with ``residual``)."""

    def __init__(self, channels: int, inter_channels: int, residual: bool = True) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.out: nn.Conv2d | None = None
        if residual:
            self.out = nn.Conv2d(inter_channels, channels, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def relation(self, a: Tensor) -> Tensor:
        """r_n = (1/N) Σ_m (θ_n · φ_m) g_m over the N = H·W positions."""
        b, _, h, w = a.shape
        theta, phi, g = (conv(a).flatten(2) for conv in (self.theta, self.phi, self.g))
        pairwise = theta.transpose(1, 2) @ phi  # [B, N, N]: f(A_n, A_m)
        r = g @ pairwise.transpose(1, 2) / (h * w)  # [B, C', N]
        return r.view(b, -1, h, w)

    def forward(self, a: Tensor) -> Tensor:
        r = self.relation(a)
        return r if self.out is None else a + self.out(r)


@register_term
class GlobalRelation(FeatureTerm):
    """mean over batch and entries of (block_T(A^T) − block_S(f(A^S)))², f the adapter."""

    kind = "global_relation"
    match = "all"
    ranks = (3,)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        inter_channels: int | None = None,
        residual: bool = True,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        valid = isinstance(inter_channels, int) and inter_channels >= 1
        if inter_channels is not None and not valid:
            raise ConfigError(f"inter_channels must be a positive integer, got {inter_channels!r}")
        self.inter_channels, self.residual = inter_channels, bool(residual)
        self.student_block: NonLocalBlock | None = None
        self.teacher_block: NonLocalBlock | None = None

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        super().prepare(student, teacher, sample)
        t = self._read(self._teacher(teacher), self.teacher_path, "teacher")
        channels = t.shape[1]
        inter = self.inter_channels or max(1, channels // 2)  # Wang et al.'s default
        blocks = [NonLocalBlock(channels, inter, self.residual) for _ in range(2)]
        self.student_block, self.teacher_block = (b.to(t.device, t.dtype) for b in blocks)
        if not self.residual:
            self.teacher_block.requires_grad_(False)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        if self.student_block is None or self.teacher_block is None:
            raise ConfigError(
                f"{self._where()}the non-local blocks are trainable and must exist before the "
                "optimizer is built: call kdlab.losses.feature.prepare_terms (kdlab's schemes do "
                "it in prepare())"
            )
        s, t = self.features(student, teacher)
        return (self.teacher_block(t) - self.student_block(s)).pow(2).mean()
