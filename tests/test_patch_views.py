"""Allen-Zhu & Li's multi-view construction and their smoothed-ReLU patch network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.data import load_dataset
from kdlab.data.patch_views import (
    PatchViews,
    bundled_test_set,
    feature_dictionary,
    make_patch_views,
)
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.models.patchnet import PatchNet, smoothed_relu

QUIET = PatchViews(noise=0.0)  # no patch noise: every planted feature can be read back exactly


def planted(data, spec: PatchViews) -> np.ndarray:
    """[n, classes, 2, patches]: ⟨x_p, v_{j,l}⟩ for every sample, feature and patch."""
    return np.einsum("npd,jld->njlp", data.x[:, 0], feature_dictionary(spec))


def test_features_are_orthonormal_and_shared_by_every_split() -> None:
    v = feature_dictionary(PatchViews()).reshape(-1, 64)
    np.testing.assert_allclose(v @ v.T, np.eye(20), atol=1e-5)
    np.testing.assert_array_equal(feature_dictionary(PatchViews()), feature_dictionary(QUIET))


def test_samples_carry_their_class_features_in_distinct_patches() -> None:
    data = make_patch_views(400, seed=3, spec=QUIET, single_view=0.5)
    dots = planted(data, QUIET)
    rows = np.arange(400)
    own = dots[rows, data.y]  # [n, 2, patches]
    np.testing.assert_allclose(own.max(2), data.strengths, atol=1e-5)  # strength 1 or ρ
    assert (own.argmax(2)[:, 0] != own.argmax(2)[:, 1]).all()  # each in a patch of its own
    multi = data.view == 0
    np.testing.assert_allclose(data.strengths[multi], 1.0)
    np.testing.assert_allclose(np.sort(data.strengths[~multi], 1), [[0.1, 1.0]] * (~multi).sum())
    # feature noise: exactly 2 patches carry another class's feature, at strength γ
    others = dots.copy()
    others[rows, data.y] = 0
    assert (np.isclose(others.max((1, 2)), 0.3, atol=1e-5).sum(1) == 2).all()


def test_view_proportions_follow_mu() -> None:
    data = make_patch_views(20000, seed=0)
    assert abs((data.view > 0).mean() - 0.05) < 0.01
    assert abs((data.view == 1).mean() - (data.view == 2).mean()) < 0.01
    assert np.bincount(data.y).min() > 1800  # ten classes, balanced in expectation
    noise = make_patch_views(2000, seed=0).x[:, 0] - make_patch_views(2000, 0, QUIET).x[:, 0]
    assert abs(noise.std() - 1.0 / 8.0) < 0.005  # σ/√d with σ = 1, d = 64


def test_bundled_source_loads_with_a_half_single_view_test_set() -> None:
    data = load_dataset("multiview-patches", val_fraction=0.1)
    assert tuple(data.train.x.shape[1:]) == (1, 16, 64) and data.num_classes == 10
    assert len(data.train) + len(data.val) == 1000 and len(data.test) == 4000
    test = bundled_test_set()
    assert abs((test.view > 0).mean() - 0.5) < 0.03
    np.testing.assert_array_equal(data.test.y.numpy(), test.y)


@pytest.mark.parametrize(
    "options", [{"classes": 40, "dim": 64}, {"patches": 3}, {"single_view": 1.5}]
)
def test_impossible_sizes_are_refused(options) -> None:
    with pytest.raises(ConfigError, match=r"patch-view|single_view"):
        make_patch_views(10, 0, PatchViews(**options))


def reference_relu(z: float, q: int, rho: float) -> float:
    if z <= 0:
        return 0.0
    return z**q / (q * rho ** (q - 1)) if z <= rho else z - (1 - 1 / q) * rho


@pytest.mark.parametrize("q,rho", [(3, 1.0), (4, 0.5)])
def test_smoothed_relu_is_the_papers_and_continuously_differentiable(q, rho) -> None:
    z = torch.linspace(-2, 3, 501, dtype=torch.float64, requires_grad=True)
    y = smoothed_relu(z, q, rho)
    expected = [reference_relu(float(v), q, rho) for v in z.detach()]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(y.sum(), z)
    knee = torch.tensor([rho - 1e-7, rho + 1e-7], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(smoothed_relu(knee, q, rho).sum(), knee)
    assert abs(g[0] - g[1]) < 1e-5 and abs(g[1] - 1.0) < 1e-12  # slope 1 on both sides
    assert grad[z.detach() < 0].abs().max() == 0


def test_patchnet_sums_neurons_and_patches() -> None:
    torch.manual_seed(0)
    net = PatchNet(num_classes=3, input_shape=(1, 5, 6), neurons=2).double()
    x = torch.randn(4, 1, 5, 6, dtype=torch.float64)
    w = net.weight.detach().view(3, 2, 6)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for b in range(4):
        for i in range(3):
            for r in range(2):
                for p in range(5):
                    z = float(x[b, 0, p] @ w[i, r])
                    expected[b, i] += reference_relu(z, 3, 1.0)
    torch.testing.assert_close(net(x), expected)
    torch.testing.assert_close(net(x[:, 0]), expected)  # [B, P, d] works too


def test_patchnet_builds_from_a_config_and_refuses_bad_options() -> None:
    model = build_model({"type": "patchnet", "neurons": 2}, (1, 16, 64), num_classes=10)
    assert tuple(model.weight.shape) == (20, 64)
    with pytest.raises(ConfigError, match="power ≥ 2"):
        PatchNet(input_shape=(1, 4, 4), power=1)
