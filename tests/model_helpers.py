"""Models that return their logits in the shapes real models do (a tuple, a list, a dict, a
dataclass, a namedtuple), a model that reads keyword inputs (token ids and a mask), synthetic
token data for it, and model factories that YAML configs name as ``model_helpers:<function>``.

Imported by tests/test_model_outputs.py and tests/test_hf.py (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.data.base import ArrayDataset, DataSplits

#: The output shapes :class:`OutputMLP` can return.
FORMS = ("tensor", "tuple", "list", "dict", "dataclass", "namedtuple")

Pair = namedtuple("Pair", ["hidden", "logits"])


@dataclasses.dataclass
class Prediction:
    """A ModelOutput-like result object: the logits and the hidden features, as attributes."""

    logits: Tensor
    hidden: Tensor


def wrap(logits: Tensor, hidden: Tensor, form: str, logits_at: int = 0, key: str = "logits") -> Any:
    """``logits`` (and ``hidden`` beside them) in the output shape ``form``; for a tuple or
    list the logits are at position ``logits_at``, for a dict under ``key``."""
    if form == "tensor":
        return logits
    if form in ("tuple", "list"):
        parts = [hidden] * max(1, logits_at)
        parts.insert(logits_at, logits)
        return tuple(parts) if form == "tuple" else parts
    if form == "dict":
        return {"hidden": hidden, key: logits}
    if form == "dataclass":
        return Prediction(logits, hidden)
    if form == "namedtuple":
        return Pair(hidden, logits)
    raise ValueError(f"unknown form {form!r}; one of {FORMS}")


class OutputMLP(nn.Module):
    """A one-hidden-layer MLP (taps: ``features.0`` linear, ``features.1`` ReLU) whose output has
    the shape ``form``. Every form computes the same logits from the same weights, so two such
    models built from one seed train to the same numbers whatever their form."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 32,
        form: str = "tensor",
        logits_at: int = 0,
        key: str = "logits",
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.form, self.logits_at, self.key = form, logits_at, key

    def forward(self, x: Tensor) -> Any:
        hidden = self.features(x.flatten(1))
        return wrap(self.head(hidden), hidden, self.form, self.logits_at, self.key)


class AuxOutputMLP(OutputMLP):
    """Like torchvision's Inception: ``(logits, aux_logits)`` in training, the logits alone in
    eval mode."""

    def forward(self, x: Tensor) -> Any:
        logits = super().forward(x)
        return (logits, logits[:, :3].detach()) if self.training else logits


class TokenBag(nn.Module):
    """Reads keyword inputs ``input_ids`` and ``attention_mask`` (as Hugging Face models do):
    mean of the unmasked token embeddings → hidden layer → logits, in the output shape ``form``.
    Taps: ``embed``, ``features.0``, ``features.1``."""

    def __init__(
        self, vocab: int, num_classes: int, dim: int = 16, hidden: int = 32, form: str = "dict"
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.features = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.form = form

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        hidden = self.features(pooled)
        return wrap(self.head(hidden), hidden, self.form)


def token_splits(
    n_train: int = 512, n_test: int = 256, seq_len: int = 12, vocab: int = 50, seed: int = 0
) -> DataSplits:
    """Token sequences of random lengths (padded with id 0, masked) in 2 classes: class 1 when
    the sequence holds more tokens from the upper half of the vocabulary than from the lower
    half (ties are broken by the first token), so labels depend on the tokens and are learnable.
    """
    g = torch.Generator().manual_seed(seed)
    n = n_train + 2 * n_test
    ids = torch.randint(1, vocab, (n, seq_len), generator=g)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
    mask = (torch.arange(seq_len) < lengths.unsqueeze(1)).long()
    ids = ids * mask  # padding id 0
    upper = ((ids >= vocab // 2 + 1) & (mask == 1)).sum(1)
    lower = ((ids < vocab // 2 + 1) & (mask == 1)).sum(1)
    y = ((upper > lower) | ((upper == lower) & (ids[:, 0] > vocab // 2))).long()

    def part(rows: slice) -> ArrayDataset:
        return ArrayDataset({"input_ids": ids[rows], "attention_mask": mask[rows]}, y[rows])

    val_end = n_train + n_test
    return DataSplits(
        "tokens", part(slice(0, n_train)), part(slice(n_train, val_end)), part(slice(val_end, n)), 2
    )


# -- factories named by YAML configs (``type: model_helpers:<name>``) ------------------------------


def output_mlp(
    in_features: int,
    num_classes: int,
    hidden: int = 32,
    form: str = "tensor",
    logits_at: int = 0,
    key: str = "logits",
) -> nn.Module:
    """A factory function with explicit parameters: kdlab fills in in_features and num_classes
    and checks argument names."""
    return OutputMLP(in_features, num_classes, hidden, form, logits_at, key)


def output_mlp_any(**options: Any) -> nn.Module:
    """A factory taking any keyword (``**kwargs``): kdlab cannot check or fill in its arguments."""
    size = options.pop("size", 64)
    return OutputMLP(size, options.pop("classes", 10), **options)


def not_a_model(in_features: int, num_classes: int) -> Any:
    """A factory that returns something that is no nn.Module."""
    return f"an MLP of {in_features} inputs"


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Every metric of ``a`` equals ``b``'s (to float rounding)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-6) for k in a)
