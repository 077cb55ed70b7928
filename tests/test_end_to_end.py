"""End to end on the bundled digits: experiments recorded in a run store, the Python API, loading
a saved teacher, and failed runs. Small models and few epochs keep the whole file to seconds."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab import checkpoint as ckpt
from kdlab.api import RunResult, distill, evaluate, train
from kdlab.config import ExperimentConfig, parse_config
from kdlab.data.base import ArrayDataset
from kdlab.errors import NonFiniteLossError
from kdlab.experiment import run_experiment
from kdlab.models import MLP, build_model
from kdlab.schemes import base as scheme_base
from kdlab.schemes.base import student_train_set
from kdlab.settings import TrainSettings
from kdlab.store import RunStore

TEACHER = {"type": "mlp", "hidden": [64]}
STUDENT = {"type": "mlp", "hidden": [16]}
STUDENT_EPOCHS = 100


def experiment_config(**overrides) -> ExperimentConfig:
    data = {
        "name": "e2e",
        "seeds": [0],
        "data": {"source": "digits"},
        "teacher": {
            "model": TEACHER,
            "train": {"epochs": 10, "optimizer": {"lr": 0.003}, "threads": 1},
        },
        "student": {
            "model": STUDENT,
            "train_subset": 60,
            "train": {"epochs": STUDENT_EPOCHS, "optimizer": {"lr": 0.003}, "threads": 1},
        },
    }
    data.update(overrides)
    return parse_config(data)


@dataclasses.dataclass
class Experiment:
    root: Path
    cfg: ExperimentConfig
    result: object
    initial: list[dict]  # state_dict of every model built, in order, before training


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    root = tmp_path_factory.mktemp("e2e") / "store"
    cfg = experiment_config()
    initial: list[dict] = []

    def recording_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        initial.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    with pytest.MonkeyPatch.context() as mp, RunStore(root) as store:
        mp.setattr(scheme_base, "build_model", recording_build_model)
        result = run_experiment(cfg, store, progress=False)
    return Experiment(root, cfg, result, initial)


def _by_role(store: RunStore) -> dict:
    records = store.list_runs()
    by_role = {r.role: r for r in records}
    assert len(by_role) == len(records)
    return by_role


def test_experiment_records_teacher_student_and_distilled(experiment: Experiment) -> None:
    with RunStore(experiment.root) as store:
        runs = _by_role(store)
        assert set(runs) == {"teacher", "student", "distilled"}
        assert all(r.status == "finished" and r.error is None for r in runs.values())
        assert all(r.experiment == "e2e" and r.seed == 0 for r in runs.values())
        returned = {r.role: r for r in experiment.result.runs}
        for role, record in runs.items():
            assert record.id == returned[role].run_id
            assert record.metrics == returned[role].metrics  # exactly, through JSON
        distilled = runs["distilled"].metrics
        assert {"accuracy", "nll", "ece", "agreement", "kl_to_teacher", "distill_error"} == set(
            distilled
        )
        assert set(runs["student"].metrics) == {"accuracy", "nll", "ece"}
        assert all(math.isfinite(v) for v in distilled.values())
        assert runs["teacher"].metrics["accuracy"] > 0.85
        assert distilled["agreement"] > 0.7
        # what the student runs saw and how they were configured
        for role in ("student", "distilled"):
            config = runs[role].config
            assert config["train_examples"] == 60
            assert config["experiment"] == experiment.cfg.model_dump(mode="json")
        assert runs["distilled"].config["settings"]["epochs"] == STUDENT_EPOCHS


def test_baseline_and_distilled_student_start_alike(experiment: Experiment) -> None:
    # the students built by the experiment, in order: the baseline, then the distilled one
    students = [m for m in experiment.initial if m["head.weight"].shape == (10, 16)]
    assert len(students) == 2
    baseline, distilled = students
    assert baseline.keys() == distilled.keys()
    assert all(torch.equal(baseline[k], distilled[k]) for k in baseline)
    final = {r.role: r.model.state_dict() for r in experiment.result.runs}
    assert not torch.equal(final["student"]["head.weight"], final["distilled"]["head.weight"])


def test_experiment_history_per_epoch_with_term_names(experiment: Experiment) -> None:
    returned = {r.role: r for r in experiment.result.runs}
    with RunStore(experiment.root) as store:
        runs = _by_role(store)
        history = store.history(runs["distilled"].id)
        teacher_history = store.history(runs["teacher"].id)
    assert [row["epoch"] for row in history] == list(range(1, STUDENT_EPOCHS + 1))
    for row in history:
        assert {"loss", "ce", "kd", "acc", "lr", "val_accuracy", "val_nll"} <= set(row)
        assert row["loss"] == pytest.approx(0.1 * row["ce"] + 0.9 * row["kd"], rel=1e-6)
    assert [r["loss"] for r in history] == [r["loss"] for r in returned["distilled"].history]
    assert history[-1]["loss"] < history[0]["loss"]
    assert len(teacher_history) == 10 and "ce" in teacher_history[0]
    assert "kd" not in teacher_history[0]


def test_stored_model_reproduces_stored_metrics(experiment: Experiment, digits) -> None:
    with RunStore(experiment.root) as store:
        runs = _by_role(store)
    teacher = build_model(TEACHER, digits.input_shape, digits.num_classes)
    teacher.load_state_dict(ckpt.load_state_dict(runs["teacher"].artefacts["model"]))
    student = build_model(STUDENT, digits.input_shape, digits.num_classes)
    student.load_state_dict(ckpt.load_state_dict(runs["distilled"].artefacts["model"]))
    recomputed = evaluate(student, digits.test, teacher)
    assert len(digits.test) == 500
    assert recomputed["accuracy"] == runs["distilled"].metrics["accuracy"]
    assert recomputed == runs["distilled"].metrics
    assert evaluate(teacher, digits.test) == runs["teacher"].metrics
    # the resumable checkpoint is there too, at the last epoch
    state = ckpt.load_checkpoint(runs["distilled"].artefacts["checkpoint"])
    assert state["epoch"] == STUDENT_EPOCHS and len(state["history"]) == STUDENT_EPOCHS


def test_python_api_train_and_distill(digits) -> None:
    assert (kdlab.train, kdlab.distill, kdlab.evaluate) == (train, distill, evaluate)
    fast = TrainSettings(epochs=10, threads=1, optimizer={"lr": 0.003})
    torch.manual_seed(0)
    teacher = train(MLP(64, [64]), digits, settings=fast, progress=False, seed=0)
    assert isinstance(teacher, RunResult) and teacher.role == "model" and teacher.run_id is None
    assert set(teacher.metrics) == {"accuracy", "nll", "ece"}
    assert teacher.metrics["accuracy"] > 0.85
    assert len(teacher.history) == 10
    assert teacher.metrics == evaluate(teacher.model, digits.test)

    few = student_train_set(digits, 60, seed=0)  # 6 labelled images per class
    settings = TrainSettings(epochs=100, threads=1, optimizer={"lr": 0.01})
    torch.manual_seed(1)
    student = MLP(64, [16])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    alone = train(student, digits, settings=settings, train_set=few, progress=False)
    student2 = MLP(64, [16])
    student2.load_state_dict(start)  # same initial weights as the student alone
    result = distill(
        teacher.model, student2, digits, settings=settings, train_set=few, progress=False
    )
    assert result.role == "distilled" and len(result.history) == 100
    assert {"ce", "kd"} <= set(result.history[0])  # Hinton's loss by default
    assert set(result.metrics) >= {"agreement", "kl_to_teacher", "distill_error"}
    assert result.metrics == evaluate(result.model, digits.test, teacher.model)
    assert result.metrics["agreement"] > 0.8
    # the teacher's knowledge brings the student closer to it than labels alone do
    alone_kl = evaluate(alone.model, digits.test, teacher.model)["kl_to_teacher"]
    assert result.metrics["kl_to_teacher"] < alone_kl
    assert alone.metrics["accuracy"] > 0.6
    assert fast.epochs == 10
    again = train(MLP(64, [8]), digits, epochs=1, settings=fast, progress=False)
    assert len(again.history) == 1 and fast.epochs == 10  # epochs= leaves the settings alone


def test_experiment_with_saved_teacher_does_not_train_it(
    experiment: Experiment, tmp_path: Path
) -> None:
    with RunStore(experiment.root) as store:
        saved = _by_role(store)["teacher"]
    cfg = experiment_config(
        name="loaded",
        teacher={"model": TEACHER, "checkpoint": saved.artefacts["model"]},
        student={
            "model": STUDENT,
            "train_subset": 60,
            "baseline": False,
            "train": {"epochs": 3, "threads": 1},
        },
    )
    with RunStore(tmp_path / "store") as store:
        result = run_experiment(cfg, store, progress=False)
        runs = _by_role(store)
        assert set(runs) == {"teacher", "distilled"}
        teacher = runs["teacher"]
        assert teacher.status == "finished" and teacher.name == "teacher s0 (loaded)"
        assert store.history(teacher.id) == []  # not trained
        assert teacher.metrics == saved.metrics
        assert teacher.artefacts == {"model": saved.artefacts["model"]}
        assert len(store.history(runs["distilled"].id)) == 3
    loaded = result.teachers[0]
    assert all(
        torch.equal(v, w)
        for v, w in zip(
            loaded.state_dict().values(),
            ckpt.load_state_dict(saved.artefacts["model"]).values(),
            strict=True,
        )
    )
    assert result.by_role("teacher")[0].history == []


def test_failed_run_is_recorded_and_error_propagates(digits, tmp_path: Path) -> None:
    x = digits.train.x.clone()
    x[7, 0, 3, 3] = float("inf")  # one poisoned input
    poisoned = dataclasses.replace(digits, train=ArrayDataset(x, digits.train.y))
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step \d+"):
            train(
                MLP(64, [8]),
                poisoned,
                epochs=2,
                settings=TrainSettings(threads=1),
                store=store,
                progress=False,
                experiment="bad",
            )
        (run,) = store.list_runs()
        assert run.status == "failed" and run.experiment == "bad"
        assert "NonFiniteLossError: non-finite loss at epoch 1, step" in run.error
        assert "check the inputs for NaN/inf" in run.error
        assert run.finished_at is not None and run.metrics == {}
        assert store.history(run.id) == []


def test_empty_train_set_is_an_error_not_the_full_split(digits) -> None:
    empty = digits.train.subset(torch.arange(0))
    with pytest.raises(ValueError, match="empty"):
        train(
            MLP(64, [8]),
            digits,
            epochs=1,
            settings=TrainSettings(threads=1),
            train_set=empty,
            progress=False,
        )
