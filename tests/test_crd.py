"""CRD (Tian et al. 2020): NCE loss, memory banks, negatives, gradients, checkpoints, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from feature_helpers import rand
from kdlab.errors import ConfigError
from kdlab.losses import build_term
from kdlab.losses.crd import (
    CRD,
    crd_nce_loss,
    crd_softmax_loss,
    draw_negatives,
    momentum_update,
    random_bank,
)
from kdlab.types import Batch, ModelOutput

B, DS, DT, D, M, N = 4, 6, 10, 8, 12, 5


def make_outputs(s: torch.Tensor, t: torch.Tensor, index: torch.Tensor | None):
    b = s.shape[0]
    return (
        ModelOutput(torch.zeros(b, 3, dtype=s.dtype), {"s": s}),
        ModelOutput(torch.zeros(b, 3, dtype=t.dtype), {"t": t}),
        Batch(torch.zeros(b, 1), torch.zeros(b, dtype=torch.long), index),
    )


def built(seed: int = 0, **params) -> CRD:
    """A float64 CRD over M examples, prepared from a sample batch under torch.manual_seed."""
    params = {"embedding_dim": D, "negatives": N, **params}
    term = CRD("s", "t", **params)
    so, to, _ = make_outputs(rand(2, DS), rand(2, DT), None)
    torch.manual_seed(seed)
    term.prepare(so, to, Batch(torch.zeros(2, 1), torch.zeros(2), torch.arange(2), train_size=M))
    return term.double()


def step_batch(seed: int, index: list[int]):
    return make_outputs(rand(len(index), DS, seed=seed), rand(len(index), DT, seed=seed + 1),
                        torch.tensor(index))  # fmt: skip


# -- the NCE loss against the paper's formula -------------------------------------------------


def reference_nce(pos: list[float], neg: list[list[float]], m: int) -> float:
    """−(1/B) Σ_i [log h(P_i+) + Σ_n log(1 − h(P_i,n))], h(P) = P / (P + N/M), in plain floats."""
    noise = len(neg[0]) / m
    total = 0.0
    for p, row in zip(pos, neg, strict=True):
        total += math.log(p / (p + noise))
        for q in row:
            total += math.log(1 - q / (q + noise))
    return -total / len(pos)


def test_nce_loss_matches_the_papers_formula() -> None:
    pos, neg = rand(B, seed=1).exp(), rand(B, 7, seed=2).exp()
    got = crd_nce_loss(pos, neg, 1 / 50)
    assert float(got) == pytest.approx(reference_nce(pos.tolist(), neg.tolist(), 50), rel=1e-12)
    # a better positive and worse negatives lower it
    assert crd_nce_loss(pos * 10, neg / 10, 1 / 50) < got


def test_nce_loss_rejects_bad_shapes_and_noise() -> None:
    with pytest.raises(ConfigError, match=r"negative_scores \[batch, negatives\]"):
        crd_nce_loss(torch.ones(3), torch.ones(3), 0.1)
    with pytest.raises(ConfigError, match=r"1 / training-set size"):
        crd_nce_loss(torch.ones(3), torch.ones(3, 2), 0.0)


def test_softmax_loss_is_the_cross_entropy_at_the_positive() -> None:
    pos, neg = rand(B, seed=3), rand(B, 6, seed=4)
    expected = 0.0
    for p, row in zip(pos.tolist(), neg.tolist(), strict=True):
        expected -= p - math.log(math.exp(p) + sum(math.exp(q) for q in row))
    assert float(crd_softmax_loss(pos, neg)) == pytest.approx(expected / B, rel=1e-12)


# -- the term's value against an explicit float64 reference -----------------------------------


def embed(head: torch.nn.Linear, x: list[float]) -> list[float]:
    w, b = head.weight.tolist(), head.bias.tolist()
    y = [
        sum(wi * xi for wi, xi in zip(row, x, strict=True)) + bi
        for row, bi in zip(w, b, strict=True)
    ]
    norm = math.sqrt(sum(v * v for v in y))
    return [v / norm for v in y]


def reference_scores(term: CRD, s, t, candidates) -> list[list[list[float]]]:
    """e^{v·m_k/τ} per anchor side (student-anchored on m^T, then teacher-anchored on m^S)."""
    sides = []
    for anchors, head, bank in ((s, term.student_head, term.teacher_bank),
                                (t, term.teacher_head, term.student_bank)):  # fmt: skip
        emb = [embed(head, x) for x in anchors.tolist()]
        rows, tau = bank.tolist(), term.temperature
        sides.append(
            [
                [math.exp(sum(a * b for a, b in zip(e, rows[k], strict=True)) / tau) for k in ks]
                for e, ks in zip(emb, candidates.tolist(), strict=True)
            ]
        )
    return sides


def reference_z(scores: list[list[float]]) -> float:
    """Z = M · mean of this batch's B·(N+1) scores (the authors' first-batch estimate)."""
    return M * sum(map(sum, scores)) / (len(scores) * len(scores[0]))


def reference_term(
    term: CRD, s, t, candidates, objective: str, z: tuple[float, float] | None = None
) -> float:
    """Both anchors' losses from the paper's formulas with Z estimated on this batch, or the
    given per-side Z (student-anchored, teacher-anchored)."""
    total = 0.0
    for side, scores in enumerate(reference_scores(term, s, t, candidates)):
        if objective == "softmax":
            total -= sum(math.log(row[0] / sum(row)) for row in scores) / len(scores)
            continue
        zs = reference_z(scores) if z is None else z[side]
        total += reference_nce(
            [r[0] / zs for r in scores], [[q / zs for q in r[1:]] for r in scores], M
        )
    return total


@pytest.mark.parametrize("objective", ["nce", "softmax"])
def test_term_value_matches_the_reference(objective: str, monkeypatch) -> None:
    term = built(objective=objective)
    index = torch.tensor([3, 0, 7, 11])
    negatives = torch.tensor([[1, 2, 4, 5, 6], [3, 3, 9, 10, 1], [0, 1, 2, 8, 9], [4, 4, 4, 5, 0]])
    monkeypatch.setattr(term, "_draw", lambda idx: negatives)
    so, to, batch = step_batch(5, index.tolist())
    banks = (term.student_bank.clone(), term.teacher_bank.clone())
    got = float(term(so, to, batch).detach())
    term.student_bank.copy_(banks[0])  # the reference reads the banks before this step's update
    term.teacher_bank.copy_(banks[1])
    candidates = torch.cat([index.unsqueeze(1), negatives], 1)
    expected = reference_term(term, so.features["s"], to.features["t"], candidates, objective)
    assert got == pytest.approx(expected, rel=1e-10)


def test_z_is_estimated_on_the_first_training_batch_then_kept() -> None:
    term = built()
    assert torch.isnan(term.log_z).all()
    term(*step_batch(1, [0, 1, 2, 3]))
    first = term.log_z.clone()
    assert torch.isfinite(first).all()
    term(*step_batch(2, [4, 5, 6, 7]))
    assert torch.equal(term.log_z, first)


def test_a_later_batch_is_scored_with_the_first_batchs_z(monkeypatch) -> None:
    """The kept Z is used, not merely stored: batch 2's value needs batch 1's Z."""
    term = built()
    negatives = torch.tensor([[1, 2, 4, 5, 6], [3, 3, 9, 10, 1], [0, 1, 2, 8, 9], [4, 4, 4, 5, 0]])
    monkeypatch.setattr(term, "_draw", lambda idx: negatives)
    first, second = [3, 0, 7, 11], [10, 2, 3, 9]  # rows 3 and 0 were written by the first step
    candidates = [torch.cat([torch.tensor(i).unsqueeze(1), negatives], 1) for i in (first, second)]
    so1, to1, batch1 = step_batch(5, first)
    so2, to2, batch2 = step_batch(8, second)
    initial = (term.student_bank.clone(), term.teacher_bank.clone())
    term(so1, to1, batch1)
    after_first = (term.student_bank.clone(), term.teacher_bank.clone())
    got = float(term(so2, to2, batch2).detach())
    # the reference reads the banks each step saw, before that step's own update
    for bank, old in zip((term.student_bank, term.teacher_bank), initial, strict=True):
        bank.copy_(old)
    student_side, teacher_side = reference_scores(
        term, so1.features["s"], to1.features["t"], candidates[0]
    )
    z_first = (reference_z(student_side), reference_z(teacher_side))
    for bank, old in zip((term.student_bank, term.teacher_bank), after_first, strict=True):
        bank.copy_(old)
    s2, t2 = so2.features["s"], to2.features["t"]
    expected = reference_term(term, s2, t2, candidates[1], "nce", z=z_first)
    assert got == pytest.approx(expected, rel=1e-10)
    # batch 2's own Z gives a clearly different value, so the check above can tell them apart
    assert reference_term(term, s2, t2, candidates[1], "nce") != pytest.approx(expected, rel=1e-3)


# -- memory banks -------------------------------------------------------------------------------


def test_memory_update_is_a_normalised_momentum_average_at_the_indices_only() -> None:
    bank, emb = rand(M, D, seed=1), torch.nn.functional.normalize(rand(3, D, seed=2), dim=1)
    before, index = bank.clone(), torch.tensor([2, 9, 5])
    momentum_update(bank, index, emb, 0.5)
    for row, i in enumerate(index.tolist()):
        mixed = [
            0.5 * a + 0.5 * b for a, b in zip(before[i].tolist(), emb[row].tolist(), strict=True)
        ]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert bank[i].tolist() == pytest.approx([v / norm for v in mixed], rel=1e-12)
    others = [i for i in range(M) if i not in index.tolist()]
    assert torch.equal(bank[others], before[others])


def _mixed_by_hand(old: list[float], new: list[float], momentum: float) -> list[float]:
    """normalise(μ·m + (1 − μ)·v) in plain floats."""
    mixed = [momentum * a + (1 - momentum) * b for a, b in zip(old, new, strict=True)]
    norm = math.sqrt(sum(v * v for v in mixed))
    return [v / norm for v in mixed]


def test_memory_update_weights_the_old_row_by_the_momentum() -> None:
    """μ = 0.3, not 0.5: μ·m + (1 − μ)·v is then not symmetric in m and v."""
    bank, emb = rand(M, D, seed=3), torch.nn.functional.normalize(rand(3, D, seed=4), dim=1)
    before, index = bank.clone(), torch.tensor([1, 10, 6])
    momentum_update(bank, index, emb, 0.3)
    for row, i in enumerate(index.tolist()):
        expected = _mixed_by_hand(before[i].tolist(), emb[row].tolist(), 0.3)
        assert bank[i].tolist() == pytest.approx(expected, rel=1e-12)


def test_a_term_with_momentum_0_3_updates_its_banks_with_it() -> None:
    term = built(momentum=0.3)
    index = [2, 7, 5]
    so, to, batch = step_batch(6, index)
    banks = (term.student_bank.clone(), term.teacher_bank.clone())
    term(so, to, batch)
    for bank, old, head, x in (
        (term.student_bank, banks[0], term.student_head, so.features["s"]),
        (term.teacher_bank, banks[1], term.teacher_head, to.features["t"]),
    ):
        for row, i in enumerate(index):
            emb = embed(head, x[row].tolist())
            expected = _mixed_by_hand(old[i].tolist(), emb, 0.3)
            assert bank[i].tolist() == pytest.approx(expected, rel=1e-10)


def test_a_training_step_updates_both_banks_at_the_batch_rows_and_eval_reads_only() -> None:
    term = built()
    index = [1, 4, 8]
    so, to, batch = step_batch(3, index)
    banks = (term.student_bank.clone(), term.teacher_bank.clone())
    term(so, to, batch)
    with torch.no_grad():
        s_emb = torch.nn.functional.normalize(term.student_head(so.features["s"]), dim=1)
        t_emb = torch.nn.functional.normalize(term.teacher_head(to.features["t"]), dim=1)
    for bank, old, emb in (
        (term.student_bank, banks[0], s_emb),
        (term.teacher_bank, banks[1], t_emb),
    ):
        expected = torch.nn.functional.normalize(0.5 * old[index] + 0.5 * emb, dim=1)
        assert torch.allclose(bank[index], expected, atol=1e-12)
        others = [i for i in range(M) if i not in index]
        assert torch.equal(bank[others], old[others])
    state = {k: v.clone() for k, v in term.state_dict().items()}
    term.eval()
    term(*step_batch(4, [0, 2, 3]))
    assert all(torch.equal(v, term.state_dict()[k]) for k, v in state.items())


def test_initial_bank_is_uniform_with_unit_expected_row_norm() -> None:
    torch.manual_seed(0)
    bank = random_bank(4000, 128)
    bound = 1 / math.sqrt(128 / 3)
    assert bank.abs().max() <= bound and bank.min() < -0.95 * bound
    assert float(bank.pow(2).sum(1).mean()) == pytest.approx(1.0, rel=0.02)


# -- negatives ----------------------------------------------------------------------------------


def test_negatives_are_in_range_never_the_positive_and_cover_the_rest() -> None:
    positives = torch.arange(M).repeat(20)
    draws = draw_negatives(positives, 200, M, torch.Generator().manual_seed(0))
    assert draws.shape == (len(positives), 200)
    assert draws.min() >= 0 and draws.max() < M
    assert not (draws == positives.unsqueeze(1)).any()
    for p in range(M):  # every other example is drawn for each positive
        assert set(draws[positives == p].unique().tolist()) == set(range(M)) - {p}


def test_negative_draws_are_reproducible_under_manual_seed_and_change_per_step() -> None:
    def draws(seed: int) -> list[torch.Tensor]:
        term = built(seed=seed)
        return [term._draw(torch.tensor([0, 5])) for _ in range(3)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


# -- gradients ----------------------------------------------------------------------------------


def test_gradients_reach_the_student_and_both_heads_never_the_teacher() -> None:
    term = built()
    teacher_net = torch.nn.Linear(3, DT).double()
    s = rand(B, DS, seed=7).requires_grad_()
    t = teacher_net(rand(B, 3, seed=8))  # the teacher's features, still attached to its weights
    so, to, batch = make_outputs(s, t, torch.tensor([0, 3, 6, 9]))
    term(so, to, batch).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    for head in (term.student_head, term.teacher_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert teacher_net.weight.grad is None and teacher_net.bias.grad is None
    assert not term.student_bank.requires_grad and term.log_z.grad is None


# -- checkpoints --------------------------------------------------------------------------------


def test_state_dict_keeps_the_banks_and_a_resumed_term_continues_identically() -> None:
    term = built(seed=0)
    for step in range(2):
        term(*step_batch(10 + step, [2 * step, 2 * step + 1, 9]))
    state = {k: v.clone() for k, v in term.state_dict().items()}
    assert {"student_bank", "teacher_bank", "log_z", "_extra_state"} <= set(state)
    assert state["student_bank"].shape == (M, D) and state["_extra_state"].tolist()[1] == 2
    resumed = built(seed=5)  # other initial banks, heads and seed: all replaced by the state
    resumed.load_state_dict(state)
    losses = [float(t(*step_batch(20, [5, 6, 7])).detach()) for t in (term, resumed)]
    assert losses[0] == losses[1]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in term.state_dict().items())


# -- bad input ----------------------------------------------------------------------------------


def test_batches_without_sample_indices_are_refused() -> None:
    term = built()
    so, to, batch = step_batch(1, [0, 1])
    batch.index = None
    with pytest.raises(ConfigError, match=r"sample indices.*pass index=<positions>"):
        term(so, to, batch)


def test_indices_outside_the_training_split_are_refused() -> None:
    term = built()
    with pytest.raises(ConfigError, match=r"positions 0\.\.12.*banks hold 12"):
        term(*step_batch(1, [0, 12]))


def test_more_negatives_than_training_examples_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"negatives is 12.*only 12 examples.*e\.g\. 8"):
        built(negatives=M)


def test_unknown_training_size_needs_an_explicit_train_size() -> None:
    term = CRD("s", "t", embedding_dim=D, negatives=N)
    so, to, _ = make_outputs(rand(2, DS), rand(2, DT), None)
    with pytest.raises(ConfigError, match=r"training-set size is unknown.*pass train_size"):
        term.prepare(so, to, None)
    explicit = CRD("s", "t", embedding_dim=D, negatives=N, train_size=40)
    explicit.prepare(so, to, None)
    assert explicit.student_bank.shape == (40, D)
    sample = Batch(torch.zeros(2, 1), torch.zeros(2), torch.arange(2), train_size=30)
    with pytest.raises(ConfigError, match=r"train_size is 40.*has 30 examples.*drop train_size"):
        explicit.prepare(so, to, sample)


def test_missing_or_odd_taps_and_unprepared_terms_are_refused() -> None:
    term = built()
    so, to, batch = step_batch(1, [0, 1])
    with pytest.raises(ConfigError, match=r"'s' was not captured"):
        term(ModelOutput(so.logits, {}), to, batch)
    with pytest.raises(ConfigError, match=r"outputs \(2,\).*tap a module that returns one"):
        term(ModelOutput(so.logits, {"s": torch.zeros(2)}), to, batch)
    with pytest.raises(ConfigError, match=r"built for 6-d student.*same size"):
        term(ModelOutput(so.logits, {"s": torch.zeros(2, 7, dtype=torch.float64)}), to, batch)
    with pytest.raises(ConfigError, match=r"needs the student's module path"):
        CRD(None, "t")
    with pytest.raises(ConfigError, match=r"prepare_terms"):
        CRD("s", "t")(so, to, batch)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"objective": "infonce"}, r"objective must be one of nce, softmax"),
        ({"negatives": 0}, r"negatives must be a positive integer"),
        ({"temperature": 0}, r"temperature must be > 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"train_size": 1}, r"train_size must be the number of training examples"),
    ],
)
def test_bad_parameters_name_the_fix(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "crd", "student": "s", "teacher": "t", **params})


# -- DDP: the banks stay identical across ranks -----------------------------------------------


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        term = built(seed=0)
        so, to, batch = step_batch(30 + rank, [2 * rank, 2 * rank + 1])  # this rank's shard
        term(so, to, batch)
        torch.save({k: v for k, v in term.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_under_ddp_every_rank_writes_every_rows_update(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank, args=(init, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    initial = built(seed=0)
    for key in ("student_bank", "teacher_bank", "log_z"):
        assert torch.equal(states[0][key], states[1][key]), key
    changed = (states[0]["student_bank"] != initial.student_bank).any(1).nonzero().flatten()
    assert changed.tolist() == [0, 1, 2, 3]  # both shards' rows, on both ranks
