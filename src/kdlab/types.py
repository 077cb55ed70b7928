"""Small containers passed between data, schemes, loss terms and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

#: A model's inputs for a batch: one tensor, or keyword arguments (all with the batch first).
Inputs = Tensor | dict[str, Tensor]


@dataclass
class Batch:
    """One mini-batch. ``index`` holds the samples' positions in their split (for caches)."""

    #: A tensor, or a dict of tensors passed to the model as keyword arguments (token ids and an
    #: attention mask).
    inputs: Inputs
    targets: Tensor
    index: Tensor | None = None
    #: Where training stands, for terms that change with it (DKD's warm-up): the 0-based epoch
    #: and the run's number of epochs (0: unknown, e.g. outside the engine's loop).
    epoch: int = 0
    epochs: int = 0
    #: Examples in the training split (0: unknown); set on the sample batch given to
    #: ``prepare``, for terms that keep per-example state (CRD's memory bank).
    train_size: int = 0

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class ModelOutput:
    """What a loss term sees of one model on one batch: its logits and any tapped features.

    Built from whatever the model returned by :func:`kdlab.inference.model_output`.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> ModelOutput:
        return ModelOutput(self.logits.detach(), {k: v.detach() for k, v in self.features.items()})


@dataclass
class LossOutput:
    """What a loss returns: the weighted total and each term's unweighted value, by name."""

    total: Tensor
    terms: dict[str, Tensor]
