"""Shared fixtures: one intra-op thread, and the bundled digits data loaded once per session."""

from __future__ import annotations

import pytest
import torch

from kdlab.data import DataSplits, load_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors and models are tiny: on a shared 2-core machine intra-op threads only add
    contention (measured: the suite ran several times slower with torch's default of 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """Digits with the splits ``run_experiment`` draws for seed 0 (default config). Read-only."""
    return load_dataset("digits", seed=0, val_fraction=0.1)
