"""Data functions that configs name as ``source: data_helpers:<function>`` (tests/ is on
sys.path under pytest), and a model that reads keyword inputs.

Imported by tests/test_own_data.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

CLASSES = 3
SIDE = 6


def images(n: int, seed: int, classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, 1, SIDE, SIDE] whose brightness tells the class, and the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    base = (y * (200 // max(classes - 1, 1)))[:, None, None, None]
    noise = rng.integers(0, 40, size=(n, 1, SIDE, SIDE))
    return np.clip(base + noise, 0, 255).astype(np.uint8), y.astype(np.int64)


def arrays(n_train: int = 30, n_test: int = 12, tensors: bool = False) -> dict[str, Any]:
    """The four arrays as a dict (torch tensors with ``tensors``), with class names."""
    x_train, y_train = images(n_train, 0)
    x_test, y_test = images(n_test, 1)
    out: dict[str, Any] = {"x_train": x_train, "y_train": y_train, "x_test": x_test,
                           "y_test": y_test}  # fmt: skip
    if tensors:
        out = {k: torch.from_numpy(v) for k, v in out.items()}
    out["class_names"] = ["dark", "grey", "light"]
    return out


def as_tuple() -> tuple[np.ndarray, ...]:
    """The four arrays as a tuple (x_train, y_train, x_test, y_test)."""
    d = arrays()
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def from_root(root: str, n_train: int = 30) -> dict[str, Any]:
    """Reads nothing, but names its classes after ``root`` (which data.root fills in)."""
    out = arrays(n_train=n_train)
    out["class_names"] = [f"{Path(root).name}-{i}" for i in range(CLASSES)]
    return out


def tokens(n_train: int = 60, n_test: int = 30, length: int = 8, vocab: int = 12) -> dict:
    """Keyword inputs: token ids (int64) and an attention mask; a class is told by its tokens."""

    def split(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        rng = np.random.default_rng(seed)
        y = np.arange(n) % CLASSES
        ids = rng.integers(CLASSES, vocab, size=(n, length))
        ids[:, 0] = y  # the first token is the class
        lengths = rng.integers(2, length + 1, size=n)
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
        return {"input_ids": ids * mask, "attention_mask": mask}, y.astype(np.int64)

    x_train, y_train = split(n_train, 0)
    x_test, y_test = split(n_test, 1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def wrong_type() -> str:
    return "x_train.npy"


def three_arrays() -> tuple[np.ndarray, ...]:
    return as_tuple()[:3]


def raises() -> dict:
    raise RuntimeError("the data server is down")


class BagOfTokens(nn.Module):
    """Mean of the embeddings of the unmasked tokens → logits; reads keyword inputs."""

    def __init__(self, vocab: int = 12, num_classes: int = CLASSES, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)
