"""In-memory cache of a frozen teacher's logits, keyed by training-example index.

An offline-KD step spends a large share of its time in the teacher's forward pass, yet a frozen
teacher in eval mode gives the same logits for the same un-augmented input every epoch. The
cache computes each example's logits the first time its batch comes and reuses them after, so
epochs 2+ cost about what training the student alone costs. It is one ``[N, classes]`` tensor
(2.4 MB for 60k examples × 10 classes), not one file per sample (torchdistill dropped such a
cache because reading it was slower than recomputing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.data.base import take
from kdlab.inference import call_model, model_output
from kdlab.types import Batch, Inputs


class TeacherCache:
    """Logits of ``teacher`` per example index; call :meth:`clear` when the data change."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.logits: Tensor | None = None
        self.filled: Tensor | None = None

    def clear(self) -> None:
        self.logits, self.filled = None, None

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Tensor:
        """The teacher's logits for ``batch``: cached rows reused, missing rows computed."""
        index = batch.index
        if index is None:
            return self._teacher(batch.inputs)
        size = int(index.max()) + 1
        if self.logits is None or self.filled is None:
            fresh = self._teacher(batch.inputs)
            self.logits = fresh.new_zeros(size, fresh.shape[1])
            self.filled = torch.zeros(size, dtype=torch.bool, device=index.device)
            self.logits[index], self.filled[index] = fresh, True
            return fresh
        if size > len(self.filled):
            extra = size - len(self.filled)
            self.logits = torch.cat(
                [self.logits, self.logits.new_zeros(extra, self.logits.shape[1])]
            )
            more = torch.zeros(extra, dtype=torch.bool, device=index.device)
            self.filled = torch.cat([self.filled, more])
        missing = ~self.filled[index]
        if missing.any():
            self.logits[index[missing]] = self._teacher(take(batch.inputs, missing))
            self.filled[index[missing]] = True
        return self.logits[index]

    def _teacher(self, inputs: Inputs) -> Tensor:
        return model_output(self.teacher, call_model(self.teacher, inputs), "teacher").logits
