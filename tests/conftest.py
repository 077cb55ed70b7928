"""Shared fixtures: the bundled digits data, loaded once per session (loading imports sklearn)."""

from __future__ import annotations

import pytest

from kdlab.data import DataSplits, load_dataset


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """Digits with the splits ``run_experiment`` draws for seed 0 (default config). Read-only."""
    return load_dataset("digits", seed=0, val_fraction=0.1)
