"""Factor transfer (Kim et al., NeurIPS 2018): a paraphraser compresses the teacher's feature map
into a "factor"; a translator on the student learns to produce the same factor.

- Paraphraser P (``phase: paraphrase``, trained first, student frozen): encoder of three 3×3
  convolutions (teacher channels C → C → k·C → k·C, each with BatchNorm and leaky ReLU 0.1; k is
  ``rate``, 0.5 in the paper) and a mirrored decoder of 3×3 transposed convolutions back to C;
  trained on the teacher's feature x alone by the reconstruction loss ‖x − P(x)‖².
- Translator (``phase: transfer``, trained with the student): three 3×3 convolutions
  (student channels → C_S → k·C → k·C, BatchNorm, leaky ReLU 0.1), after a parameter-free resize
  when the maps' sizes differ. The paraphraser is frozen (weights and BatchNorm statistics):
  F_T = encoder(x_T), F_S = translator(x_S), and

      L_FT = ‖ F_T/‖F_T‖₂ − F_S/‖F_S‖₂ ‖_p   (p = 1), per sample on the flattened factors.

Train both phases as ``distill.stages`` with the *same term name* (the default name ``ft`` does):
a term in a later stage starts from the state of the term of the same name and kind trained in an
earlier stage (kdlab.schemes.offline), so the transfer stage reads the trained paraphraser.
Stage 1 uses ``trainable: none`` (only the paraphraser trains). A transfer term whose
paraphraser was never trained is an error.

Where kdlab differs from the authors' code (Jangho-Kim/Factor-Transfer-pytorch): their
convolutions have biases and no BatchNorm (every BatchNorm line there is commented out), each
layer, the last decoder layer included, followed by leaky ReLU 0.1; kdlab puts BatchNorm after
every convolution of both modules (as RepDistiller's translator does) for stable training of
deep teachers' features, and its last decoder layer is a bare transposed convolution, so any
feature (also a pre-ReLU one) can be reconstructed. The authors train the paraphraser with an
L1 reconstruction loss; kdlab's is the squared error above (as RepDistiller's).
``reduction``: ``mean`` (default, as the authors' code: mean over the factor's elements of
|difference|^p, and the reconstruction's mean squared error) or ``batchmean`` (the paper's
norms, per sample, averaged over the batch).

Weight: the term's ``weight`` is the paper's β. With ``reduction: mean`` the authors use β = 500
(CIFAR-10, ResNet56 → ResNet20) and RepDistiller β = 200; the default weight 1 is far weaker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.connectors import Resize
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

PHASES = ("paraphrase", "transfer")
REDUCTIONS = ("mean", "batchmean")


def _conv_block(layer: nn.Module, channels: int) -> list[nn.Module]:
    return [layer, nn.BatchNorm2d(channels), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Convolutional autoencoder of a teacher map [C, H, W]; ``encoder`` gives the factor."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(
            *_conv_block(nn.Conv2d(c, c, 3, padding=1, bias=False), c),
            *_conv_block(nn.Conv2d(c, k, 3, padding=1, bias=False), k),
            *_conv_block(nn.Conv2d(k, k, 3, padding=1, bias=False), k),
        )
        self.decoder = nn.Sequential(
            *_conv_block(nn.ConvTranspose2d(k, k, 3, padding=1, bias=False), k),
            *_conv_block(nn.ConvTranspose2d(k, c, 3, padding=1, bias=False), c),
            nn.ConvTranspose2d(c, c, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def translator(student: tuple[int, ...], teacher: tuple[int, ...], factor: int) -> nn.Sequential:
    """Student map [C_S, H, W] → factor [k·C_T, H_T, W_T]."""
    c = student[0]
    resize: list[nn.Module] = [Resize(teacher[1:])] if student[1:] != teacher[1:] else []
    return nn.Sequential(
        *resize,
        *_conv_block(nn.Conv2d(c, c, 3, padding=1, bias=False), c),
        *_conv_block(nn.Conv2d(c, factor, 3, padding=1, bias=False), factor),
        *_conv_block(nn.Conv2d(factor, factor, 3, padding=1, bias=False), factor),
    )


def _reduce(per_element: Tensor, reduction: str, root: float) -> Tensor:
    check_reduction(reduction, REDUCTIONS)
    if reduction == "mean":
        return per_element.mean()
    return flat(per_element).sum(1).pow(root).mean()


def ft_loss(
    student_factor: Tensor, teacher_factor: Tensor, *, p: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """‖F_T/‖F_T‖₂ − F_S/‖F_S‖₂‖_p on flattened per-sample factors: ``batchmean`` the norm
    averaged over the batch, ``mean`` the mean of |difference|^p over every element."""
    diff = F.normalize(flat(teacher_factor), dim=1) - F.normalize(flat(student_factor), dim=1)
    return _reduce(diff.abs().pow(p), reduction, 1.0 / p)


def reconstruction_loss(reconstruction: Tensor, feature: Tensor, reduction: str = "mean") -> Tensor:
    """‖x − P(x)‖²: per sample averaged over the batch (``batchmean``) or per element (``mean``)."""
    return _reduce((feature - reconstruction).pow(2), reduction, 1.0)


@register_term
class FactorTransfer(FeatureTerm):
    """Factor transfer; ``phase`` picks the paraphraser's training or the transfer (see module)."""

    kind = "ft"
    ranks = (3,)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        phase: str = "transfer",
        rate: float = 0.5,
        p: float = 1.0,
        reduction: str = "mean",
        name: str | None = None,
    ) -> None:
        if phase not in PHASES:
            raise ConfigError(
                f"phase must be 'paraphrase' (stage 1: train the paraphraser on the teacher) or "
                f"'transfer' (stage 2: train the student through the translator), got {phase!r}"
            )
        placeholder = (student or teacher or "-") if phase == "paraphrase" else student
        super().__init__(placeholder, teacher, weight, "none", False, name)
        if phase == "paraphrase":  # the student is not read: tap nothing of it
            self.student_taps = (student,) if student else ()
        if not 0 < rate <= 4:
            raise ConfigError(f"rate must be in (0, 4] (factor channels per teacher channel; the "
                              f"paper uses 0.5), got {rate}")  # fmt: skip
        if not p > 0:
            raise ConfigError(f"p must be > 0 (the paper uses 1), got {p}")
        check_reduction(reduction, REDUCTIONS)
        self.phase, self.rate, self.p, self.reduction = phase, float(rate), float(p), reduction
        self.paraphraser: Paraphraser | None = None
        self.translator: nn.Sequential | None = None
        self.register_buffer("paraphraser_trained", torch.zeros((), dtype=torch.bool))

    @property
    def student_path(self) -> str:
        return self.student_taps[0] if self.student_taps else "-"

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        t = self._map(self._teacher(teacher), self.teacher_path, "teacher")
        factor = max(1, round(self.rate * t.shape[1]))
        self.paraphraser = Paraphraser(t.shape[1], factor).to(device=t.device, dtype=t.dtype)
        if self.phase == "transfer":
            s = self._map(student, self.student_path, "student")
            shapes = (tuple(s.shape[1:]), tuple(t.shape[1:]))
            self.translator = translator(*shapes, factor).to(device=s.device, dtype=s.dtype)
            self.paraphraser.requires_grad_(False)  # frozen in the transfer phase (paper)
            self.paraphraser.eval()

    def _map(self, out: ModelOutput, path: str, role: str) -> Tensor:
        value = self._read(out, path, role)
        if value.dim() != 4:
            raise ConfigError(
                f"{self._where()}factor transfer needs [channels, height, width] maps, but the "
                f"{role}'s {path!r} gives {tuple(value.shape[1:])} per sample; tap a "
                "convolutional block"
            )
        return value

    def train(self, mode: bool = True) -> FactorTransfer:
        super().train(mode)
        if self.phase == "transfer" and self.paraphraser is not None:
            self.paraphraser.eval()  # its BatchNorm statistics stay those of stage 1
        return self

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        if self.paraphraser is None:
            raise ConfigError(
                f"{self._where()}the paraphraser is not built; call "
                "kdlab.losses.feature.prepare_terms first (kdlab's schemes do it in prepare())"
            )
        t = self._map(self._teacher(teacher), self.teacher_path, "teacher").detach()
        if self.phase == "paraphrase":
            if self.training:
                self.paraphraser_trained.fill_(True)
            return reconstruction_loss(self.paraphraser(t), t, self.reduction)
        if not bool(self.paraphraser_trained):
            raise ConfigError(
                f"{self._where()}the paraphraser was never trained: put a stage with "
                f"{{type: ft, phase: paraphrase, teacher: {self.teacher_path}, name: "
                f"{self.name}}} (student frozen: trainable: none) before this one"
            )
        s = self._map(student, self.student_path, "student")
        assert self.translator is not None  # built with the paraphraser in the transfer phase
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(t)
        return ft_loss(self.translator(s), teacher_factor, p=self.p, reduction=self.reduction)
