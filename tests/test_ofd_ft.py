"""OFD (Heo et al. 2019) and factor transfer (Kim et al. 2018): partial L2 and FT's loss against
explicit references, OFD's measured margin against the Gaussian closed form, and FT's two stages
through kdlab's generic stage machinery — the paraphraser trained in stage 1 (student frozen)
carries over to stage 2 by term name and stays frozen there."""

from __future__ import annotations

import math

import pytest
import torch

from feature_helpers import outputs, rand, toy_cnn_pair
from kdlab.errors import ConfigError
from kdlab.losses import CrossEntropy, Hint
from kdlab.losses.base import Objective, build_term
from kdlab.losses.ft import FactorTransfer, ft_loss, reconstruction_loss
from kdlab.losses.ofd import OverhaulDistillation, gaussian_negative_mean, partial_l2
from kdlab.runs import Recorder
from kdlab.schemes.offline import Stage, fit_stages, load_term_states, term_states
from kdlab.settings import TrainSettings


def partial_l2_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    """mean_b Σ_i (0 if S_i ≤ T_i ≤ 0 else (T_i − S_i)²), explicit loops."""
    total = 0.0
    for i in range(s.shape[0]):
        for sv, tv in zip(s[i].flatten().tolist(), t[i].flatten().tolist(), strict=True):
            total += 0.0 if sv <= tv <= 0 else (tv - sv) ** 2
    return total / s.shape[0]


def test_partial_l2_matches_the_reference_and_skips_students_below_non_positive_targets() -> None:
    s, t = rand(3, 4, 3, 3, seed=1), rand(3, 4, 3, 3, seed=2)
    assert float(partial_l2(s, t)) == pytest.approx(partial_l2_reference(s, t), rel=1e-12)
    assert float(partial_l2(s, t, "mean")) == pytest.approx(partial_l2_reference(s, t) / 36)
    negative = -t.abs()
    assert float(partial_l2(negative - 0.5, negative)) == 0.0  # below a non-positive target
    assert float(partial_l2(negative + 0.5, negative)) == pytest.approx(0.25 * 36)  # above: counts
    positive = t.abs() + 0.1
    assert float(partial_l2(positive - 0.5, positive)) == pytest.approx(0.25 * 36)


def gaussian_margin(mean: float, std: float) -> float:
    """E[t | t < 0] for t ~ N(mean, std²), with the authors' −3·std fallback."""
    mass = 0.5 * math.erfc(mean / std / math.sqrt(2))
    if mass <= 1e-3:
        return -3 * std
    return mean - std * math.exp(-0.5 * (mean / std) ** 2) / math.sqrt(2 * math.pi) / mass


def test_ofd_margin_measured_on_gaussian_data_is_the_closed_form() -> None:
    means = torch.tensor([-1.0, 0.0, 0.5, 2.0, 5.0], dtype=torch.float64)
    stds = torch.tensor([1.0, 0.5, 2.0, 1.5, 1.0], dtype=torch.float64)
    term = OverhaulDistillation(student="s", teacher="t", margin_batches=20, adapter="none")
    g = torch.Generator().manual_seed(0)

    def teacher_batch() -> torch.Tensor:
        noise = torch.randn(64, 5, 6, 6, generator=g, dtype=torch.float64)
        return means.view(1, -1, 1, 1) + stds.view(1, -1, 1, 1) * noise

    t = teacher_batch()
    so, to, _ = outputs(t.clone(), t)
    term.prepare(so, to)
    seen = [t]
    for _ in range(25):  # 20 batches measure the margin, the rest leave it alone
        t = teacher_batch()
        seen.append(t)
        term(*outputs(t.clone(), t))
    assert int(term.batches_seen) == 20
    margin = term.margin()
    expected = torch.tensor([gaussian_margin(m, s) for m, s in zip(means, stds, strict=True)])
    assert torch.allclose(margin, expected.double(), atol=0.02)
    assert margin[4] == pytest.approx(-3.0, abs=0.02)  # P(t < 0) < 0.001: the fallback
    data = torch.cat(seen[1:21]).transpose(0, 1).reshape(5, -1)  # the batches it measured
    empirical = [float(row[row < 0].mean()) for row in data[:4]]  # E[t | t < 0] directly
    assert margin[:4].tolist() == pytest.approx(empirical, abs=0.03)
    closed = gaussian_negative_mean(data.mean(1), data.std(1, correction=0))
    assert torch.allclose(margin, closed, rtol=1e-9)  # exactly the paper's formula on the moments
    term.eval()
    term(*outputs(t.clone() + 9, t + 9))  # evaluation never moves the margin
    assert torch.equal(term.margin(), margin)


def test_ofd_term_value_and_gradients() -> None:
    s, t = rand(4, 3, 3, 3, seed=3), rand(4, 6, 3, 3, seed=4)
    s.requires_grad_(True)
    t.requires_grad_(True)
    term = OverhaulDistillation(student="s", teacher="t")
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    assert [type(m).__name__ for m in term.connector] == ["Conv2d", "BatchNorm2d"]
    term.double()
    value = term(so, to, batch)
    value.backward()
    value = value.detach()
    regressed = term.connector(s).detach()
    target = torch.maximum(t.detach(), term.margin().view(1, -1, 1, 1))
    assert float(value) == pytest.approx(partial_l2_reference(regressed, target), rel=1e-10)
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.connector.parameters())
    with pytest.raises(ConfigError, match="prepare_terms"):
        OverhaulDistillation(student="s", teacher="t", adapter="none")(*outputs(t, t))


def test_ft_loss_matches_the_reference() -> None:
    s, t = rand(3, 2, 2, 2, seed=5), rand(3, 2, 2, 2, seed=6)
    per_sample = []
    for i in range(3):
        sv, tv = s[i].flatten().tolist(), t[i].flatten().tolist()
        s_norm, t_norm = math.sqrt(sum(v * v for v in sv)), math.sqrt(sum(v * v for v in tv))
        per_sample.append(sum(abs(a / t_norm - b / s_norm) for a, b in zip(tv, sv, strict=True)))
    assert float(ft_loss(s, t, reduction="batchmean")) == pytest.approx(sum(per_sample) / 3)
    assert float(ft_loss(s, t)) == pytest.approx(sum(per_sample) / 24)  # mean over elements
    assert float(ft_loss(3 * t, t)) == pytest.approx(0.0, abs=1e-12)  # same direction: zero


def test_ft_loss_with_p_2_takes_the_root_per_sample_only_for_batchmean() -> None:
    """batchmean: mean_b (Σ_i |d_i|²)^(1/2), the paper's norm; mean: mean of |d_i|² (no root)."""
    s, t = rand(3, 2, 3, 2, seed=9), rand(3, 2, 3, 2, seed=10)
    norms, squares = [], []
    for i in range(3):
        sv, tv = s[i].flatten().tolist(), t[i].flatten().tolist()
        s_norm, t_norm = math.sqrt(sum(v * v for v in sv)), math.sqrt(sum(v * v for v in tv))
        d2 = [(a / t_norm - b / s_norm) ** 2 for a, b in zip(tv, sv, strict=True)]
        norms.append(math.sqrt(sum(d2)))
        squares.extend(d2)
    batchmean = float(ft_loss(s, t, p=2.0, reduction="batchmean"))
    assert batchmean == pytest.approx(sum(norms) / 3, rel=1e-12)
    assert float(ft_loss(s, t, p=2.0)) == pytest.approx(sum(squares) / len(squares), rel=1e-12)
    assert batchmean != pytest.approx(sum(squares) / 3, rel=1e-3)  # the root matters here


def test_reconstruction_loss_is_the_squared_error_per_element_or_per_sample() -> None:
    """mean: mean over every element of (x − P(x))²; batchmean: ‖x − P(x)‖² per sample (no
    root), averaged over the batch."""
    r, x = rand(3, 2, 3, 2, seed=11), rand(3, 2, 3, 2, seed=12)
    per_sample = []
    for i in range(3):
        rv, xv = r[i].flatten().tolist(), x[i].flatten().tolist()
        per_sample.append(sum((a - b) ** 2 for a, b in zip(xv, rv, strict=True)))
    assert float(reconstruction_loss(r, x, "batchmean")) == pytest.approx(
        sum(per_sample) / 3, rel=1e-12
    )
    assert float(reconstruction_loss(r, x)) == pytest.approx(sum(per_sample) / 36, rel=1e-12)
    assert float(reconstruction_loss(r, x, "mean")) == float(reconstruction_loss(r, x))


SETTINGS = TrainSettings(epochs=2, batch_size=16, threads=1)
QUIET = Recorder(progress=False)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def spy_prepare(term: FactorTransfer, store: dict) -> None:
    """Record the term's fresh paraphraser right after prepare (before any carried state)."""
    prepare = term.prepare

    def spy(*args):
        prepare(*args)
        store["fresh"] = snapshot(term.paraphraser)

    term.prepare = spy  # type: ignore[method-assign]


def test_ft_stages_carry_the_trained_paraphraser_and_freeze_the_right_parts() -> None:
    data, teacher, student = toy_cnn_pair(32)
    paraphrase = FactorTransfer(teacher="features.0", phase="paraphrase")
    first: dict = {}
    spy_prepare(paraphrase, first)
    start = snapshot(student)
    fit_stages(student, data, [Stage([paraphrase], SETTINGS, "none", "paraphrase")], teacher,
               recorder=QUIET)  # fmt: skip
    assert same(start, snapshot(student))  # stage 1: weights and BatchNorm statistics unchanged
    trained = snapshot(paraphrase.paraphraser)
    assert not same(first["fresh"], trained)
    assert all(p.requires_grad for p in student.parameters())  # unfrozen afterwards

    transfer = FactorTransfer(student="features.0", teacher="features.0")
    second: dict = {}
    spy_prepare(transfer, second)
    stages = [Stage([paraphrase], SETTINGS, "none", "paraphrase"),
              Stage([CrossEntropy(), transfer], SETTINGS, "all", "transfer")]  # fmt: skip
    fit_stages(student, data, stages, teacher, recorder=QUIET)
    stage1 = snapshot(paraphrase.paraphraser)  # stage 1 ran again, from a fresh paraphraser
    assert not same(second["fresh"], stage1)  # a fresh init differs from the trained one
    assert same(snapshot(transfer.paraphraser), stage1)  # carried over, and frozen in stage 2
    assert not same(start, snapshot(student))  # stage 2 trains the student
    assert all(not p.requires_grad for p in transfer.paraphraser.parameters())
    assert all(p.requires_grad for p in transfer.translator.parameters())


def test_ft_transfer_gradients_reach_only_the_student_and_translator() -> None:
    s, t = rand(4, 3, 4, 4, seed=7), rand(4, 6, 2, 2, seed=8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    term = FactorTransfer(student="s", teacher="t", rate=0.5)
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    with pytest.raises(ConfigError, match="paraphraser was never trained"):
        term(so, to, batch)
    term.paraphraser_trained.fill_(True)
    term.train()
    assert not term.paraphraser.training  # frozen BatchNorm statistics in the transfer phase
    value = term(so, to, batch)
    value.backward()
    value = value.detach()
    factor_t = term.paraphraser.encoder(t.detach())
    assert factor_t.shape[1:] == (3, 2, 2)  # k·C = 0.5·6 channels on the teacher's grid
    assert float(value) == pytest.approx(float(ft_loss(term.translator(s).detach(), factor_t)))
    assert t.grad is None and all(p.grad is None for p in term.paraphraser.parameters())
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.translator.parameters())


def test_carried_state_of_another_shape_names_the_fix() -> None:
    earlier = Objective([Hint(student="s", teacher="t", name="hint")])
    later = Objective([Hint(student="s", teacher="t", name="hint")])
    earlier.terms[0].prepare(*outputs(rand(2, 3), rand(2, 5))[:2])
    later.terms[0].prepare(*outputs(rand(2, 3), rand(2, 4))[:2])
    with pytest.raises(ConfigError, match="give one of them another name"):
        load_term_states(later, term_states(earlier))
    fresh = Objective([Hint(student="s", teacher="t", name="hint")])
    fresh.terms[0].prepare(*outputs(rand(2, 3), rand(2, 5))[:2])
    load_term_states(fresh, term_states(earlier))  # same shapes: the trained state carries over
    assert same(snapshot(fresh.terms[0]), snapshot(earlier.terms[0]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "ofd", "student": "a", "teacher": "b", "margin_batches": 0}, "margin_batches"),
        ({"type": "ofd", "student": "a", "teacher": "b", "reduction": "sum"}, "of batchmean, mean"),
        ({"type": "ft", "student": "a", "teacher": "b", "phase": "train"}, "phase must be"),
        ({"type": "ft", "student": "a", "teacher": "b", "rate": 0}, "rate must be in"),
        ({"type": "ft", "student": "a", "teacher": "b", "p": 0}, "p must be > 0"),
        ({"type": "ft", "teacher": "b"}, "needs the student's module path"),
        ({"type": "ft", "phase": "paraphrase"}, "needs the teacher's module path"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_fix(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_term(spec)


def test_ft_needs_maps() -> None:
    so, to, _ = outputs(rand(2, 4), rand(2, 6))
    with pytest.raises(ConfigError, match="tap a convolutional block"):
        FactorTransfer(student="s", teacher="t").prepare(so, to)
    assert FactorTransfer(teacher="t", phase="paraphrase").student_taps == ()
