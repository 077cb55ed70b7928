"""Schemes: who learns from whom.

A scheme owns the trainable models (and any loss modules with parameters), names its optimizers'
parameter groups, and for one batch computes losses and hands each to ``update`` — the engine's
backward/step for that optimizer. Handing losses over one at a time (rather than returning them
all) lets adversarial schemes step the discriminator before computing the student's loss against
the updated discriminator. The engine knows nothing about distillation; schemes know nothing about
epochs, checkpoints or progress bars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kdlab.data.base import ArrayDataset
from kdlab.losses.base import LossOutput
from kdlab.taps import capture
from kdlab.types import Batch, ModelOutput, as_output

#: update(optimizer_name, loss) — zero_grad, backward, clip, step, with the non-finite guard.
Update = Callable[[str, LossOutput], None]


class Scheme:
    """Base class; subclasses implement ``trainable``, ``optimizer_groups`` and ``train_step``."""

    def trainable(self) -> dict[str, nn.Module]:
        """Modules whose parameters change (saved in checkpoints), by name."""
        raise NotImplementedError

    def frozen(self) -> dict[str, nn.Module]:
        """Modules that only provide targets (teachers): eval mode, no gradients."""
        return {}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each optimizer, by optimizer name (the first is the main one)."""
        raise NotImplementedError

    def prepare(self, sample: Batch) -> None:
        """Called once by the engine before it builds optimizers, with a few training samples.

        Schemes whose loss terms own shape-dependent parameters (e.g. an adapter from student
        to teacher features) create them here, so the optimizers see them.
        """

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        """Compute losses for one batch and call ``update`` for each; return batch metrics."""
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The model whose accuracy is reported during training and kept as the result."""
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------------

    def set_mode(self, training: bool) -> None:
        for module in self.trainable().values():
            module.train(training)
        for module in self.frozen().values():
            module.eval()  # a teacher never trains: its BatchNorm statistics must not drift

    @staticmethod
    def forward(
        model: nn.Module, inputs: Tensor, taps: Sequence[str] = (), role: str = "model"
    ) -> ModelOutput:
        """Run ``model`` and capture the outputs of the modules at ``taps`` (by path)."""
        if not taps:
            return as_output(model(inputs))
        with capture(model, taps, role) as features:
            out = as_output(model(inputs))
        out.features.update(features)
        return out

    @torch.no_grad()
    def predict(self, data: ArrayDataset, batch_size: int = 1024) -> Tensor:
        """Logits of ``eval_model`` on a whole split, in eval mode."""
        return predict_logits(self.eval_model(), data.x, batch_size)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` on ``inputs`` in eval mode, batched; restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        chunks = [
            as_output(model(inputs[i : i + batch_size])).logits.float()
            for i in range(0, len(inputs), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def batch_accuracy(logits: Tensor, targets: Tensor) -> float:
    return (logits.detach().argmax(-1) == targets).float().mean().item()
