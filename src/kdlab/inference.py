"""Running a model outside training: logits of a whole split, and forward passes with taps.

Shared by the engine (validation), the runs layer (test metrics), schemes (teacher and student
passes) and loss terms (one eval-mode pass to size their adapters), so that every caller restores
the model's mode and removes its hooks the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kdlab.devices import module_device
from kdlab.taps import capture
from kdlab.types import Inputs, ModelOutput, as_output


def forward_with_taps(
    model: nn.Module,
    inputs: Tensor,
    taps: Sequence[str] = (),
    role: str = "model",
    runner: nn.Module | None = None,
) -> ModelOutput:
    """Run ``model`` and capture the outputs of the modules at ``taps`` (by path); ``runner``
    (e.g. the model's DistributedDataParallel wrapper) makes the call instead of the model."""
    call = runner if runner is not None else model
    if not taps:
        return as_output(call_model(call, inputs))
    with capture(model, taps, role) as features:
        out = as_output(call_model(call, inputs))
    out.features.update(features)
    return out


def eval_forward(
    model: nn.Module, inputs: Tensor, taps: Sequence[str] = (), role: str = "model"
) -> ModelOutput:
    """:func:`forward_with_taps` in eval mode (BatchNorm statistics untouched), restoring every
    module's own mode afterwards (a partly frozen model keeps its mix of modes)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return forward_with_taps(model, inputs, taps, role)
    finally:
        for module, flag in modes:
            module.training = flag


class Examples(Protocol):
    """A split that hands out model inputs by rows (kdlab.data.ArrayDataset)."""

    def __len__(self) -> int: ...

    def inputs(self, index: slice) -> Inputs: ...


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(inputs)``, or ``model(**inputs)`` for keyword inputs (token ids, masks, ...)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor | Examples, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` on ``inputs`` (a tensor, or a split's model inputs) in eval mode,
    batched on the model's device, returned on the CPU as float32; restores the previous mode."""
    was_training, device = model.training, module_device(model)
    rows = inputs.__getitem__ if isinstance(inputs, Tensor) else inputs.inputs
    model.eval()
    try:
        chunks = [
            as_output(call_model(model, to_device(rows(slice(i, i + batch_size)), device)))
            .logits.float()
            .cpu()
            for i in range(0, len(inputs), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def batch_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy of one batch, as a 0-d tensor on the batch's device: the engine sums it
    there and reads it once per progress update, not at every step."""
    return (logits.detach().argmax(-1) == targets).float().mean()


__all__ = [
    "Examples",
    "batch_accuracy",
    "call_model",
    "eval_forward",
    "forward_with_taps",
    "predict_logits",
    "to_device",
]
