"""The multi-view generator of seed 001 §9: the seed's table, its proportions, the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.data import load_dataset
from kdlab.data.multiview import VIEWS, feature_strengths, make_multiview, view_accuracy
from kdlab.errors import ConfigError

TABLE = {  # (class, view) → strengths of v1..v4, copied from the seed
    (0, 0): (1, 1, 0.1, 0.1), (0, 1): (1, 0, 0.1, 0.1), (0, 2): (0, 1, 0.1, 0.1),
    (1, 0): (0.1, 0.1, 1, 1), (1, 1): (0.1, 0.1, 1, 0), (1, 2): (0.1, 0.1, 0, 1),
}  # fmt: skip


def recovered_strengths(x: np.ndarray) -> np.ndarray:
    """Noise-free data: strength of feature k = the largest quarter-k mean over patches."""
    n, _, patches, width = x.shape
    q = width // 4
    quarters = x[:, 0].reshape(n, patches, 4, q).mean(3)  # [n, patches, feature]
    return quarters.max(1)


def test_samples_follow_the_seeds_table() -> None:
    data = make_multiview(3000, seed=5, patches=6, width=8, noise=0.0)
    for (label, view), row in TABLE.items():
        np.testing.assert_allclose(feature_strengths(label, view), row)
        chosen = (data.y == label) & (data.view == view)
        assert chosen.any()
        np.testing.assert_allclose(data.strengths[chosen], np.tile(row, (chosen.sum(), 1)))
    np.testing.assert_allclose(recovered_strengths(data.x), data.strengths, rtol=1e-6)
    # every feature shown sits in its own patch; the other patches are empty
    nonzero_patches = (data.x[:, 0].sum(2) > 0).sum(1)
    np.testing.assert_array_equal(nonzero_patches, (data.strengths > 0).sum(1))


def test_view_and_class_proportions_match_the_seed() -> None:
    data = make_multiview(40_000, seed=1)
    freq = np.bincount(data.view, minlength=3) / len(data.view)
    np.testing.assert_allclose(freq, [0.8, 0.1, 0.1], atol=0.01)  # ≈ 6 binomial σ
    assert abs(data.y.mean() - 0.5) < 0.01


def test_generator_is_deterministic_in_range_and_checked() -> None:
    a, b, c = make_multiview(50, 3), make_multiview(50, 3), make_multiview(50, 4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.view, b.view)
    assert not np.array_equal(a.x, c.x)
    assert a.x.dtype == np.float32 and a.x.min() >= 0.0 and a.x.max() <= 1.0
    assert a.x.shape == (50, 1, 16, 16)
    with pytest.raises(ConfigError, match="width divisible by 4"):
        make_multiview(10, 0, width=10)
    with pytest.raises(ConfigError, match="patches ≥ 4"):
        make_multiview(10, 0, patches=3)
    with pytest.raises(ConfigError, match="noise must be in"):
        make_multiview(10, 0, noise=1.5)


class FirstFeatureOnly(nn.Module):
    """The seed's 'single model': class 0 iff feature v1 is present; v2 is never looked at."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        has_v1 = recovered_strengths(x.numpy())[:, 0] > 0.5
        logits = torch.zeros(len(x), 2)
        logits[torch.from_numpy(has_v1), 0] = 1.0
        logits[torch.from_numpy(~has_v1), 1] = 1.0
        return logits


def test_view_accuracy_exposes_a_model_that_learned_one_feature_per_class() -> None:
    data = make_multiview(4000, seed=2, noise=0.0)
    acc = view_accuracy(FirstFeatureOnly(), data, batch_size=512)
    assert set(acc) == set(VIEWS)
    assert acc["multi"] == 1.0 and acc["first only"] == 1.0
    # second-only samples: right for class 1 (no v1), wrong for class 0 → about half
    second = data.view == 2
    assert acc["second only"] == pytest.approx(float((data.y[second] == 1).mean()))
    assert 0.35 < acc["second only"] < 0.65


def test_multiview_is_a_bundled_source() -> None:
    data = load_dataset("multiview", seed=0, val_fraction=0.1)
    assert data.num_classes == 2 and data.input_shape == (1, 16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (1800, 200, 2000)
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    again = load_dataset("multiview", seed=1, val_fraction=0.1)
    assert torch.equal(data.test.x, again.test.x)  # one test set for every run seed
