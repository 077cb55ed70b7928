"""Distillation schemes beyond offline: deep mutual learning, born-again generations and
teacher-assistant chains (kdlab.schemes.{mutual,born_again,assistant}).

Models are tiny MLPs on digits (or an 8-feature blob problem) with one thread, so whole runs take
well under a second and the tests can compare parameters, targets and metrics exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import checkpoint as ckpt
from kdlab.config import parse_config
from kdlab.data import DataSplits
from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.losses import TERMS, CrossEntropy, Objective, SoftTarget, Term, register_term
from kdlab.metrics import accuracy, agreement, nll
from kdlab.models import MLP, build_model
from kdlab.runs import Recorder
from kdlab.schemes import mutual as mutual_scheme
from kdlab.schemes.assistant import assistant_chain
from kdlab.schemes.born_again import BornAgainOptions, born_again
from kdlab.schemes.mutual import MutualScheme, mutual_learning
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch, ModelOutput


def settings(epochs: int = 2, batch_size: int = 32) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=batch_size, threads=1, checkpoint_seconds=0)


def blobs(n: int = 96, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 1.5
    y = torch.randint(0, 3, (n,), generator=g)
    return ArrayDataset(centers[y] + torch.randn(n, 8, generator=g), y)


def mlp(hidden: list[int], seed: int, classes: int = 3, dropout: float = 0.0) -> MLP:
    torch.manual_seed(seed)
    return MLP(8, hidden, num_classes=classes, dropout=dropout)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- deep mutual learning -----------------------------------------------------------------------


def test_every_peer_learns_with_its_own_optimizer() -> None:
    peers = [mlp([16], 1), mlp([32, 32], 2), mlp([4], 3, dropout=0.2)]  # unequal peers
    before = [snapshot(p) for p in peers]
    scheme = MutualScheme(peers)
    groups = scheme.optimizer_groups()
    assert list(groups) == ["peer1", "peer2", "peer3"]
    for peer, params in zip(peers, groups.values(), strict=True):
        assert {id(p) for p in params} == {id(p) for p in peer.parameters()}
    history = Engine(settings(), progress=False).fit(scheme, blobs(), blobs(30, 1))
    for peer, start in zip(peers, before, strict=True):
        changed = {k: not torch.equal(v, start[k]) for k, v in peer.state_dict().items()}
        assert all(changed.values()), changed  # every parameter tensor of every peer moved
    row = history[-1]
    for name in ("peer1", "peer2", "peer3"):  # each peer's terms are logged under its name
        assert {f"{name}.loss", f"{name}.ce", f"{name}.mutual", f"{name}.acc"} <= set(row)


def test_peer_loss_is_ce_plus_mean_kl_to_the_others_and_targets_are_detached() -> None:
    peers = [mlp([16], 1), mlp([8], 2), mlp([12], 3)]
    scheme = MutualScheme(peers)
    x, y = blobs(20).x, blobs(20).y
    batch = Batch(x, y)
    grads: dict[str, dict[str, Tensor | None]] = {}

    def update(name: str, loss) -> None:
        for peer in peers:
            peer.zero_grad(set_to_none=True)
        loss.total.backward()
        grads[name] = {f"peer{i + 1}": peers[i].head.weight.grad for i in range(3)}

    scheme.set_mode(True)
    scheme.train_step(batch, update)
    # direct computation for peer 1: CE + ½(KL(p2‖p1) + KL(p3‖p1)), targets without gradient
    z = [peer(x) for peer in peers]
    log_q = F.log_softmax(z[0], -1)
    kls = [F.kl_div(log_q, F.log_softmax(z[j].detach(), -1), reduction="batchmean",
                    log_target=True) for j in (1, 2)]  # fmt: skip
    direct = F.cross_entropy(z[0], y) + (kls[0] + kls[1]) / 2
    for peer in peers:
        peer.zero_grad(set_to_none=True)
    direct.backward()
    torch.testing.assert_close(grads["peer1"]["peer1"], peers[0].head.weight.grad)
    for name, seen in grads.items():  # each loss reaches its own peer and no other
        for other, grad in seen.items():
            assert (grad is not None) == (other == name), (name, other)


class FeatureMSE(Term):
    """Mean squared difference of one tapped layer in student and teacher (a feature term)."""

    kind = "test_feature_mse"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.student_taps = self.teacher_taps = (path,)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        path = self.student_taps[0]
        return F.mse_loss(student.features[path], self._teacher(teacher).features[path])


def test_feature_terms_work_between_peers() -> None:
    peers = [mlp([16], 1), mlp([16], 2)]
    scheme = MutualScheme(peers, lambda: Objective([FeatureMSE("features.0")]))
    x = blobs(10).x
    losses = scheme.peer_losses(scheme.peer_outputs(Batch(x, blobs(10).y)), Batch(x, None))
    h = [peer.features[0](x) for peer in peers]
    torch.testing.assert_close(losses[0].total, F.mse_loss(h[0], h[1]))
    torch.testing.assert_close(losses[1].total, F.mse_loss(h[1], h[0]))
    losses[0].total.backward()
    assert peers[1].features[0][0].weight.grad is None  # the target side is detached
    assert peers[0].features[0][0].weight.grad is not None
    with pytest.raises(ConfigError, match=r"no module 'features\.9'"):
        MutualScheme(peers, lambda: Objective([FeatureMSE("features.9")]))


def test_hint_adapters_are_built_per_pair_and_trained_with_their_peer() -> None:
    peers = [mlp([16], 1), mlp([32], 2)]
    loss = [{"type": "ce"}, {"type": "hint", "student": "features.0", "teacher": "features.0"}]
    scheme = MutualScheme(peers, loss)
    Engine(settings(epochs=1), progress=False).fit(scheme, blobs(), None)  # prepare, then train
    (_, one_to_two), (two_to_one, _) = scheme.objectives
    adapters = [one_to_two.terms[1].connector, two_to_one.terms[1].connector]
    with torch.no_grad():  # peer 1's 16 features map to peer 2's 32, and back
        assert adapters[0](torch.zeros(2, 16)).shape == (2, 32)
        assert adapters[1](torch.zeros(2, 32)).shape == (2, 16)
    groups = {k: {id(p) for p in v} for k, v in scheme.optimizer_groups().items()}
    for name, adapter in zip(("peer1", "peer2"), adapters, strict=True):
        ids = {id(p) for p in adapter.parameters()}
        assert ids and ids <= groups[name] and not ids & groups[({"peer1", "peer2"} - {name}).pop()]


def test_two_identical_peers_stay_identical() -> None:
    first = mlp([16], 1)
    peers = [first, copy.deepcopy(first)]
    start = snapshot(first)
    Engine(settings(epochs=3), progress=False).fit(MutualScheme(peers), blobs(), blobs(30, 1))
    assert not same(snapshot(peers[0]), start)
    assert same(snapshot(peers[0]), snapshot(peers[1]))


def test_mutual_learning_records_every_peer(digits: DataSplits, tmp_path: Path) -> None:
    torch.manual_seed(0)
    peers = [MLP(64, [16]), MLP(64, [32])]
    with RunStore(tmp_path) as store:
        runs = mutual_learning(
            peers, digits, settings=settings(), recorder=Recorder(store, progress=False)
        )
        records = {r.role: r for r in store.list_runs()}
        histories = {role: store.history(r.id) for role, r in records.items()}
    assert set(records) == {"peer1", "peer2"}
    for run, peer in zip(runs, peers, strict=True):
        record = records[run.role]
        assert record.status == "finished" and run.model is peer
        with torch.no_grad():
            logits = peer.eval()(digits.test.x)
        assert record.metrics["accuracy"] == accuracy(logits, digits.test.y)
        assert record.metrics["nll"] == pytest.approx(nll(logits, digits.test.y), rel=1e-6)
        stored = ckpt.load_state_dict(record.artefacts["model"])
        assert same(stored, snapshot(peer))
    assert [row["epoch"] for row in histories["peer2"]] == [1, 2]
    assert {"loss", "ce", "mutual", "acc"} <= set(histories["peer2"][0])  # its own columns
    assert "peer2.loss" in histories["peer1"][0]  # the joint run holds every peer's terms


def test_fewer_than_two_peers_is_rejected() -> None:
    with pytest.raises(ConfigError, match="k ≥ 2 peers, got 1"):
        MutualScheme([mlp([4], 1)])
    peer = mlp([4], 1)
    with pytest.raises(ConfigError, match="same module twice"):
        MutualScheme([peer, peer])
    for options, fragment in [
        ({"k": 1}, "needs k ≥ 2 peers"),
        ({"peers": []}, "peers is empty"),
        ({"peers": [None]}, "peers[0] is missing (null)"),
        ({"peers": ["bigger"]}, "'student' or 'teacher' or a model spec"),
        ({"k": 3, "peers": ["student"]}, "k is 3 but peers lists 1"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"teacher": None, "distill": {"scheme": "mutual", "options": options}})
        assert fragment in str(info.value), str(info.value)


def test_yaml_mutual_peers_copy_the_student_or_the_teacher(tmp_path: Path, monkeypatch) -> None:
    starts: list[dict[str, Tensor]] = []  # every peer's weights when mutual learning starts
    original = mutual_scheme.mutual_learning

    def spy(peers, *args, **kwargs):
        starts.extend(snapshot(p) for p in peers)
        return original(peers, *args, **kwargs)

    monkeypatch.setattr(mutual_scheme, "mutual_learning", spy)
    tiny = {"epochs": 1, "batch_size": 128, "threads": 1}
    cfg = parse_config({
        "teacher": {"model": {"type": "mlp", "hidden": [24]}, "train": tiny},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": tiny},
        "distill": {"scheme": "mutual", "options": {"peers": ["student", "teacher"]}},
    })  # fmt: skip
    with RunStore(tmp_path) as store:
        result = run_experiment(cfg, store, progress=False)
    runs = {r.role: r for r in result.runs}
    assert set(runs) == {"teacher", "student", "distilled", "peer2", "peer3"}
    student, copy_of_student, teacher = starts
    # peer 1 starts like the baseline student; peer 2 has its architecture but fresh weights
    assert copy_of_student.keys() == student.keys()
    assert not torch.equal(copy_of_student["head.weight"], student["head.weight"])
    # peer 3 starts from the trained teacher and keeps learning; the teacher itself is untouched
    assert same(teacher, snapshot(result.teachers[0]))
    assert not torch.equal(runs["peer3"].model.head.weight, result.teachers[0].head.weight)
    for scheme, options in [
        ("mutual", {"peers": ["teacher"]}),
        ("born_again", {"gen0": "teacher"}),
    ]:
        with pytest.raises(ConfigError, match="use the teacher, but teacher is null"):
            parse_config({"teacher": None, "distill": {"scheme": scheme, "options": options}})


# -- born-again networks ------------------------------------------------------------------------


class SpyTargets(Term):
    """Records the inputs and the teacher logits it is given (the loss is a plain KL)."""

    kind = "test_spy_targets"
    instances: ClassVar[list[SpyTargets]] = []

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.seen: list[tuple[Tensor, Tensor]] = []
        SpyTargets.instances.append(self)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        v = self._teacher(teacher).logits.detach()
        self.seen.append((batch.inputs.clone(), v.clone()))
        return F.kl_div(F.log_softmax(student.logits, -1), F.log_softmax(v, -1),
                        reduction="batchmean", log_target=True)  # fmt: skip


@pytest.fixture(scope="module")
def generations(digits: DataSplits, tmp_path_factory: pytest.TempPathFactory):
    register_term(SpyTargets)
    SpyTargets.instances.clear()
    root = tmp_path_factory.mktemp("born_again")
    train = digits.train.subset(torch.arange(256))

    def new_student(g: int) -> nn.Module:
        torch.manual_seed(100 + g)
        return MLP(64, [16])

    loss = [{"type": "ce", "weight": 0.5}, {"type": "test_spy_targets", "weight": 0.5}]
    try:
        with RunStore(root) as store:
            runs = born_again(new_student, replace(digits, train=train), loss, settings(),
                              BornAgainOptions(generations=2),
                              recorder=Recorder(store, progress=False))  # fmt: skip
            records = {r.role: r for r in store.list_runs()}
    finally:
        TERMS.pop(SpyTargets.kind)
    return runs, records, list(SpyTargets.instances)


def load(record, data: DataSplits, hidden: list[int] | None = None) -> nn.Module:
    model = build_model({"type": "mlp", "hidden": hidden or [16]}, data.input_shape, 10)
    model.load_state_dict(ckpt.load_state_dict(record.artefacts["model"]))
    return model.eval()


def test_born_again_targets_are_the_previous_generation_outputs(generations, digits) -> None:
    runs, records, spies = generations
    assert [r.role for r in runs] == ["gen0", "gen1", "gen2", "ensemble"]
    assert len(spies) == 2  # one distillation loss per generation after gen0
    for g, spy in enumerate(spies, start=1):
        teacher = load(records[f"gen{g - 1}"], digits)
        assert len(spy.seen) == 2 * 8  # 2 epochs × 256/32 batches, every batch checked
        for inputs, targets in spy.seen:
            with torch.no_grad():
                torch.testing.assert_close(targets, teacher(inputs), rtol=0, atol=1e-6)
    # and not the generation before that: the check can tell generations apart
    inputs, targets = spies[1].seen[0]
    with torch.no_grad():
        assert (load(records["gen0"], digits)(inputs) - targets).abs().max() > 1e-2


def test_born_again_ensemble_metrics_match_the_stored_generations(generations, digits) -> None:
    _, records, _ = generations
    with torch.no_grad():
        log_probs = torch.stack([
            torch.log_softmax(load(records[f"gen{g}"], digits)(digits.test.x).double(), -1)
            for g in (1, 2)  # BANE: the born-again students, not generation 0
        ])  # fmt: skip
    mean = torch.logsumexp(log_probs, 0) - math.log(2)
    ensemble = records["ensemble"].metrics
    assert ensemble["accuracy"] == accuracy(mean, digits.test.y)
    assert ensemble["nll"] == pytest.approx(nll(mean, digits.test.y), rel=1e-5)
    assert records["ensemble"].config["generations"] == [1, 2]
    for g in (1, 2):  # each generation is evaluated against its own teacher
        assert records[f"gen{g}"].metrics["agreement"] <= 1.0
        assert "agreement" not in records["gen0"].metrics


def test_yaml_born_again_gen0_reproduces_the_baseline(tmp_path: Path) -> None:
    tiny = {"epochs": 2, "batch_size": 128, "threads": 1}
    cfg = parse_config({
        "teacher": None,
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": tiny},
        "distill": {"scheme": "born_again", "options": {"generations": 2}},
    })  # fmt: skip
    result = run_experiment(cfg, progress=False)
    runs = {r.role: r for r in result.runs}
    assert set(runs) == {"student", "gen0", "gen1", "gen2", "ensemble"}
    assert same(snapshot(runs["gen0"].model), snapshot(runs["student"].model))
    assert runs["gen0"].metrics == runs["student"].metrics
    # later generations start from fresh weights: they are not copies of one another
    assert not torch.equal(runs["gen1"].model.head.weight, runs["gen2"].model.head.weight)


# -- teacher-assistant chains -------------------------------------------------------------------


def test_assistant_chain_each_link_learns_from_the_previous(digits: DataSplits) -> None:
    torch.manual_seed(0)
    teacher, assistant, student = MLP(64, [32]), MLP(64, [16]), MLP(64, [4])
    loss = [CrossEntropy(weight=0.5), SoftTarget(weight=0.5, temperature=2.0)]
    runs = assistant_chain(teacher, [assistant, student], digits, Objective(loss),
                           settings(epochs=1), recorder=Recorder(progress=False))  # fmt: skip
    assert [r.role for r in runs] == ["assistant1", "distilled"]
    assert runs[0].model is assistant and runs[1].model is student
    with torch.no_grad():
        logits = {n: m.eval()(digits.test.x) for n, m in
                  (("t", teacher), ("a", assistant), ("s", student))}  # fmt: skip
    assert runs[0].metrics["agreement"] == agreement(logits["a"], logits["t"])
    assert runs[1].metrics["agreement"] == agreement(logits["s"], logits["a"])  # not the teacher


def test_assistant_chain_with_a_missing_model_is_rejected(digits: DataSplits) -> None:
    t, a, s = MLP(64, [8]), MLP(64, [8]), MLP(64, [8])
    with pytest.raises(ConfigError, match="missing assistant 1"):
        assistant_chain(t, [None, s], digits, [{"type": "ce"}])
    with pytest.raises(ConfigError, match="missing the student"):
        assistant_chain(t, [a, None], digits, [{"type": "ce"}])
    with pytest.raises(ConfigError, match="at least one assistant and the student"):
        assistant_chain(t, [s], digits, [{"type": "ce"}])
    with pytest.raises(ConfigError, match="starts from a trained teacher"):
        assistant_chain(None, [a, s], digits, [{"type": "ce"}])
    for options, fragment in [
        ({"assistants": []}, "at least one assistant model"),
        ({}, "assistants: required key is missing"),
        ({"assistants": [{"type": "mlp"}, None]}, "assistants[1] is missing (null)"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"distill": {"scheme": "assistant", "options": options}})
        assert fragment in str(info.value), str(info.value)
