"""Run a validated experiment config: per seed, data → teacher → student alone → the scheme.

The student alone and the distilled student start from the same initial weights (same seed), see
the same training examples and use the same training settings, so their difference is the loss.

With a store, each seed whose runs all finished is marked complete under the config's fingerprint
(:mod:`kdlab.resume`); ``resume=True`` then reuses those seeds' stored runs instead of training
them again. In an interrupted seed, every run that finished is loaded from the store and the
interrupted one continues from its last checkpoint (:func:`kdlab.runs.fit`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlab.config import ExperimentConfig
from kdlab.data import DataSplits
from kdlab.errors import ConfigError
from kdlab.health import check_teacher
from kdlab.inference import predict_logits
from kdlab.preflight import load_data, preflight
from kdlab.resume import StoredSeed, config_fingerprint
from kdlab.runs import Recorder, RunHook, RunInfo, RunResult, check_num_classes
from kdlab.schemes.base import DistillContext
from kdlab.schemes.offline import fit_offline
from kdlab.schemes.registry import get_scheme
from kdlab.store import RunStore
from kdlab.store.shared import shared_store
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


@dataclass
class _Seed:
    """One seed of one experiment while it runs."""

    cfg: ExperimentConfig
    seed: int
    recorder: Recorder
    config_json: dict[str, Any]

    def load_data(self) -> DataSplits:
        return load_data(self.cfg, self.seed)

    def teacher(self, data: DataSplits, given: nn.Module | None) -> tuple[Any, list[RunResult]]:
        """The seed's teacher (given, trained or loaded; None without one) and its runs."""
        runs: list[RunResult] = []
        if given is not None:
            check_num_classes(given, data, "teacher")
            model = given
        elif self.cfg.teacher is None:
            return None, []
        else:
            run = RunInfo(seed=self.seed, config={"experiment": self.config_json})
            teacher = build_teacher(self.cfg.teacher, data, run, self.recorder)
            model, runs = teacher.model, teacher.runs
        if len(data.val):  # a teacher at chance level teaches nothing: say so before distilling
            logits = predict_logits(model, data.val)
            check_teacher(logits, data.val.y, f"teacher s{self.seed}", self.recorder.strict)
        return model.eval(), runs

    def context(self, data: DataSplits, teacher: nn.Module | None) -> DistillContext:
        return DistillContext.for_seed(
            self.cfg, data, self.seed, teacher, self.recorder, self.config_json
        )


def fit_student_alone(cfg: ExperimentConfig, ctx: DistillContext) -> RunResult:
    """The student alone (role ``student``): the distilled student's initial weights and
    examples, its config's training settings, labels only. ``kdlab sweep`` runs it once per seed
    for all the cells that share it."""
    run = ctx.run("student", f"student s{ctx.seed}")
    return fit_offline(ctx.new_student(), ctx.data, [{"type": "ce"}], cfg.student.train, None,
                       run, ctx.recorder)  # fmt: skip


def run_experiment(
    cfg: ExperimentConfig,
    store: RunStore | None = None,
    *,
    progress: bool = True,
    teachers: dict[int, nn.Module] | None = None,
    on_run: Callable[[RunResult], None] | None = None,
    resume: bool = False,
    hooks: Sequence[RunHook] = (),
    tags: Mapping[str, Any] | None = None,
) -> ExperimentResult:
    """Train (or load) the teacher, the baseline student and the distilled student per seed.

    ``teachers`` gives a seed's teacher instead of its config's; ``on_run`` sees each run as it
    is made. ``resume``: seeds completed earlier in ``store`` under the same config (seeds aside)
    are not trained again; their stored runs are returned with ``model=None``. ``hooks`` give
    each run's epoch callbacks (tracking sinks, tune's pruning); ``tags`` are recorded in every
    run's config beside the experiment config, so its fingerprint is unchanged (tune's trial).
    """
    if resume and store is None:
        raise ConfigError("resume reads completed seeds from a run store; pass store=RunStore(...)")
    preflight(cfg, teacher=(teachers or {}).get(cfg.seeds[0]))  # every model and file, first
    store = shared_store(store)  # under DDP: rank 0 writes, the others ask it
    result = ExperimentResult(cfg.name)
    recorder = Recorder(store, cfg.name, progress, cfg.metrics.gamma, cfg.metrics.ece_bins,
                        resume=resume, strict=cfg.strict, hooks=hooks,
                        tags=tags or {})  # fmt: skip
    config_json = cfg.model_dump(mode="json")
    fingerprint = config_fingerprint(config_json)
    scheme = get_scheme(cfg.distill.scheme)

    def record(runs: list[RunResult]) -> None:
        result.runs.extend(runs)
        for run in runs:
            if on_run is not None:
                on_run(run)

    for seed in cfg.seeds:
        stored = StoredSeed(store, cfg.name, fingerprint, seed) if store is not None else None
        reused = stored.completed_runs() if resume and stored else []
        if reused:
            result.reused_seeds.append(seed)
            record(reused)
            continue
        one = _Seed(cfg, seed, recorder, config_json)
        first = len(result.runs)
        data = one.load_data()
        teacher, teacher_runs = one.teacher(data, (teachers or {}).get(seed))
        record(teacher_runs)
        if teacher is not None:
            result.teachers[seed] = teacher
        ctx = one.context(data, teacher)
        if cfg.student.baseline:
            record([fit_student_alone(cfg, ctx)])
        record(scheme.run(ctx))
        if stored is not None:
            stored.mark_complete([r.run_id for r in result.runs[first:] if r.run_id is not None])
    return result


__all__ = ["ExperimentResult", "fit_student_alone", "run_experiment"]
