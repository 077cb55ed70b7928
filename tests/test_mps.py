"""Tests of the MPS students: exactness against dense contraction, multilinearity, stacking,
expressivity, stability at 784 sites, input validation and the linear-model initialisation."""

from __future__ import annotations

import pytest
import torch

from kdlab.models.mps import MPS, MPSInputError, StackedMPS
from kdlab.models.mps_contract import choose_strategy, embed

F64 = torch.float64


def dense_theta(model: MPS) -> torch.Tensor:
    """Θ[c, j_1, …, j_d] built from the cores with einsum (tiny d only)."""
    cores, m, bnd = model.cores, model.output_site, model.boundary
    d, chi, p, _ = cores.shape
    left = bnd.reshape(1, chi)  # [J, χ] with J the flattened physical indices so far
    for i in range(m):
        left = torch.einsum("Ja,ajb->Jjb", left, cores[i]).reshape(-1, chi)
    state = torch.einsum("Ja,acb->Jcb", left, model.output).reshape(-1, chi)
    for i in range(m, d):
        state = torch.einsum("Ja,ajb->Jjb", state, cores[i]).reshape(-1, chi)
    theta = (state @ bnd).reshape((p,) * m + (model.num_classes,) + (p,) * (d - m))
    return theta.movedim(m, 0)


def dense_output(model: MPS, x: torch.Tensor) -> torch.Tensor:
    """⟨Θ_c, φ(x_1) ⊗ ⋯ ⊗ φ(x_d)⟩ by contracting Θ one site at a time."""
    phi = embed(x, model.feature_map, model.degree)  # [B, d, p]
    out = dense_theta(model).unsqueeze(0).expand(x.shape[0], *(-1,) * (x.shape[1] + 1))
    for i in range(x.shape[1]):
        out = torch.einsum("bcj...,bj->bc...", out, phi[:, i])
    return out


def half_norms(model: MPS, x: torch.Tensor) -> torch.Tensor:
    """‖L(x)‖·‖R(x)‖ by explicit per-sample matrix products."""
    phi = embed(x, model.feature_map, model.degree)
    mats = torch.einsum("bdj,dajc->bdac", phi, model.cores)
    m, bnd = model.output_site, model.boundary
    norms = []
    for b in range(x.shape[0]):
        left, right = bnd.clone(), bnd.clone()
        for i in range(m):
            left = left @ mats[b, i]
        for i in range(x.shape[1] - 1, m - 1, -1):
            right = mats[b, i] @ right
        norms.append(left.norm() * right.norm())
    return torch.stack(norms)


def set_cores(model: MPS, cores: torch.Tensor) -> None:
    with torch.no_grad():
        model.delta.copy_((cores - model.base) / model.core_scale)


def lbfgs_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int) -> float:
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=iters, tolerance_grad=1e-14,
        tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x).squeeze(-1) - y).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((model(x).squeeze(-1) - y).pow(2).mean().sqrt())


@pytest.mark.parametrize("feature_map", ["affine", "trig", "poly"])
@pytest.mark.parametrize("contraction", ["vector", "fused", "tree"])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_matches_dense_contraction(feature_map: str, contraction: str, group: int) -> None:
    torch.manual_seed(0)
    for m in (0, 2, 5):
        model = MPS(
            5, 3, 3, feature_map, degree=3, normalize="none", contraction=contraction,
            group=group, output_site=m, init_std=3.0, dtype=F64,
        )  # fmt: skip
        x = torch.rand(6, 5, dtype=F64)
        ref = dense_output(model, x)
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(model(x), ref, rtol=1e-10, atol=1e-12)
        model.normalize = "per_sample"
        scaled = ref / half_norms(model, x).unsqueeze(-1)
        torch.testing.assert_close(model(x), scaled, rtol=1e-10, atol=1e-12)


def test_per_sample_drops_only_a_positive_per_sample_factor() -> None:
    torch.manual_seed(1)
    model = MPS(40, 4, 5, normalize="none", init_std=2.0, dtype=F64)
    x = torch.rand(8, 40, dtype=F64)
    exact = model(x)
    g, log_scale = model.forward_log(x)
    torch.testing.assert_close(g * log_scale.exp().unsqueeze(-1), exact)
    assert torch.equal(g.argmax(-1), exact.argmax(-1))
    # Scaling one core by 3 scales f by 3 and leaves the per-sample logits unchanged.
    set_cores(
        model,
        model.cores.detach() * torch.where(torch.arange(40) == 7, 3.0, 1.0)[:, None, None, None],
    )
    torch.testing.assert_close(model(x), 3 * exact)
    torch.testing.assert_close(model.forward_log(x)[0], g)


def test_affine_is_multilinear_and_stacked_is_not() -> None:
    torch.manual_seed(2)
    model = MPS(6, 2, 4, normalize="none", init_std=3.0, dtype=F64)
    base = torch.rand(6, dtype=F64)
    for k in range(6):
        x = base.repeat(3, 1)
        x[:, k] = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
        f = model(x)
        torch.testing.assert_close(f[1], (f[0] + f[2]) / 2, rtol=1e-12, atol=1e-12)
        assert (f[2] - f[0]).abs().max() > 1e-3  # x_k actually matters
    stacked = StackedMPS(6, 2, hidden=4, bond_dim=4, init_std=3.0, dtype=F64)
    x = base.repeat(3, 1)
    x[:, 0] = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    f = stacked(x)
    assert ((f[1] - (f[0] + f[2]) / 2).abs() > 1e-6).any()


def test_stacked_copies_give_exact_square() -> None:
    """Seed eq. 13: layer 1 outputs two copies of x_1, layer 2 multiplies them: x_1²."""
    stacked = StackedMPS(3, 1, hidden=2, bond_dim=2, link="linear", normalize="none", dtype=F64)
    weight = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    stacked.layer1 = MPS.from_linear(weight, None, 3, noise=0.0, dtype=F64)
    cores = torch.zeros(2, 2, 2, 2, dtype=F64)
    cores[:, 0, 1, 0] = 1.0  # M_i(z) = z_i · e_0 e_0ᵀ
    set_cores(stacked.layer2, cores)
    with torch.no_grad():
        stacked.layer2.output.zero_()
        stacked.layer2.output[0, 0, 0] = 1.0
    x = torch.rand(10, 3, dtype=F64)
    torch.testing.assert_close(stacked(x).squeeze(-1), x[:, 0] ** 2, rtol=1e-12, atol=1e-12)


def test_stacked_fits_square_where_single_mps_cannot() -> None:
    grid = torch.linspace(0, 1, 5, dtype=F64)
    x = torch.cartesian_prod(grid, grid)
    y = x[:, 0] ** 2
    # Best multilinear fit (what any affine MPS can represent) of x_1² on the grid.
    design = torch.stack((torch.ones_like(y), x[:, 0], x[:, 1], x[:, 0] * x[:, 1]), 1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution
    bound = float((design @ coef).squeeze(1).sub(y).pow(2).mean().sqrt())
    assert bound > 0.1
    torch.manual_seed(0)
    single = MPS(2, 1, 4, normalize="none", dtype=F64)
    assert lbfgs_fit(single, x, y, 150) >= bound * (1 - 1e-9)
    torch.manual_seed(1)
    stacked = StackedMPS(2, 1, hidden=4, bond_dim=4, dtype=F64)
    assert lbfgs_fit(stacked, x, y, 300) < bound / 50


def test_single_mps_fits_random_multilinear_polynomial() -> None:
    torch.manual_seed(0)
    coef = torch.randn(2, 2, 2, 2, dtype=F64)

    def target(x: torch.Tensor) -> torch.Tensor:
        phi = embed(x, "affine")
        return torch.einsum("abcd,na,nb,nc,nd->n", coef, *phi.unbind(1))

    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=F64)] * 4)
    x = torch.cat((corners, torch.rand(48, 4, dtype=F64)))
    model = MPS(4, 1, 4, normalize="none", dtype=F64)
    lbfgs_fit(model, x, target(x), 500)
    test = torch.rand(200, 4, dtype=F64)
    with torch.no_grad():
        assert (model(test).squeeze(-1) - target(test)).abs().max() < 1e-6


@pytest.mark.parametrize("contraction", ["vector", "fused", "tree"])
def test_stable_at_784_sites(contraction: str) -> None:
    torch.manual_seed(0)
    model = MPS(784, 10, 10, contraction=contraction)
    x = torch.rand(16, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (16, 10)
    assert torch.isfinite(logits).all()
    assert logits.std(0).mean() > 0.05  # inputs are told apart
    torch.nn.functional.cross_entropy(logits, torch.arange(16) % 10).backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    exact = MPS(784, 10, 10, normalize="none", contraction=contraction)
    exact.load_state_dict(model.state_dict())
    assert torch.isfinite(exact(x)).all()
    for fmap in ("trig", "poly"):
        assert torch.isfinite(MPS(784, 10, 10, fmap, contraction=contraction)(x)).all()


def test_strategies_agree_at_784_sites_and_rule() -> None:
    torch.manual_seed(3)
    model = MPS(784, 10, 6, contraction="fused")
    x = torch.rand(8, 784)
    ref = model(x)
    for contraction, group in (
        ("tree", 4),
        ("tree", 1),
        ("fused", 2),
        ("vector", 1),
        ("auto", None),
    ):
        model.contraction, model.group = contraction, group
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)
    assert choose_strategy(2, 2)[0] == "tree" and choose_strategy(10, 2) == ("vector", 4)
    assert choose_strategy(30, 2) == ("fused", 2) and choose_strategy(48, 2) == ("fused", 1)


def test_stacked_784_finite_gradients() -> None:
    torch.manual_seed(0)
    model = StackedMPS(784, 10, hidden=16, bond_dim=6)
    logits = model(torch.rand(8, 784))
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("contraction", ["vector", "fused", "tree"])
@pytest.mark.parametrize("normalize", ["none", "per_sample"])
def test_gradients_match_finite_differences(contraction: str, normalize: str) -> None:
    torch.manual_seed(0)
    model = MPS(24, 2, 3, normalize=normalize, contraction=contraction, group=1, dtype=F64)
    x = torch.rand(3, 24, dtype=F64, requires_grad=True)  # input gradients too (adversarial KD)

    def f(delta: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {"delta": delta, "output": output}, (x,))

    params = (model.delta.detach().requires_grad_(), model.output.detach().requires_grad_(), x)
    assert torch.autograd.gradcheck(f, params)


def test_bad_inputs_raise_clear_errors() -> None:
    model = MPS(784, 10, 4)
    with pytest.raises(MPSInputError, match=r"\[0, 1\].*min=-0\.5.*max=3.*pixels / 255"):
        model(torch.linspace(-0.5, 3.0, 784).repeat(2, 1))
    with pytest.raises(MPSInputError, match="must lie in"):
        model(torch.full((2, 784), float("nan")))
    with pytest.raises(MPSInputError, match="expects 784 input features per sample, got 100"):
        model(torch.rand(2, 10, 10))
    with pytest.raises(ValueError, match="bond_dim must be an integer >= 1, got 0"):
        MPS(10, 2, 0)
    with pytest.raises(
        ValueError, match="unknown feature map 'fourier'; valid: affine, trig, poly"
    ):
        MPS(10, 2, 3, "fourier")
    with pytest.raises(ValueError, match="unknown normalize 'exact'"):
        MPS(10, 2, 3, normalize="exact")
    with pytest.raises(ValueError, match="unknown contraction"):
        MPS(10, 2, 3, contraction="zigzag")
    with pytest.raises(ValueError, match="unknown link"):
        StackedMPS(10, 2, link="relu")
    MPS(784, 10, 4, check_inputs=False)(torch.full((1, 784), 2.0))  # opt-out works


def test_from_linear_reproduces_linear_model() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(1, 5, dtype=F64), torch.randn(1, dtype=F64)
    x = torch.rand(7, 5, dtype=F64)
    model = MPS.from_linear(w, b, 2, dtype=F64)
    assert model.bond_dim == 2
    torch.testing.assert_close(model(x), x @ w.T + b, rtol=1e-12, atol=1e-12)
    w, b = torch.randn(10, 784, dtype=F64) / 28, torch.randn(10, dtype=F64)
    x = torch.rand(5, 784, dtype=F64)
    ref = x @ w.T + b
    for contraction in ("vector", "fused", "tree"):
        exact = MPS.from_linear(w, b, 11, contraction=contraction, dtype=F64)
        torch.testing.assert_close(exact(x), ref, rtol=1e-12, atol=1e-12)
        padded = MPS.from_linear(w, b, 16, noise=1e-4, contraction=contraction, dtype=F64)
        err = (padded(x) - ref).abs().max()
        assert 0 < err < 1e-3 * ref.abs().max()
    assert torch.equal(padded.forward_log(x)[0].argmax(-1), ref.argmax(-1))
    with pytest.raises(ValueError, match="needs bond_dim >= 11"):
        MPS.from_linear(w, b, 10)


def test_the_mps_classes_are_exported_where_the_readme_says() -> None:
    import kdlab.models
    from kdlab.models import build_model

    assert kdlab.models.MPS is MPS and kdlab.models.StackedMPS is StackedMPS
    built = build_model({"type": "mps", "bond_dim": 3}, (4,), 2, seed=0)
    assert type(built) is MPS and built.bond_dim == 3
