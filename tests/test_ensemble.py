"""Ensembles of teachers (kdlab.models.ensemble) and the teacher options of experiments:
ensembles built from YAML and the early-stopped teacher (teacher.use_epoch)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from kdlab import checkpoint as ckpt
from kdlab.api import distill
from kdlab.config import parse_config
from kdlab.data import DataSplits, load_dataset
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.losses import CrossEntropy, Objective, SoftTarget
from kdlab.metrics import accuracy, nll
from kdlab.models import MLP, build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch, ModelOutput


class Fixed(nn.Module):
    """A 'model' that returns given logits whatever the input (its rows are the batch)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[: len(x)]


def reference_log_mean_prob(logits: list[Tensor], temperature: float = 1.0) -> Tensor:
    """log of the float64 mean of the members' probabilities at ``temperature``."""
    probs = torch.stack([torch.softmax(v.double() / temperature, -1) for v in logits])
    return probs.mean(0).log()


def member_logits(scale: float, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(6, 5, generator=g) for _ in range(3)]


@pytest.mark.parametrize("scale", [1.0, 8.0, 60.0])
def test_log_mean_exp_equals_float64_mean_of_probabilities(scale: float) -> None:
    logits = member_logits(scale)
    out = EnsembleTeacher([Fixed(v) for v in logits])(torch.zeros(6, 1))
    expected = reference_log_mean_prob(logits)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=2e-5)
    # the output is a normalised log-distribution, so softmax gives back the mean itself
    torch.testing.assert_close(torch.softmax(out.double(), -1), expected.exp(), atol=1e-6, rtol=0)


def test_confident_members_stay_finite_where_float32_probabilities_underflow() -> None:
    # gaps of ~150 nats: exp underflows to 0 in float32, not in float64
    logits = [torch.tensor([[0.0, -150.0, -300.0]]), torch.tensor([[-150.0, 0.0, -300.0]])]
    naive = torch.stack([torch.softmax(v, -1) for v in logits]).mean(0).log()
    assert torch.isinf(naive).any()  # what averaging probabilities in float32 gives
    out = EnsembleTeacher([Fixed(v) for v in logits])(torch.zeros(1, 1))
    expected = reference_log_mean_prob(logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_temperature_gives_the_mean_of_tempered_members_at_that_temperature(
    temperature: float,
) -> None:
    logits = member_logits(5.0, seed=1)
    members = [Fixed(v) for v in logits]
    tempered = EnsembleTeacher(members, temperature=temperature)(torch.zeros(6, 1))
    expected = reference_log_mean_prob(logits, temperature)
    # a consumer at the same T computes log_softmax(output / T): exactly the tempered mean ...
    got = torch.log_softmax(tempered.double() / temperature, -1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    # ... which is not what the T = 1 ensemble gives a consumer at T (the tempered mean-of-T=1)
    plain = EnsembleTeacher(members)(torch.zeros(6, 1))
    other = torch.log_softmax(plain.double() / temperature, -1)
    assert (other - expected).abs().max() > 1e-2
    # and the soft-target term at T sees KL(mean of tempered members ‖ q) exactly
    student = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    term = SoftTarget(temperature=temperature)
    value = term(ModelOutput(student), ModelOutput(tempered), Batch(torch.zeros(6, 1), None))
    log_q = torch.log_softmax(student.double() / temperature, -1)
    kl = (expected.exp() * (expected - log_q)).sum(-1).mean() * temperature**2
    assert math.isclose(value.item(), kl.item(), rel_tol=1e-5)


def test_members_with_different_class_counts_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        EnsembleTeacher([MLP(4, [8], num_classes=10), MLP(4, [8], num_classes=5)])
    assert "member 0: 10, member 1: 5" in str(info.value)
    # models that do not declare num_classes are caught on their first batch
    mixed = EnsembleTeacher([nn.Linear(4, 3), nn.Linear(4, 5)])
    with pytest.raises(ConfigError, match="member 0: 3, member 1: 5"):
        mixed(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="at least one model"):
        EnsembleTeacher([])
    with pytest.raises(ConfigError, match="temperature"):
        EnsembleTeacher([nn.Linear(4, 3)], temperature=0.0)


def test_ensemble_is_usable_wherever_a_teacher_is(digits: DataSplits) -> None:
    torch.manual_seed(0)
    members = [MLP(64, [16]) for _ in range(2)]
    ensemble = EnsembleTeacher(members)
    # frozen like any teacher (all members), and the agreement metric is against the ensemble
    run = distill(
        ensemble, MLP(64, [8]), digits, epochs=1, settings=TrainSettings(threads=1),
        progress=False,
    )  # fmt: skip
    assert not any(p.requires_grad for p in ensemble.parameters())
    with torch.no_grad():
        ens = ensemble.eval()(digits.test.x)
        student = run.model.eval()(digits.test.x)
    agree = (ens.argmax(-1) == student.argmax(-1)).double().mean().item()
    assert run.metrics["agreement"] == pytest.approx(agree)
    # feature terms can tap a member's layers by path
    scheme = OfflineScheme(MLP(64, [8]), Objective([CrossEntropy()]), ensemble)
    assert scheme.teacher is ensemble
    assert "members.1.features.0" in dict(ensemble.named_modules())


# -- experiments: teachers from YAML ----------------------------------------------------------


def tiny(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": 128, "threads": 1, "checkpoint_seconds": 0}


def base_config(teacher: dict, **student: object) -> dict:
    return {
        "name": "t",
        "teacher": {"model": {"type": "mlp", "hidden": [16]}, "train": tiny(2), **teacher},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": tiny(1), **student},
    }


def test_yaml_ensemble_records_members_and_the_ensemble(tmp_path: Path) -> None:
    cfg = parse_config(base_config({"ensemble": 2}, baseline=False))
    with RunStore(tmp_path / "store") as store:
        result = run_experiment(cfg, store, progress=False)
        records = {r.name: r for r in store.list_runs()}
    members = [r for r in records.values() if r.role == "teacher_member"]
    (ensemble_run,) = [r for r in records.values() if r.role == "teacher"]
    assert len(members) == 2 and all(r.status == "finished" for r in members)
    assert all(r.seed == 0 for r in records.values())  # recorded under the experiment's seed
    ensemble = result.teachers[0]
    assert isinstance(ensemble, EnsembleTeacher) and len(ensemble.members) == 2
    # members start from different weights (seed, seed + 1000): they are different models
    weights = [ckpt.load_state_dict(r.artefacts["model"]) for r in members]
    assert not torch.equal(weights[0]["head.weight"], weights[1]["head.weight"])
    # the ensemble's recorded metrics = a direct float64 computation from the stored members
    data = load_dataset("digits", seed=0, val_fraction=0.1)
    logits = []
    for state in weights:
        model = build_model({"type": "mlp", "hidden": [16]}, data.input_shape, 10)
        model.load_state_dict(state)
        with torch.no_grad():
            logits.append(model.eval()(data.test.x))
    mean_log_prob = reference_log_mean_prob(logits)
    assert ensemble_run.metrics["accuracy"] == accuracy(mean_log_prob, data.test.y)
    assert ensemble_run.metrics["nll"] == pytest.approx(nll(mean_log_prob, data.test.y), 1e-6)


def test_yaml_ensemble_errors_name_the_problem(tmp_path: Path) -> None:
    def error(teacher: dict) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(base_config(teacher))
        return str(info.value)

    assert "at least 2 members, got 1" in error({"ensemble": 1})
    mixed = [{"type": "mlp", "num_classes": 10}, {"type": "mlp", "num_classes": 5}]
    assert "different numbers of classes ([5, 10])" in error({"ensemble": mixed})
    assert "not both" in error({"checkpoint": "a.pt", "checkpoints": ["a.pt", "b.pt"]})
    assert "one file per member" in error({"ensemble": 3, "checkpoints": ["a.pt", "b.pt"]})
    assert "applies to an ensemble" in error({"ensemble_temperature": 4.0})
    assert "use an epoch ≤ 2" in error({"use_epoch": 3})
    assert "a loaded teacher has no epochs" in error({"use_epoch": 1, "checkpoint": "a.pt"})


def test_ensemble_of_checkpoints_with_a_member_of_other_classes_fails_before_training(
    tmp_path: Path,
) -> None:
    paths = []
    for i, classes in enumerate([10, 5]):
        model = MLP(64, [16], num_classes=classes)
        payload = {"format": ckpt.FORMAT, "version": ckpt.VERSION,
                   "models": {"model": model.state_dict()}}  # fmt: skip
        paths.append(str(ckpt.save_atomic(payload, tmp_path / f"m{i}.pt")))
    cfg = parse_config(base_config({"checkpoints": paths}))
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(ConfigError, match=r"teacher.checkpoints\[1\] .* does not fit"):
            run_experiment(cfg, store, progress=False)
        assert store.list_runs() == []  # nothing trained or recorded


# -- early-stopped teacher ----------------------------------------------------------------------


def test_early_stopped_teacher_teaches_with_its_weights_at_that_epoch(tmp_path: Path) -> None:
    cfg = parse_config(base_config({"use_epoch": 1, "train": tiny(3)}, baseline=False))
    with RunStore(tmp_path / "store") as store:
        result = run_experiment(cfg, store, progress=False)
        runs = {r.role: r for r in store.list_runs()}
        full_history = store.history(runs["teacher_final"].id)
        early_history = store.history(runs["teacher"].id)
    assert set(runs) == {"teacher_final", "teacher", "distilled"}
    assert [row["epoch"] for row in full_history] == [1, 2, 3]
    assert early_history == full_history[:1]
    # the teacher used is the one-epoch model: retrain the same teacher for 1 epoch directly
    data = load_dataset("digits", seed=0, val_fraction=0.1)
    torch.manual_seed(0)
    direct = build_model({"type": "mlp", "hidden": [16]}, data.input_shape, 10)
    Engine(TrainSettings(**tiny(1)), seed=0, progress=False).fit(
        OfflineScheme(direct, Objective([CrossEntropy()])), data.train, data.val
    )
    used = result.teachers[0]
    expected = direct.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in used.state_dict().items())
    final = ckpt.load_state_dict(runs["teacher_final"].artefacts["model"])
    assert not torch.equal(final["head.weight"], used.state_dict()["head.weight"])
    assert runs["teacher"].metrics["accuracy"] != runs["teacher_final"].metrics["accuracy"]
