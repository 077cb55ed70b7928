"""Seeds: the global streams for a run, and derived, isolated streams for building models.

Everything a seed decides goes through here, so that one experiment seed reproduces one set of
numbers: ``seed_everything`` at the start of a training run, ``seeded`` around building a model
whose initial weights must depend on a seed alone (not on what ran before), and ``derived_seed``
for the extra models one seed needs (ensemble members, peers, assistants, born-again
generations): model ``position`` of seed ``s`` draws from ``s + SEED_STRIDE·position``, far
enough apart that the seeds of neighbouring experiment seeds never collide in practice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: Distance between the seeds of the extra models built for one experiment seed.
SEED_STRIDE = 1000


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally make torch choose deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def derived_seed(seed: int, position: int) -> int:
    """The seed of extra model ``position`` (≥ 1) of experiment seed ``seed``; 0 gives ``seed``."""
    return seed + SEED_STRIDE * position


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block torch draws from ``seed``; the global random stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


__all__ = ["SEED_STRIDE", "derived_seed", "seed_everything", "seeded"]
