"""Numerical tests of the multi-layer terms FSP (kdlab.losses.fsp; Yim et al. 2017) and KD-SVD
(kdlab.losses.kdsvd; Lee et al. 2018).

References are float64 loops in numpy written from the papers' formulas: FSP matrices as explicit
sums over positions; KD-SVD from numpy's SVD (a different solver, with its own signs) followed by
loops for the sign fixing, the alignment of the student's vectors and the RBF between layers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from feature_helpers import rand
from kdlab.errors import ConfigError
from kdlab.losses import build_term
from kdlab.losses.fsp import FlowOfSolutionProcedure, fsp_matrix
from kdlab.losses.kdsvd import KDSVD, align_to_teacher, canonical_signs, kdsvd_loss
from kdlab.types import Batch, ModelOutput


def multi(s: dict[str, torch.Tensor], t: dict[str, torch.Tensor]):
    """(student output, teacher output, batch) holding several tapped features each."""
    b = next(iter(s.values())).shape[0]
    logits = torch.zeros(b, 3, dtype=torch.float64)
    batch = Batch(torch.zeros(b, 1), torch.zeros(b, dtype=torch.long))
    return ModelOutput(logits, dict(s)), ModelOutput(logits.clone(), dict(t)), batch


def evaluate(term, s: dict, t: dict) -> float:
    so, to, batch = multi(s, t)
    term.prepare(so, to)
    term.double()
    return float(term(so, to, batch).detach())


def backward_only_to_student(term, s: dict, t: dict) -> None:
    s = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    t = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    so, to, batch = multi(s, t)
    term.prepare(so, to)
    term.double()
    loss = term(so, to, batch)
    loss.backward()
    assert all(v.grad is None for v in t.values())
    for v in s.values():
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    params = list(term.parameters())
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    return params


# ---------------------------------------------------------------------------------------------
# FSP
# ---------------------------------------------------------------------------------------------


def gram_reference(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """G[b, i, j] = Σ_{s,t} F1[b, i, s, t]·F2[b, j, s, t] / (h·w), explicit loops."""
    b, c1, h, w = f1.shape
    c2 = f2.shape[1]
    g = np.zeros((b, c1, c2))
    for n in range(b):
        for i in range(c1):
            for j in range(c2):
                g[n, i, j] = sum(
                    f1[n, i, y, x] * f2[n, j, y, x] for y in range(h) for x in range(w)
                )
    return g / (h * w)


def fsp_reference(s_pairs, t_pairs, reduction: str = "batchmean") -> float:
    per_pair = []
    for (s1, s2), (t1, t2) in zip(s_pairs, t_pairs, strict=True):
        d = (gram_reference(t1, t2) - gram_reference(s1, s2)) ** 2
        per_pair.append(d.sum(axis=(1, 2)).mean() if reduction == "batchmean" else d.mean())
    return float(np.mean(per_pair))


S_MAPS = {"a": rand(3, 2, 4, 4), "b": rand(3, 3, 4, 4, seed=1), "c": rand(3, 4, 2, 2, seed=2)}
T_MAPS = {
    "x": rand(3, 2, 4, 4, seed=3),
    "y": rand(3, 3, 4, 4, seed=4),
    "z": rand(3, 4, 2, 2, seed=5),
}


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_fsp_matches_the_gram_reference_over_two_pairs(reduction: str) -> None:
    term = build_term(
        {"type": "fsp", "student": [["a", "b"], ["b", "c"]], "teacher": [["x", "y"], ["y", "z"]],
         "reduction": reduction, "adapter": "none"}
    )  # fmt: skip
    assert term.student_taps == ("a", "b", "c") and term.teacher_taps == ("x", "y", "z")
    s, t = {k: v.numpy() for k, v in S_MAPS.items()}, {k: v.numpy() for k, v in T_MAPS.items()}
    pool = lambda m: m.reshape(3, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # noqa: E731 — 4×4 → 2×2
    ref = fsp_reference(
        [(s["a"], s["b"]), (pool(s["b"]), s["c"])], [(t["x"], t["y"]), (pool(t["y"]), t["z"])],
        reduction,
    )  # fmt: skip
    assert evaluate(term, S_MAPS, T_MAPS) == pytest.approx(ref, rel=1e-10)


def test_fsp_matrix_pools_the_larger_map_and_is_zero_for_identical_models() -> None:
    g = fsp_matrix(S_MAPS["c"], S_MAPS["a"])  # 2×2 and 4×4: the second is pooled
    assert g.shape == (3, 4, 2)
    term = FlowOfSolutionProcedure(student=["a", "b"], teacher=["x", "y"])
    same = {"x": S_MAPS["a"].clone(), "y": S_MAPS["b"].clone()}
    assert evaluate(term, S_MAPS, same) == 0.0


def test_fsp_adapts_narrow_student_maps_and_sends_gradients_only_to_the_student() -> None:
    s = {"a": rand(2, 2, 4, 4), "b": rand(2, 3, 4, 4, seed=1)}
    t = {"x": rand(2, 5, 4, 4, seed=2), "y": rand(2, 6, 4, 4, seed=3)}
    term = FlowOfSolutionProcedure(student=["a", "b"], teacher=["x", "y"])
    params = backward_only_to_student(term, s, t)
    assert [tuple(p.shape) for p in params] == [(5, 2, 1, 1), (5,), (6, 3, 1, 1), (6,)]


def test_fsp_errors_name_the_fix() -> None:
    s = {"a": rand(2, 2, 4, 4), "b": rand(2, 3, 4, 4, seed=1)}
    t = {"x": rand(2, 5, 4, 4, seed=2), "y": rand(2, 3, 4, 4, seed=3)}
    so, to, batch = multi(s, t)
    none = FlowOfSolutionProcedure(student=["a", "b"], teacher=["x", "y"], adapter="none")
    with pytest.raises(ConfigError, match=r"layer 0 .*\(2, 4, 4\).*\(5, 4, 4\).*adapter: auto"):
        none.prepare(so, to)
    unprepared = FlowOfSolutionProcedure(student=["a", "b"], teacher=["x", "y"])
    with pytest.raises(ConfigError, match=r"call kdlab\.losses\.feature\.prepare_terms"):
        unprepared(so, to, batch)
    missing = FlowOfSolutionProcedure(student=["a", "q"], teacher=["x", "y"])
    with pytest.raises(ConfigError, match=r"module 'q' was not captured"):
        missing.prepare(so, to)
    vectors = FlowOfSolutionProcedure(student=["a", "v"], teacher=["x", "y"])
    so2, to2, _ = multi({**s, "v": rand(2, 7)}, t)
    with pytest.raises(ConfigError, match=r"outputs \(2, 7\).*tap convolutional blocks"):
        vectors.prepare(so2, to2)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"student": "a"}, r"two layers as `student: \[first, second\]`"),
        ({"teacher": ["x"]}, r"teacher's two layers"),
        ({"student": [["a", "b"], ["b", "c"]]}, "1 teacher pairs; list as many"),
        ({"reduction": "sum"}, "reduction must be one of batchmean, mean"),
    ],
)
def test_fsp_rejects_bad_configs(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_term({"type": "fsp", "student": ["a", "b"], "teacher": ["x", "y"], **params})


# ---------------------------------------------------------------------------------------------
# KD-SVD
# ---------------------------------------------------------------------------------------------


def top_vectors(m: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Right singular vectors [C, count] and values of the map m [C, H, W] read as [HW, C];
    singular values beyond min(HW, C) are 0."""
    _, sv, vt = np.linalg.svd(m.reshape(m.shape[0], -1).T, full_matrices=True)
    return vt[:count].T, np.pad(sv, (0, m.shape[0] - len(sv)))[:count]


def descriptors(s: np.ndarray, t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    vt, sigma = top_vectors(t, k)
    for i in range(k):  # the teacher's largest-magnitude entry is made positive
        if vt[np.argmax(np.abs(vt[:, i])), i] < 0:
            vt[:, i] *= -1
    vs, _ = top_vectors(s, min(k + 1, s.shape[0], s.shape[1] * s.shape[2]))
    weights = sigma / np.linalg.norm(sigma)
    ds, dt = np.zeros_like(vt), np.zeros_like(vt)
    for i in range(k):
        cosines = [float(vs[:, j] @ vt[:, i]) for j in range(vs.shape[1])]
        j = int(np.argmax(np.abs(cosines)))
        ds[:, i] = math.copysign(1.0, cosines[j]) * vs[:, j] * weights[i]
        dt[:, i] = vt[:, i] * weights[i]
    return ds, dt


def kdsvd_reference(s_maps, t_maps, k: int, sigma: float) -> float:
    total = 0.0
    batch = s_maps[0].shape[0]
    for b in range(batch):
        described = [descriptors(s[b], t[b], k) for s, t in zip(s_maps, t_maps, strict=True)]
        for (s1, t1), (s2, t2) in itertools.pairwise(described):
            for c in range(s1.shape[0]):
                for c2 in range(s2.shape[0]):
                    for i in range(k):
                        gs = math.exp(-((s1[c, i] - s2[c2, i]) ** 2) / sigma)
                        gt = math.exp(-((t1[c, i] - t2[c2, i]) ** 2) / sigma)
                        total += (gs - gt) ** 2
    return total / batch


# Three layers; the student's spatial sizes differ from the teacher's (V lives in channel space).
KS = {"a": rand(3, 4, 5, 5), "b": rand(3, 5, 3, 3, seed=1), "c": rand(3, 6, 2, 2, seed=2)}
KT = {"x": rand(3, 4, 4, 4, seed=3), "y": rand(3, 5, 4, 4, seed=4), "z": rand(3, 6, 1, 1, seed=5)}


@pytest.mark.parametrize(("k", "sigma"), [(1, 8.0), (2, 8.0), (3, 0.5)])
def test_kdsvd_matches_the_svd_reference(k: int, sigma: float) -> None:
    term = KDSVD(student=["a", "b", "c"], teacher=["x", "y", "z"], k=k, sigma=sigma)
    ref = kdsvd_reference([KS[p].numpy() for p in "abc"], [KT[p].numpy() for p in "xyz"], k, sigma)
    assert ref > 1e-4
    assert evaluate(term, KS, KT) == pytest.approx(ref, rel=1e-8)


def test_kdsvd_is_zero_for_identical_maps_and_ignores_singular_vector_signs() -> None:
    term = KDSVD(student=["a", "b", "c"], teacher=["x", "y", "z"], k=2)
    same = {"x": KS["a"].clone(), "y": KS["b"].clone(), "z": KS["c"].clone()}
    assert evaluate(term, KS, same) == pytest.approx(0.0, abs=1e-20)
    v, t = rand(2, 5, 3), rand(2, 5, 2, seed=1)
    flips = torch.tensor([-1.0, 1.0, -1.0], dtype=v.dtype)
    assert torch.equal(align_to_teacher(v * flips, t), align_to_teacher(v, t))
    assert torch.equal(canonical_signs(-t), canonical_signs(t))
    assert (canonical_signs(t).gather(1, t.abs().argmax(1, keepdim=True)) > 0).all()


def test_kdsvd_gradients_are_exact_and_finite_even_for_equal_singular_values() -> None:
    # layer 2 has fewer positions than channels (the HW × HW path); the teacher's 1×1 is rank 1
    s = [rand(2, 3, 3, 3).requires_grad_(True), rand(2, 5, 2, 2, seed=1).requires_grad_(True)]
    t = [rand(2, 3, 4, 4, seed=2), rand(2, 5, 1, 1, seed=3)]
    assert torch.autograd.gradcheck(lambda a, b: kdsvd_loss([a, b], t, k=2), tuple(s))
    # σ = (2, 2, 1): the top two singular values are equal, SVD's 1/(σ_1² − σ_2²) diverges
    q, _ = torch.linalg.qr(rand(2, 9, 3))
    x = q * torch.tensor([2.0, 2.0, 1.0], dtype=q.dtype)  # [2, HW = 9, C = 3]
    flat = x.transpose(1, 2).reshape(2, 3, 3, 3).clone().requires_grad_(True)
    loss = kdsvd_loss([flat, s[1]], t, k=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all() and flat.grad.abs().sum() > 0


def test_kdsvd_adapts_widths_and_sends_gradients_only_to_the_student() -> None:
    s = {"a": rand(2, 2, 4, 4), "b": rand(2, 3, 2, 2, seed=1)}
    t = {"x": rand(2, 4, 4, 4, seed=2), "y": rand(2, 5, 2, 2, seed=3)}
    params = backward_only_to_student(KDSVD(student=["a", "b"], teacher=["x", "y"]), s, t)
    assert [tuple(p.shape) for p in params] == [(4, 2, 1, 1), (4,), (5, 3, 1, 1), (5,)]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"student": ["a"]}, "student's layers as a list of at least 2 module paths"),
        ({"teacher": "x"}, "teacher's layers as a list of at least 2"),
        ({"teacher": ["x", "y", "z"]}, "2 student and 3 teacher layers"),
        ({"k": 0}, "k must be a whole number ≥ 1"),
        ({"sigma": 0.0}, "sigma must be a number > 0"),
    ],
)
def test_kdsvd_rejects_bad_configs(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_term({"type": "kdsvd", "student": ["a", "b"], "teacher": ["x", "y"], **params})


def test_kdsvd_needs_k_channels_and_equal_widths_without_adapter() -> None:
    s = {"a": rand(2, 2, 4, 4), "b": rand(2, 3, 2, 2, seed=1)}
    t = {"x": rand(2, 2, 4, 4, seed=2), "y": rand(2, 5, 2, 2, seed=3)}
    so, to, batch = multi(s, t)
    wide = KDSVD(student=["a", "b"], teacher=["x", "y"], k=3)
    wide.prepare(so, to)
    with pytest.raises(ConfigError, match=r"\[\('x', 2\)\].*lower k"):
        wide(so, to, batch)
    none = KDSVD(student=["a", "b"], teacher=["x", "y"], adapter="none")
    with pytest.raises(ConfigError, match=r"layer 1 .*'b'.*'y'.*adapter is 'none'"):
        none.prepare(so, to)
