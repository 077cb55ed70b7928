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
from typing import Any

import numpy as np
import torch

from kdlab.errors import KdlabError

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


def rng_state() -> dict[str, Any]:
    """Every random-number state, in types ``torch.load(weights_only=True)`` reads back.

    numpy's state ``(name, uint32 key array, pos, has_gauss, cached_gaussian)`` is stored with
    the key as an int64 tensor and the rest as plain Python values: no numpy object is pickled.
    """
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": (version, tuple(internal), gauss_next),
    }  # fmt: skip


def set_rng_state(state: Any) -> None:
    """Restore what :func:`rng_state` saved; an older kdlab's format raises ``KdlabError``."""
    saved = state.get("numpy") if isinstance(state, dict) else None
    if not (
        isinstance(saved, (tuple, list))
        and len(saved) == 5
        and isinstance(saved[1], torch.Tensor)
        and isinstance(state.get("torch"), torch.Tensor)
        and isinstance(state.get("python"), (tuple, list))
    ):
        raise KdlabError(
            "the checkpoint's random-number state is not in this kdlab's format: it was written "
            "by an older kdlab and cannot be resumed safely; start the run again (delete the "
            "checkpoint)"
        )
    name, key, pos, has_gauss, cached = saved
    torch.set_rng_state(state["torch"])
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)  # resumed on the same GPUs: dropout continues exactly


__all__ = [
    "SEED_STRIDE",
    "derived_seed",
    "rng_state",
    "seed_everything",
    "seeded",
    "set_rng_state",
]
