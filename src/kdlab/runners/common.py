"""Helpers shared by the multi-model runners (mutual, born-again, assistant chains)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdlab.data.base import DataSplits
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.runners import DistillContext

#: Extra models a scheme builds (peers, assistants) draw their initial weights from
#: seed + SEED_STRIDE·position, so they differ from the student (which uses the seed itself).
SEED_STRIDE = 1000

#: The fit_model keyword arguments that also apply to recording an already-trained model.
_RECORDING_KEYS = ("store", "experiment", "gamma", "ece_bins")


def recording_kwargs(fit_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``fit_kwargs`` that :func:`kdlab.api.record_model` accepts."""
    return {k: fit_kwargs[k] for k in _RECORDING_KEYS if k in fit_kwargs}


def build_seeded(spec: Mapping[str, Any], data: DataSplits, seed: int) -> nn.Module:
    """Build a model whose initial weights depend only on ``seed``; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, data.input_shape, data.num_classes)


def student_spec(ctx: DistillContext) -> dict[str, Any]:
    """The student's model spec (for more models of the student's architecture)."""
    if not ctx.student_model:
        raise ConfigError(
            "this scheme builds extra copies of the student's architecture, but the context "
            "carries no student model spec; list the models' specs explicitly in distill.options"
        )
    return dict(ctx.student_model)


def check_specs(specs: Sequence[Any], where: str, aliases: Sequence[str] = ()) -> list[Any]:
    """Validate model specs (mappings) or named aliases; errors name the position and the fix."""
    from kdlab.config import check_model_spec  # kdlab.config imports the runners: import late

    checked: list[Any] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str) and spec in aliases:
            checked.append(spec)
        elif isinstance(spec, Mapping):
            checked.append(check_model_spec(dict(spec)))
        else:
            valid = " or ".join([*(repr(a) for a in aliases), "a model spec like {type: mlp}"])
            what = "missing (null)" if spec is None else f"{spec!r}"
            raise ValueError(f"{where}[{i}] is {what}; each entry must be {valid}")
    return checked
