"""Numerical tests of the relation-based terms: RKD distance and angle, similarity-preserving,
PKT and seed 001's generic relation loss (kdlab.losses.rkd / sp / pkt / relation).

References are float64 loops in numpy over the pairs (i, j), i ≠ j, or the triples of distinct
indices, written from the papers' formulas. The test data are chosen so that the Huber loss
meets both of its branches.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from feature_helpers import outputs, rand, value
from kdlab.errors import ConfigError
from kdlab.losses import (
    PKT,
    Objective,
    Relation,
    RKDAngle,
    RKDDistance,
    SimilarityPreserving,
    build_term,
    check_batch_sizes,
)


def huber(x: float, y: float) -> float:
    d = abs(x - y)
    return 0.5 * d * d if d <= 1.0 else d - 0.5


def flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def pairs(n: int):
    return [(i, j) for i in range(n) for j in range(n) if i != j]


# Student maps [B, 2, 2, 2] and teacher vectors [B, 5]: relations never need equal shapes.
# Sample 0 of the teacher is an outlier, so normalised distances differ by more than 1 somewhere.
S = rand(5, 2, 2, 2)
T = rand(5, 5, seed=1)
T[0] *= 30.0


def rkd_distance_reference(s: np.ndarray, t: np.ndarray) -> tuple[float, int]:
    s, t = flat(s), flat(t)
    n = len(s)

    def psi(z):
        d = {(i, j): float(np.linalg.norm(z[i] - z[j])) for i, j in pairs(n)}
        mu = sum(d.values()) / len(d)
        return {k: v / mu for k, v in d.items()}

    ps, pt = psi(s), psi(t)
    losses = [huber(ps[k], pt[k]) for k in ps]
    linear = sum(abs(ps[k] - pt[k]) > 1 for k in ps)
    return sum(losses) / len(losses), linear


def test_rkd_distance_matches_reference_in_both_huber_branches() -> None:
    ref, linear = rkd_distance_reference(S.numpy(), T.numpy())
    assert linear > 0  # the data exercise Huber's linear branch too
    term = RKDDistance(student="s", teacher="t")
    assert value(term, S, T) == pytest.approx(ref, rel=1e-10)
    assert len(term.connector) == 0


def rkd_angle_reference(s: np.ndarray, t: np.ndarray) -> float:
    def cos(z, i, j, k):  # angle at vertex j
        e1, e2 = z[i] - z[j], z[k] - z[j]
        return float(e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2)))

    s, t = flat(s), flat(t)
    triples = [c for c in itertools.permutations(range(len(s)), 3)]
    return sum(huber(cos(s, *c), cos(t, *c)) for c in triples) / len(triples)


def test_rkd_angle_matches_reference() -> None:
    ref = rkd_angle_reference(S.numpy(), T.numpy())
    assert value(RKDAngle(student="s", teacher="t"), S, T) == pytest.approx(ref, rel=1e-9)


def test_rkd_invariances() -> None:
    # ψ_D divides by the batch's mean distance; angles ignore translation and scale.
    d = RKDDistance(student="s", teacher="t")
    assert value(d, 3.0 * S, T) == pytest.approx(value(d, S, T), rel=1e-10)
    a = RKDAngle(student="s", teacher="t")
    assert value(a, 2.0 * S + 5.0, T) == pytest.approx(value(a, S, T), rel=1e-8)


def sp_reference(s: np.ndarray, t: np.ndarray) -> float:
    def g(z):
        z = flat(z)
        m = np.array([[float(z[i] @ z[j]) for j in range(len(z))] for i in range(len(z))])
        return m / np.sqrt((m**2).sum(axis=1, keepdims=True))

    b = len(s)
    return float(((g(t) - g(s)) ** 2).sum()) / (b * b)


def test_similarity_preserving_matches_reference() -> None:
    ref = sp_reference(S.numpy(), T.numpy())
    assert value(SimilarityPreserving(student="s", teacher="t"), S, T) == pytest.approx(
        ref, rel=1e-10
    )


def pkt_reference(s: np.ndarray, t: np.ndarray) -> float:
    def cond(z):
        z = flat(z)
        k = {(i, j): 0.5 * (z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j])) + 1)
             for i, j in pairs(len(z))}  # fmt: skip
        return {
            (i, j): v / sum(k[i, m] for m in range(len(z)) if m != i) for (i, j), v in k.items()
        }

    ps, pt = cond(s), cond(t)
    return sum(pt[k] * math.log(pt[k] / ps[k]) for k in pt) / len(s)


def test_pkt_matches_reference_and_ignores_feature_scale() -> None:
    ref = pkt_reference(S.numpy(), T.numpy())
    term = PKT(student="s", teacher="t")
    assert value(term, S, T) == pytest.approx(ref, rel=1e-10)
    assert value(term, 4.0 * S, T) == pytest.approx(ref, rel=1e-10)


def relation_reference(s, t, phi: str, criterion: str, tau: float) -> float:
    s, t = flat(s), flat(t)
    n = len(s)

    def rel(z):
        if phi == "distance":
            d = {(i, j): float(np.linalg.norm(z[i] - z[j])) for i, j in pairs(n)}
            mu = sum(d.values()) / len(d)
            return {k: v / mu for k, v in d.items()}
        return {(i, j): float(z[i] @ z[j] / np.linalg.norm(z[i]) / np.linalg.norm(z[j]))
                for i, j in pairs(n)}  # fmt: skip

    rs, rt = rel(s), rel(t)
    if criterion == "l1":
        return sum(abs(rs[k] - rt[k]) for k in rs) / len(rs)
    if criterion == "l2":
        return sum((rs[k] - rt[k]) ** 2 for k in rs) / len(rs)
    sign = -1.0 if phi == "distance" else 1.0
    total = 0.0
    for i in range(n):
        js = [j for j in range(n) if j != i]
        p = softmax(np.array([sign * rt[i, j] / tau for j in js]))
        q = softmax(np.array([sign * rs[i, j] / tau for j in js]))
        total += -float((p * np.log(q)).sum())
    return total / n


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize(
    ("phi", "criterion"), list(itertools.product(["distance", "cosine"], ["l1", "l2", "ce"]))
)
def test_generic_relation_matches_reference(phi, criterion) -> None:
    term = Relation(student="s", teacher="t", relation=phi, criterion=criterion, temperature=0.7)
    ref = relation_reference(S.numpy(), T.numpy(), phi, criterion, 0.7)
    assert value(term, S, T) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RKDDistance(student="s", teacher="t"),
        lambda: RKDAngle(student="s", teacher="t"),
        lambda: SimilarityPreserving(student="s", teacher="t"),
        lambda: PKT(student="s", teacher="t"),
        lambda: Relation(student="s", teacher="t", criterion="l1"),
        lambda: Relation(student="s", teacher="t", relation="cosine"),
    ],
)
def test_zero_when_features_agree_and_gradient_only_to_student(make) -> None:
    assert value(make(), T, T) == pytest.approx(0.0, abs=1e-12)
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    so, to, batch = outputs(s, t)
    make()(so, to, batch).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()


def test_relation_ce_at_agreement_is_the_teacher_entropy() -> None:
    term = Relation(student="s", teacher="t", relation="cosine", criterion="ce")
    ref = relation_reference(T.numpy(), T.numpy(), "cosine", "ce", 1.0)
    assert ref > 0 and value(term, T, T) == pytest.approx(ref, rel=1e-10)


def test_coincident_samples_give_finite_gradients() -> None:
    s = torch.cat([S[:3], S[:1]]).clone().requires_grad_(True)  # samples 0 and 3 coincide
    so, to, batch = outputs(s, T[:4])
    for term in (RKDDistance(student="s", teacher="t"), RKDAngle(student="s", teacher="t")):
        s.grad = None
        loss = term(so, to, batch)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_linear_adapter_is_an_optional_embedding_trained_with_the_student() -> None:
    term = RKDDistance(student="s", teacher="t", adapter="linear")
    s, t = rand(5, 3), rand(5, 4, seed=1)
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    assert isinstance(term.connector[0], nn.Linear) and term.connector[0].out_features == 4
    term(so, to, batch).backward()
    assert term.connector[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kind", "b", "need"),
    [("rkd_distance", 1, 2), ("sp", 1, 2), ("pkt", 1, 2), ("relation", 1, 2), ("rkd_angle", 2, 3)],
)
def test_too_small_batches_are_rejected_clearly(kind, b, need) -> None:
    term = build_term({"type": kind, "student": "s", "teacher": "t"})
    with pytest.raises(ConfigError, match=rf"needs at least {need} per batch, got {b}"):
        value(term, rand(b, 3), rand(b, 3, seed=1))


def test_batch_sizes_are_checked_before_training_including_the_last_batch() -> None:
    objective = Objective([RKDDistance(student="s", teacher="t")])
    check_batch_sizes(objective, 64, 16)  # no remainder
    check_batch_sizes(objective, 66, 16)  # last batch of 2 is fine
    with pytest.raises(ConfigError, match="batch_size is 1"):
        check_batch_sizes(objective, 64, 1)
    with pytest.raises(ConfigError, match=r"last batch of every epoch holds 1; .* e\.g\. 15"):
        check_batch_sizes(objective, 65, 16)
    angle = Objective([RKDAngle(student="s", teacher="t")])
    with pytest.raises(ConfigError, match="holds 2"):
        check_batch_sizes(angle, 66, 16)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "relation", "relation": "angle"}, "relation must be one of distance, cosine"),
        ({"type": "relation", "criterion": "kl"}, "criterion must be one of l1, l2, ce"),
        ({"type": "relation", "temperature": 0}, "temperature must be > 0"),
        ({"type": "rkd_angle", "p": 2}, "has no parameter 'p'"),
    ],
)
def test_bad_options_are_config_errors(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_term({**spec, "student": "s", "teacher": "t"})
