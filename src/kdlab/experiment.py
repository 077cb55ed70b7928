"""Run a validated experiment config: per seed, a teacher, the student alone, the distilled student.

The student alone and the distilled student start from the same initial weights (same seed), see
the same training examples and use the same training settings, so their difference is the loss.

With a store, each seed whose runs all finished is marked complete under the config's fingerprint;
``resume=True`` then reuses those seeds' stored runs instead of training them again. In an
interrupted seed, a teacher that finished is loaded from its run; the rest trains again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlab.api import RunResult, check_num_classes, fit_model
from kdlab.config import ExperimentConfig
from kdlab.data import DataSplits, load_dataset, split_indices
from kdlab.data.base import ArrayDataset
from kdlab.engine import seed_everything
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.runners import DistillContext, get_runner
from kdlab.store import RunRecord, RunStore
from kdlab.teachers import build_teacher


@dataclass
class ExperimentResult:
    name: str
    runs: list[RunResult] = field(default_factory=list)
    #: The trained (or loaded) teacher of each seed, reusable by another experiment.
    teachers: dict[int, nn.Module] = field(default_factory=dict)
    #: Seeds whose runs were read back from the store (``resume``); their models are not loaded.
    reused_seeds: list[int] = field(default_factory=list)

    def by_role(self, role: str) -> list[RunResult]:
        return [r for r in self.runs if r.role == role]


def student_train_set(data: DataSplits, subset: int | None, seed: int) -> ArrayDataset:
    """The student's labelled examples: all of ``data.train``, or a stratified subset."""
    if subset is None:
        return data.train
    if subset > len(data.train):
        raise ConfigError(
            f"student.train_subset is {subset}, but {data.name} has only {len(data.train)} "
            "training examples after the validation split"
        )
    (index,) = split_indices(data.train.y.numpy(), [subset], seed)
    return data.train.subset(index)


def config_fingerprint(config_json: Mapping[str, Any]) -> str:
    """What makes two runs of an experiment comparable: the config without its seed list."""
    comparable = {k: v for k, v in config_json.items() if k != "seeds"}
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()[:16]


def run_fingerprint(record: RunRecord) -> str | None:
    """The fingerprint of the experiment config a stored run was made with (None: not known)."""
    config = record.config.get("experiment")
    return config_fingerprint(config) if isinstance(config, dict) else None


def reused_runs(store: RunStore, name: str, fingerprint: str, seed: int) -> list[RunResult]:
    """A completed seed's runs as results (``model`` is None: the weights stay on disk)."""
    return [
        RunResult(None, rec.metrics, store.history(rec.id), rec.id, rec.role, seed)
        for rec in store.completed_seed(name, fingerprint, seed)
    ]


def finished_runs(store: RunStore, name: str, fingerprint: str, seed: int):
    """``lookup(role, run name)``: the newest finished run of this seed and config, or None."""

    def lookup(role: str, run_name: str) -> RunRecord | None:
        for rec in store.list_runs(experiment=name, role=role, status="finished"):
            same = run_fingerprint(rec) == fingerprint and rec.seed == seed
            if same and rec.name == run_name and "model" in rec.artefacts:
                return rec
        return None

    return lookup


def run_experiment(
    cfg: ExperimentConfig,
    store: RunStore | None = None,
    *,
    progress: bool = True,
    teachers: dict[int, nn.Module] | None = None,
    on_run: Callable[[RunResult], None] | None = None,
    resume: bool = False,
) -> ExperimentResult:
    """Train (or load) the teacher, the baseline student and the distilled student per seed.

    ``resume``: seeds completed earlier in ``store`` under the same config (seeds aside) are not
    trained again; their stored runs are returned with ``model=None``.
    """
    if resume and store is None:
        raise ConfigError("resume reads completed seeds from a run store; pass store=RunStore(...)")
    result = ExperimentResult(cfg.name)
    common = {
        "store": store,
        "experiment": cfg.name,
        "progress": progress,
        "gamma": cfg.metrics.gamma,
        "ece_bins": cfg.metrics.ece_bins,
    }
    config_json = cfg.model_dump(mode="json")
    fingerprint = config_fingerprint(config_json)

    def record(run: RunResult) -> None:
        result.runs.append(run)
        if on_run is not None:
            on_run(run)

    runner = get_runner(cfg.distill.scheme)
    for seed in cfg.seeds:
        stored = reused_runs(store, cfg.name, fingerprint, seed) if resume and store else []
        if stored:
            result.reused_seeds.append(seed)
            for run in stored:
                record(run)
            continue
        first = len(result.runs)
        data = load_dataset(
            cfg.data.source, root=cfg.data.root, seed=seed, val_fraction=cfg.data.val_fraction,
            test_size=cfg.data.test_size, flatten=cfg.data.flatten,
        )  # fmt: skip
        teacher = (teachers or {}).get(seed)
        if teacher is not None:
            check_num_classes(teacher, data, "teacher")
        elif cfg.teacher is not None:
            lookup = finished_runs(store, cfg.name, fingerprint, seed) if resume and store else None
            teacher = build_teacher(cfg, data, seed, config_json, common, record, lookup)
        if teacher is not None:
            teacher.eval()
            result.teachers[seed] = teacher
        train_set = student_train_set(data, cfg.student.train_subset, seed)
        student_cfg = {"experiment": config_json, "train_examples": len(train_set)}

        def new_student(data: DataSplits = data, seed: int = seed) -> nn.Module:
            seed_everything(seed)  # the baseline and every distilled student start alike
            return build_model(cfg.student.model, data.input_shape, data.num_classes)

        if cfg.student.baseline:
            record(fit_model(
                new_student(), data, [{"type": "ce"}], cfg.student.train, seed=seed,
                train_set=train_set, role="student", name=f"student s{seed}",
                config=student_cfg, **common,
            ))  # fmt: skip
        ctx = DistillContext(
            data=data, seed=seed, teacher=teacher, train_set=train_set, loss=cfg.distill.loss,
            train=cfg.distill.train or cfg.student.train, options=cfg.distill.parsed_options(),
            new_student=new_student, student_model=dict(cfg.student.model),
            stages=cfg.distill.stages, fit_kwargs=common, config=student_cfg,
        )  # fmt: skip
        for run in runner.run(ctx):
            record(run)
        if store is not None:
            ids = [r.run_id for r in result.runs[first:] if r.run_id is not None]
            store.mark_seed_complete(cfg.name, fingerprint, seed, ids)
    return result


__all__ = ["ExperimentResult", "config_fingerprint", "run_experiment", "student_train_set"]
