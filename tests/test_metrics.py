"""Tests of the evaluation metrics (kdlab.metrics) and the seed statistics (kdlab.report.stats).

Every metric is compared with an independent float64 NumPy (or plain-loop) computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from kdlab.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    distillation_error,
    expected_calibration_error,
    kl_to_teacher,
    nll,
)
from kdlab.report.stats import describe, paired_difference


def _logits(n: int, c: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale


def _targets(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, c, (n,), generator=g)


def _softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _ece_loop(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE with bins (b/n, (b+1)/n], written as the textbook double loop."""
    probs = _softmax_np(logits.numpy())
    conf = probs.max(-1)
    pred = probs.argmax(-1)
    correct = (pred == targets.numpy()).astype(np.float64)
    n = len(conf)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if lo < conf[i] <= hi]
        if not members:
            continue
        acc_b = sum(correct[i] for i in members) / len(members)
        conf_b = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc_b - conf_b)
    return total


# -- accuracy, agreement, nll, KL ----------------------------------------------------------------


def test_accuracy_and_agreement_match_numpy() -> None:
    logits, teacher = _logits(200, 7, 0), _logits(200, 7, 1)
    y = _targets(200, 7, 0)
    # make some predictions agree on purpose
    teacher[:50] = logits[:50] * 2.0
    pred, tpred = logits.numpy().argmax(-1), teacher.numpy().argmax(-1)
    assert accuracy(logits, y) == pytest.approx(np.mean(pred == y.numpy()), abs=1e-15)
    assert agreement(logits, teacher) == pytest.approx(np.mean(pred == tpred), abs=1e-15)
    assert agreement(logits, teacher) >= 0.25  # the 50 copied rows agree
    assert agreement(logits, logits) == 1.0
    assert accuracy(torch.nn.functional.one_hot(y, 7).float(), y) == 1.0


def test_nll_matches_float64_numpy() -> None:
    logits, y = _logits(300, 10, 2, scale=8.0), _targets(300, 10, 2)
    p = _softmax_np(logits.numpy())
    expected = -np.mean(np.log(p[np.arange(300), y.numpy()]))
    assert nll(logits, y) == pytest.approx(expected, rel=1e-10)
    # computed in float64: a float32 logit gap of 200 would underflow a float32 softmax
    extreme = torch.tensor([[200.0, 0.0]])
    assert nll(extreme, torch.tensor([1])) == pytest.approx(200.0, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_to_teacher_is_kl_teacher_to_student(temperature: float) -> None:
    student, teacher = _logits(150, 6, 3), _logits(150, 6, 4)
    p = _softmax_np(teacher.numpy(), temperature)  # teacher distribution first: KL(p_T || q_S)
    q = _softmax_np(student.numpy(), temperature)
    expected = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    got = kl_to_teacher(student, teacher, temperature)
    assert got == pytest.approx(expected, rel=1e-10)
    reverse = np.mean(np.sum(q * (np.log(q) - np.log(p)), -1))
    assert abs(got - reverse) > 1e-3  # the direction matters, and this is the forward one
    assert kl_to_teacher(teacher, teacher, temperature) == pytest.approx(0.0, abs=1e-12)


# -- expected calibration error ------------------------------------------------------------------


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 3.0), (2, 10.0)])
def test_ece_matches_direct_loop(seed: int, scale: float) -> None:
    logits, y = _logits(400, 10, seed, scale), _targets(400, 10, seed)
    y[:150] = logits[:150].argmax(-1)  # mix of right and wrong predictions
    expected = _ece_loop(logits, y)
    assert expected > 0
    assert expected_calibration_error(logits, y, 15) == pytest.approx(expected, abs=1e-12)


def test_ece_confidence_exactly_one_goes_in_last_bin() -> None:
    # softmax([1000, 0, 0]) is exactly 1.0 in float64: the top bin is (14/15, 1].
    logits = torch.tensor([[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0]])
    probs = torch.softmax(logits.double(), -1)
    assert probs.max(-1).values.eq(1.0).all()
    y = torch.tensor([0, 1, 1])  # two right, one wrong, all with confidence 1
    expected = _ece_loop(logits, y)
    assert expected == pytest.approx(1 / 3)
    assert expected_calibration_error(logits, y) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("classes", [2, 3, 5, 10])
def test_ece_ties_on_bin_edges(classes: int) -> None:
    # Equal logits give confidence 1/classes: 1/2, 1/3, 1/5 are bin edges 7.5/15, 5/15, 3/15
    # (the latter two lie exactly on an edge and belong to the bin below it).
    logits = torch.zeros(4, classes)
    y = torch.tensor([0, 0, 1, 1]) % classes
    expected = _ece_loop(logits, y)
    assert expected_calibration_error(logits, y) == pytest.approx(expected, abs=1e-15)


def test_ece_zero_for_perfectly_calibrated_predictions() -> None:
    l3 = math.log(3.0)
    rows, ys = [], []
    rows += [[l3, 0.0]] * 4  # confidence 3/4 ...
    ys += [0, 0, 0, 1]  # ... right 3 times out of 4
    rows += [[0.0, 0.0]] * 2  # confidence 1/2, right once out of twice
    ys += [0, 1]
    rows += [[0.0, 1000.0]] * 3  # confidence 1, always right
    ys += [1, 1, 1]
    logits, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(ys)
    assert expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-12)
    # while over-confidence shows up: flip one of the confident-and-right predictions
    y_bad = y.clone()
    y_bad[-1] = 0
    assert expected_calibration_error(logits, y_bad) == pytest.approx(1 / 9, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 5, 20])
def test_ece_other_bin_counts(n_bins: int) -> None:
    logits, y = _logits(300, 4, 7, 2.0), _targets(300, 4, 7)
    expected = _ece_loop(logits, y, n_bins)
    assert expected_calibration_error(logits, y, n_bins) == pytest.approx(expected, abs=1e-12)
    if n_bins == 1:  # one bin: |accuracy - mean confidence|
        conf = _softmax_np(logits.numpy()).max(-1).mean()
        assert expected == pytest.approx(abs(accuracy(logits, y) - conf), abs=1e-12)


# -- distillation error Φ_γ (seed 001 §7) --------------------------------------------------------


def _phi(f: torch.Tensor, g: torch.Tensor, y: torch.Tensor, gamma: float) -> float:
    idx = np.arange(len(y)), y.numpy()
    pf = _softmax_np(f.numpy(), gamma)[idx]
    pg = _softmax_np(g.numpy(), gamma)[idx]
    return float(np.mean(np.abs(pf - pg)))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 4.0, 20.0])
def test_distillation_error_matches_definition(gamma: float) -> None:
    f, g, y = _logits(250, 10, 10), _logits(250, 10, 11), _targets(250, 10, 10)
    expected = _phi(f, g, y, gamma)
    assert distillation_error(f, g, y, gamma) == pytest.approx(expected, rel=1e-10)
    assert distillation_error(g, f, y, gamma) == pytest.approx(expected, rel=1e-10)  # symmetric


def test_distillation_error_depends_on_gamma_and_vanishes_for_equal_logits() -> None:
    f, g, y = _logits(250, 10, 12), _logits(250, 10, 13), _targets(250, 10, 12)
    values = [distillation_error(f, g, y, gamma) for gamma in (1.0, 4.0, 100.0)]
    assert values[0] != pytest.approx(values[1], rel=1e-3)
    # γ → ∞ flattens both softmaxes towards 1/C, so Φ_γ → 0
    assert values[2] < values[1] < values[0]
    assert values[2] < 0.01
    assert distillation_error(f, f.clone(), y, 2.0) == 0.0
    # a constant shift of the logits does not change a softmax (float64: the shift is exact)
    f64 = f.double()
    assert distillation_error(f64, f64 + 4.0, y, 1.0) == pytest.approx(0.0, abs=1e-12)
    # Φ uses the true label only: a student that swaps two *other* classes' logits is not penalised
    swapped = f.clone()
    y0 = torch.zeros(250, dtype=torch.long)
    swapped[:, [1, 2]] = swapped[:, [2, 1]]
    assert distillation_error(f, swapped, y0, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_distillation_error_rejects_non_positive_gamma(gamma: float) -> None:
    f, y = _logits(5, 3, 0), _targets(5, 3, 0)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        distillation_error(f, f, y, gamma)


# -- classification_metrics ----------------------------------------------------------------------


def test_classification_metrics_keys_and_values() -> None:
    s, t, y = _logits(120, 5, 20), _logits(120, 5, 21), _targets(120, 5, 20)
    alone = classification_metrics(s, y)
    assert set(alone) == {"accuracy", "nll", "ece"}
    assert alone["accuracy"] == accuracy(s, y)
    assert alone["nll"] == nll(s, y)
    assert alone["ece"] == expected_calibration_error(s, y, 15)

    both = classification_metrics(s, y, t, gamma=3.0, n_bins=7)
    assert set(both) == {"accuracy", "nll", "ece", "agreement", "kl_to_teacher", "distill_error"}
    assert both["ece"] == pytest.approx(_ece_loop(s, y, 7), abs=1e-12)
    assert both["agreement"] == agreement(s, t)
    assert both["kl_to_teacher"] == pytest.approx(kl_to_teacher(s, t), rel=1e-12)
    assert both["distill_error"] == pytest.approx(_phi(t, s, y, 3.0), rel=1e-10)
    assert all(isinstance(v, float) for v in both.values())


# -- report statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_describe_mean_std_and_t_interval(confidence: float) -> None:
    xs = [0.91, 0.935, 0.902, 0.948, 0.921]
    st = describe(xs, confidence)
    arr = np.array(xs)
    assert st.n == 5
    assert st.mean == pytest.approx(arr.mean(), rel=1e-14)
    assert st.std == pytest.approx(arr.std(ddof=1), rel=1e-12)
    lo, hi = scipy.stats.t.interval(confidence, 4, loc=arr.mean(), scale=scipy.stats.sem(arr))
    assert st.mean - st.half_width == pytest.approx(lo, rel=1e-12)
    assert st.mean + st.half_width == pytest.approx(hi, rel=1e-12)


def test_describe_edge_cases() -> None:
    one = describe([0.5])
    assert (one.mean, one.std, one.n) == (0.5, 0.0, 1)
    assert math.isnan(one.half_width)
    empty = describe([])
    assert empty.n == 0 and math.isnan(empty.mean)
    with_nan = describe([1.0, float("nan"), 3.0])  # NaN values are left out
    assert (with_nan.n, with_nan.mean) == (2, 2.0)
    assert with_nan.std == pytest.approx(math.sqrt(2.0))
    assert describe([0.25, 0.5]).format(scale=100) == "37.50 ± 17.68"
    assert one.format(scale=100) == "50.00"
    assert empty.format() == "—"


def test_paired_difference_uses_common_seeds_and_b_minus_a() -> None:
    a = {0: 0.80, 1: 0.85, 2: 0.90, 7: 0.1}
    b = {0: 0.83, 1: 0.86, 2: 0.95, 9: 0.9}
    st = paired_difference(a, b)
    diffs = np.array([0.03, 0.01, 0.05])
    assert st.n == 3
    assert st.mean == pytest.approx(diffs.mean(), rel=1e-12)
    assert st.std == pytest.approx(diffs.std(ddof=1), rel=1e-10)
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy.stats.sem(diffs))
    assert st.half_width == pytest.approx((hi - lo) / 2, rel=1e-10)
    assert paired_difference(b, a).mean == pytest.approx(-diffs.mean(), rel=1e-12)
    assert paired_difference({0: 1.0}, {1: 2.0}).n == 0
