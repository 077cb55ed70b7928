"""The peers' conventions (RepDistiller / mdistiller / torchdistill) offered as options.

Each option is checked against an explicit reference written here (loops in numpy / plain
Python from the formula, or ``F.mse_loss`` for the peers' ``nn.MSELoss``): the hint's ``mse``
reduction, the ``regressor`` adapter's layers and shapes, attention transfer's ``pool_larger``,
PKT with the diagonal, LSP with the authors' kernel, lists of layer pairs, and the functional
forms in kdlab.losses.functional.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feature_helpers import outputs, rand, value
from kdlab.errors import ConfigError
from kdlab.losses import (
    PKT,
    TERMS,
    AttentionTransfer,
    FeatureTerm,
    Hint,
    LocalStructure,
    build_term,
    check_batch_sizes,
    register_term,
)
from kdlab.losses import functional as KF
from kdlab.losses.base import Objective
from kdlab.losses.connectors import ADAPTERS, build_connector, check_adapter, regressor
from kdlab.losses.pairs import LayerPairs, takes_single_paths
from kdlab.types import Batch, ModelOutput

B = 5


# -- hint: reduction mse ----------------------------------------------------------------------


def test_hint_mse_is_the_peers_mse_loss_and_the_other_reductions_scale_it() -> None:
    s, t = rand(B, 3, 4, 4, seed=1), rand(B, 3, 4, 4, seed=2)
    mse = float(F.mse_loss(s, t))
    assert value(Hint(student="s", teacher="t", reduction="mse"), s, t) == pytest.approx(mse)
    assert value(Hint(student="s", teacher="t", reduction="mean"), s, t) == pytest.approx(mse / 2)
    batchmean = value(Hint(student="s", teacher="t"), s, t)
    assert batchmean == pytest.approx(mse * 3 * 4 * 4 / 2)  # ½·C·H·W × mse
    assert float(KF.hint(s, t, "mse")) == pytest.approx(mse)
    with pytest.raises(ConfigError, match="batchmean, mean, mse"):
        Hint(student="s", teacher="t", reduction="sum")


# -- regressor --------------------------------------------------------------------------------


def layer_types(connector: nn.Module) -> list[type]:
    return [type(m) for m in connector]


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "first", "kernel", "stride"),
    [
        ((4, 6, 6), (8, 6, 6), nn.Conv2d, (1, 1), (1, 1)),  # equal: the peers' 1 + H_S − H_T
        ((4, 6, 6), (8, 3, 3), nn.Conv2d, (3, 3), (2, 2)),  # student twice the teacher
        ((4, 7, 7), (8, 14, 14), nn.ConvTranspose2d, (4, 4), (2, 2)),  # student half
        ((4, 7, 7), (8, 3, 3), nn.Conv2d, (5, 5), (1, 1)),  # larger, other ratio: valid conv
    ],
)
def test_regressor_layers_and_output_shape(s_shape, t_shape, first, kernel, stride) -> None:
    connector = build_connector("regressor", s_shape, t_shape, "all")
    assert layer_types(connector) == [first, nn.BatchNorm2d, nn.ReLU]
    assert connector[0].kernel_size == kernel and connector[0].stride == stride
    assert connector[0].out_channels == t_shape[0]
    out = connector(torch.randn(3, *s_shape))
    assert tuple(out.shape[1:]) == t_shape and out.min() >= 0  # ReLU output


def test_regressor_for_vectors_and_its_errors() -> None:
    connector = regressor((5,), (7,))
    assert layer_types(connector) == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert connector(torch.randn(4, 5)).shape == (4, 7)
    with pytest.raises(ConfigError, match=r"5×5 to a teacher map of 7×7.*adapter: conv"):
        regressor((4, 5, 5), (8, 7, 7))
    with pytest.raises(ConfigError, match="matching rank"):
        regressor((4, 5, 5), (8,))
    assert "regressor" in ADAPTERS and check_adapter("regressor") == "regressor"


def test_every_feature_term_offers_the_regressor_and_trains_it() -> None:
    s, t = rand(B, 3, 8, 8, seed=3), rand(B, 6, 4, 4, seed=4).abs()
    for kind in ("hint", "at", "channel_attention", "pkt", "rkd_distance"):
        term = build_term({"type": kind, "student": "s", "teacher": "t", "adapter": "regressor"})
        so, to, batch = outputs(s, t)
        term.prepare(so, to)
        term.double()
        assert layer_types(term.connector) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU], kind
        term(so, to, batch).backward()
        assert term.connector[0].weight.grad.abs().sum() > 0, kind


# -- attention transfer: pool_larger ----------------------------------------------------------


def block_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Average-pool [B, C, H, W] to size×size by explicit equal blocks (H divisible by size)."""
    b, c, h, _ = a.shape
    k = h // size
    out = np.zeros((b, c, size, size))
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = a[:, :, i * k : (i + 1) * k, j * k : (j + 1) * k].mean(axis=(2, 3))
    return out


def at_reference(s: np.ndarray, t: np.ndarray) -> float:
    total, count = 0.0, 0
    for b in range(len(s)):
        qs = (s[b] ** 2).sum(0).ravel()
        qt = (t[b] ** 2).sum(0).ravel()
        qs, qt = qs / np.linalg.norm(qs), qt / np.linalg.norm(qt)
        for j in range(len(qs)):
            total += (qs[j] - qt[j]) ** 2
            count += 1
    return total / count


def test_at_pool_larger_pools_the_teacher_when_the_student_map_is_smaller() -> None:
    s, t = rand(B, 3, 2, 2, seed=5), rand(B, 6, 4, 4, seed=6)
    term = AttentionTransfer(student="s", teacher="t", resize="pool_larger")
    ref = at_reference(s.numpy(), block_mean(t.numpy(), 2))
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert len(term.connector) == 0  # nothing trainable, no resize of the student
    default = value(AttentionTransfer(student="s", teacher="t"), s, t)
    assert abs(default - ref) > 1e-6  # the default upsamples the student instead
    assert float(KF.attention_transfer(s, t, 2.0, "pool_larger")) == pytest.approx(ref)


def test_at_pool_larger_pools_the_student_when_larger_like_the_default() -> None:
    s, t = rand(B, 3, 8, 8, seed=7), rand(B, 6, 4, 4, seed=8)
    ref = at_reference(block_mean(s.numpy(), 4), t.numpy())
    pooled = value(AttentionTransfer(student="s", teacher="t", resize="pool_larger"), s, t)
    assert pooled == pytest.approx(ref, rel=1e-10)
    assert value(AttentionTransfer(student="s", teacher="t"), s, t) == pytest.approx(ref)
    with pytest.raises(ConfigError, match="student, pool_larger"):
        AttentionTransfer(student="s", teacher="t", resize="teacher")


# -- PKT with the diagonal --------------------------------------------------------------------


def pkt_diagonal_reference(s: np.ndarray, t: np.ndarray, reduction: str) -> float:
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    n = len(s)

    def probabilities(z):
        k = [[(z[i] @ z[j] / np.linalg.norm(z[i]) / np.linalg.norm(z[j]) + 1) / 2
              for j in range(n)] for i in range(n)]  # fmt: skip
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    ps, pt = probabilities(s), probabilities(t)
    total = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(n) for j in range(n))
    return total / (n * n) if reduction == "mean" else total / n


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_pkt_with_diagonal_matches_a_loop_reference(reduction) -> None:
    s, t = rand(B, 6, seed=9), rand(B, 4, 2, seed=10)
    term = PKT(student="s", teacher="t", diagonal=True, reduction=reduction)
    ref = pkt_diagonal_reference(s.numpy(), t.numpy(), reduction)
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert float(KF.pkt(s, t, diagonal=True, reduction=reduction)) == pytest.approx(ref)
    without = value(PKT(student="s", teacher="t", reduction=reduction), s, t)
    assert abs(without - ref) > 1e-6
    with pytest.raises(ConfigError, match="batchmean, mean"):
        PKT(student="s", teacher="t", reduction="sum")


# -- LSP with the authors' kernel -------------------------------------------------------------


def lsp_exp_l1_reference(s: np.ndarray, t: np.ndarray, k: int | None, tau: float) -> float:
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    n = len(s)
    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: np.linalg.norm(t[i] - t[j]))
        hood = others if k is None else others[:k]

        def ls(z, i=i, hood=hood):
            e = {j: math.exp(-np.abs(z[i] - z[j]).sum() / tau) for j in hood}  # the kernel
            norm = sum(math.exp(v) for v in e.values())  # softmax over the kernel values
            return {j: math.exp(e[j]) / norm for j in hood}

        lt, lss = ls(t), ls(s)
        total += sum(lt[j] * math.log(lt[j] / lss[j]) for j in hood)
    return total / n


@pytest.mark.parametrize(("k", "tau"), [(None, None), (2, 3.0)])
def test_lsp_authors_kernel_matches_a_loop_reference(k, tau) -> None:
    s, t = rand(6, 4, seed=11), rand(6, 3, seed=12)
    term = LocalStructure(student="s", teacher="t", kernel="exp_l1", neighbours=k, temperature=tau)
    ref = lsp_exp_l1_reference(s.numpy(), t.numpy(), k, 100.0 if tau is None else tau)
    assert value(term, s, t) == pytest.approx(ref, rel=1e-9)
    assert float(KF.lsp(s, t, k, "exp_l1", tau)) == pytest.approx(ref, rel=1e-9)
    assert value(LocalStructure(student="s", teacher="t", kernel="exp_l1"), t, t) == 0.0


def test_lsp_temperature_default_depends_on_kernel() -> None:
    assert LocalStructure(student="s", teacher="t").temperature == 1.0
    assert LocalStructure(student="s", teacher="t", kernel="exp_l1").temperature == 100.0
    with pytest.raises(ConfigError, match="distance, linear, exp_l1"):
        LocalStructure(student="s", teacher="t", kernel="l1")


# -- lists of layer pairs ---------------------------------------------------------------------


def two_layer_outputs() -> tuple[ModelOutput, ModelOutput, Batch]:
    s = {"s0": rand(B, 3, 8, 8, seed=13), "s1": rand(B, 5, 4, 4, seed=14)}
    t = {"t0": rand(B, 6, 4, 4, seed=15), "t1": rand(B, 7, 4, 4, seed=16)}
    logits = torch.zeros(B, 3, dtype=torch.float64)
    return ModelOutput(logits, s), ModelOutput(logits, t), Batch(torch.zeros(B, 1), None)


@pytest.mark.parametrize("kind", ["hint", "at", "pkt"])
def test_layer_pairs_sum_single_terms_with_the_same_adapters(kind) -> None:
    so, to, batch = two_layer_outputs()
    spec = {"type": kind, "adapter": "regressor", "weight": 3.0}
    pairs = build_term({**spec, "student": ["s0", "s1"], "teacher": ["t0", "t1"]})
    assert isinstance(pairs, LayerPairs) and pairs.name == kind and pairs.weight == 3.0
    assert pairs.student_taps == ("s0", "s1") and pairs.teacher_taps == ("t0", "t1")
    pairs.prepare(so, to, batch)
    pairs.double()
    total = 0.0
    for k, (sp, tp) in enumerate([("s0", "t0"), ("s1", "t1")]):
        single = build_term({**spec, "student": sp, "teacher": tp})
        single.prepare(so, to, batch)
        single.double()
        single.load_state_dict(pairs.pairs[k].state_dict())  # the same adapter weights
        total += float(single(so, to, batch).detach())
    assert float(pairs(so, to, batch).detach()) == pytest.approx(total, rel=1e-12)
    assert len(list(pairs.parameters())) == 2 * 3  # conv weight + BN weight/bias per pair
    loss = Objective([pairs])(so, to, batch)
    assert float(loss.total.detach()) == pytest.approx(3.0 * total, rel=1e-12)


def test_layer_pairs_errors_and_min_batch() -> None:
    base = {"type": "rkd_angle"}
    with pytest.raises(ConfigError, match="student lists 2 layers and teacher 1"):
        build_term({**base, "student": ["a", "b"], "teacher": ["x"]})
    with pytest.raises(ConfigError, match="both lists of equal length"):
        build_term({**base, "student": ["a", "b"], "teacher": "x"})
    with pytest.raises(ConfigError, match="not lists of lists"):
        build_term({**base, "student": [["a"]], "teacher": [["x"]]})
    with pytest.raises(ConfigError, match="at least one"):
        build_term({**base, "student": [], "teacher": []})
    with pytest.raises(ConfigError, match="has no parameter"):
        build_term({**base, "student": ["a"], "teacher": ["x"], "bogus": 1})
    pairs = build_term({**base, "student": ["a", "b"], "teacher": ["x", "y"]})
    assert pairs.min_batch == 3
    with pytest.raises(ConfigError, match="need ≥ 3 samples per batch"):
        check_batch_sizes(Objective([pairs]), 10, 4)


class MultiLayer(FeatureTerm):
    """A term that reads several layers by design (opts out of pairs)."""

    kind = "test_multi_layer"
    pairs_by_list = False

    def __init__(self, student=None, teacher=None, weight: float = 1.0, name=None) -> None:
        self.paths = (student, teacher)
        super().__init__("s", "t", weight, name=name)


class AnnotatedMultiLayer(FeatureTerm):
    kind = "test_annotated_multi_layer"

    def __init__(self, student: list[str] | None = None, teacher: list[str] | None = None):
        super().__init__("s", "t")
        self.paths = (student, teacher)


@pytest.fixture
def registered_multi_layer_terms():
    for cls in (MultiLayer, AnnotatedMultiLayer):
        register_term(cls)
    yield
    for cls in (MultiLayer, AnnotatedMultiLayer):
        TERMS.pop(cls.kind)


def test_terms_that_read_several_layers_get_the_lists_themselves(
    registered_multi_layer_terms,
) -> None:
    assert takes_single_paths(Hint) and not takes_single_paths(AnnotatedMultiLayer)
    for kind in ("test_multi_layer", "test_annotated_multi_layer"):
        term = build_term({"type": kind, "student": ["a", "b"], "teacher": ["x", "y"]})
        assert not isinstance(term, LayerPairs) and term.paths == (["a", "b"], ["x", "y"])


# -- functional forms -------------------------------------------------------------------------

MAPS = (rand(B, 4, 4, 4, seed=17), rand(B, 4, 4, 4, seed=18))
VECTORS = (rand(B, 6, seed=19), rand(B, 9, seed=20))


@pytest.mark.parametrize(
    ("spec", "function", "features"),
    [
        ({"type": "hint"}, lambda s, t: KF.hint(s, t), MAPS),
        ({"type": "at", "p": 3.0}, lambda s, t: KF.attention_transfer(s, t, 3.0), MAPS),
        ({"type": "spatial_attention"}, KF.spatial_attention, MAPS),
        ({"type": "channel_attention", "distance": "l2"},
         lambda s, t: KF.channel_attention(s, t, distance="l2"), MAPS),
        ({"type": "attention_feature"}, KF.attention_feature, MAPS),
        ({"type": "sp"}, KF.sp, VECTORS),
        ({"type": "pkt"}, KF.pkt, VECTORS),
        ({"type": "lsp", "neighbours": 2}, lambda s, t: KF.lsp(s, t, 2), VECTORS),
        ({"type": "rkd_distance"}, KF.rkd_distance, VECTORS),
        ({"type": "rkd_angle"}, KF.rkd_angle, VECTORS),
        ({"type": "relation", "criterion": "ce"},
         lambda s, t: KF.relation(s, t, criterion="ce"), VECTORS),
    ],
)  # fmt: skip
def test_functional_forms_equal_the_terms(spec, function, features) -> None:
    s, t = features
    term = build_term({**spec, "student": "s", "teacher": "t", "adapter": "none"})
    assert float(function(s, t)) == pytest.approx(value(term, s, t), rel=1e-12)


def test_functional_response_forms_equal_the_terms() -> None:
    z, v = rand(B, 5, seed=21), rand(B, 5, seed=22)
    y = torch.tensor([0, 1, 2, 3, 4])
    so, to = ModelOutput(z, {}), ModelOutput(v, {})
    batch = Batch(z, y)
    for kind, got, options in [
        ("soft_target", KF.soft_target(z, v, 3.0, "js"), {"temperature": 3.0, "divergence": "js"}),
        ("soft_ce", KF.soft_cross_entropy(z, v, 2.0), {"temperature": 2.0}),
        ("logit_mse", KF.logit_mse(z, v, center=True), {"center": True}),
        ("ce", KF.cross_entropy(z, y), {}),
    ]:
        want = float(build_term({"type": kind, **options})(so, to, batch))
        assert float(got) == pytest.approx(want, rel=1e-12), kind
    manual = float(4.0**2 * F.kl_div(F.log_softmax(z / 4, 1), F.log_softmax(v / 4, 1),
                                     reduction="batchmean", log_target=True))  # fmt: skip
    assert float(KF.soft_target(z, v)) == pytest.approx(manual, rel=1e-10)


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, v, y: KF.soft_target(z, v, 3.0),
        lambda z, v, y: KF.soft_cross_entropy(z, v, 2.0),
        lambda z, v, y: KF.logit_mse(z, v),
        lambda z, v, y: KF.dkd(z, v, y, temperature=2.0),
        lambda z, v, y: KF.dkd(z, v, y, standardize=True),
        lambda z, v, y: KF.dist(z, v, temperature=4.0),
        lambda z, v, y: KF.dist(z, v, standardize=True),
    ],
    ids=["soft_target", "soft_ce", "logit_mse", "dkd", "dkd_standardized", "dist",
         "dist_standardized"],
)  # fmt: skip
def test_functional_logit_losses_train_the_student_only(loss) -> None:
    """The teacher's logits are a target: a teacher that tracks gradients gets none, as the
    module docstring promises (dkd and dist once passed it a gradient)."""
    z = rand(B, 5, seed=23).requires_grad_()
    v = rand(B, 5, seed=24).requires_grad_()
    loss(z, v, torch.tensor([0, 1, 2, 3, 4])).backward()
    assert v.grad is None
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


#: The functional form of every registered term kind (kdlab.losses.functional).
FUNCTIONAL_OF = {
    "ab": "activation_boundaries", "at": "attention_transfer",
    "attention_feature": "attention_feature", "cc": "correlation_congruence",
    "ce": "cross_entropy", "channel_attention": "channel_attention", "crd": "crd_nce_loss",
    "dist": "dist", "dkd": "dkd", "fsp": "fsp", "ft": "factor_transfer",
    "global_relation": None,  # its non-local blocks are trainable parts of the term itself
    "hint": "hint", "kdsvd": "kdsvd", "logit_mse": "logit_mse", "lsp": "lsp", "nst": "nst",
    "ofd": "overhaul", "pkt": "pkt", "relation": "relation", "review": "review_hcl",
    "rkd_angle": "rkd_angle", "rkd_distance": "rkd_distance", "soft_ce": "soft_cross_entropy",
    "soft_target": "soft_target", "sp": "sp", "spatial_attention": "spatial_attention",
    "vid": "vid",
}  # fmt: skip


def test_every_term_kind_has_a_functional_form() -> None:
    import kdlab.losses.functional as functional
    from kdlab.losses import TERMS

    assert set(TERMS) == set(FUNCTIONAL_OF)  # a new term must say where its function is
    for kind, name in FUNCTIONAL_OF.items():
        if name is not None:
            assert name in functional.__all__ and callable(getattr(functional, name)), kind
