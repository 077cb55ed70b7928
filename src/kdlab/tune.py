"""Hyperparameter search over an experiment config with Optuna: ``kdlab tune``.

    kdlab tune exp.yaml --param distill.loss.1.temperature=log:1:20 --trials 50

Each trial is the config with the trial's values applied as overrides (:mod:`kdlab.overrides`),
named after the study and run by :func:`~kdlab.experiment.run_experiment` into the run store;
its runs record ``tune: {study, trial, params}`` beside the experiment config (whose
fingerprint is thus unchanged). TPE sampler, seeded; MedianPruner by default. A rerun continues
the study only with its ``--param`` and config, as the study records them (:mod:`.tune_checks`).

**Objective**: the distilled student's *validation* accuracy, of the model the run keeps (the
best epoch's with ``keep_best``, else the last epoch's), mean over seeds. Test accuracy is never
read: choosing hyperparameters on it would make the test accuracy reported afterwards optimistic.
**Pruning** sees each validation accuracy of a distilled student (step = its count in the trial,
seed after seed); a pruned trial's run is recorded ``failed`` with ``TrialPruned: trial 3 pruned
by MedianPruner at epoch 2/20 …``. The student-alone baseline is not trained in trials.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from kdlab.config import ExperimentConfig
from kdlab.errors import ConfigError, KdlabError, NonFiniteLossError, shorten
from kdlab.experiment import ExperimentResult, run_experiment
from kdlab.health import UnhealthyRunError
from kdlab.overrides import apply_overrides
from kdlab.runs import RunHook, RunInfo
from kdlab.store import RunStore
from kdlab.store.location import redact
from kdlab.tune_checks import (
    DEFAULT_STORAGE,
    SYNTAX,
    ParamSpec,
    check_params,
    check_same_study,
    check_set_once,
    check_storage,
    identity,
    override,
    parse_param,
)

OBJECTIVE = "val_accuracy"
#: Failures a hyperparameter can cause (a diverging loss): the trial fails, the study goes on.
TRIAL_FAILURES = (NonFiniteLossError, UnhealthyRunError)
#: Sections whose change changes the teacher: with none of them searched, every trial after the
#: first distills from the first trial's teacher instead of training the same one again.
TEACHER_KEYS = ("teacher", "data", "seeds")


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("kdlab tune needs Optuna: pip install kdlab[tune]") from None
    return optuna


@dataclass
class TuneOptions:
    """How a study runs: ``trials`` is its total (a continued study runs only the rest)."""

    trials: int = 20
    storage: str = DEFAULT_STORAGE
    #: The Optuna study and the run store's experiment name [default: the config's name + -tune].
    name: str | None = None
    progress: bool = True
    #: Tracking sinks (kdlab.tracking) given every run of every trial.
    hooks: Sequence[RunHook] = ()
    sampler_seed: int = 0
    #: An Optuna pruner; None: MedianPruner(n_startup_trials=5, n_warmup_steps=1).
    pruner: Any = None
    #: The config file (and overrides) named in the closing ``kdlab run`` suggestion.
    source: str = "exp.yaml"
    #: The ``--seeds``/``--store`` options that suggestion repeats, so it reproduces the trial.
    flags: str = ""


@dataclass
class _Objective:
    """One trial: the config with its values, run into the store; its validation accuracy."""

    cfg: ExperimentConfig
    specs: Sequence[ParamSpec]
    store: RunStore | None
    options: TuneOptions
    study: str
    teachers: dict[int, nn.Module] = field(default_factory=dict)

    def __call__(self, trial: Any) -> float:
        values = {spec.key: spec.suggest(trial) for spec in self.specs}
        assignments = [override(k, v) for k, v in values.items()] + [override("name", self.study)]
        cfg = apply_overrides(self.cfg, assignments, f"trial {trial.number}")
        tags = {"tune": {"study": self.study, "trial": trial.number, "params": values}}
        hooks = [*self.options.hooks, _Pruning(trial, self.options.pruner)]
        try:
            result = run_experiment(cfg, self.store, progress=self.options.progress,
                                    teachers=self.teachers, hooks=hooks, tags=tags)  # fmt: skip
        except TRIAL_FAILURES as err:
            trial.set_user_attr("error", shorten(str(err).split(". ")[0], 160))
            raise
        trial.set_user_attr("runs", [r.run_id for r in result.runs if r.run_id])
        if not any(s.key.split(".")[0] in TEACHER_KEYS for s in self.specs):
            self.teachers.update(result.teachers)
        train = cfg.distill.train or cfg.student.train
        return objective_value(result, train.keep_best)


@dataclass
class _Pruning:
    """A run hook reporting each validation accuracy of the trial's distilled students."""

    trial: Any
    pruner: Any
    step: int = 0

    def __call__(
        self, experiment: str, run: RunInfo, run_id: str | None, epochs: int
    ) -> Callable[[dict[str, float]], None] | None:
        if run.role != "distilled":
            return None

        def report(row: dict[str, float]) -> None:
            if OBJECTIVE not in row:
                return
            self.trial.report(row[OBJECTIVE], self.step)
            self.step += 1
            if self.trial.should_prune():
                import optuna

                raise optuna.TrialPruned(
                    f"trial {self.trial.number} pruned by {type(self.pruner).__name__} at epoch "
                    f"{int(row['epoch'])}/{epochs} of {run.label} ({OBJECTIVE} "
                    f"{row[OBJECTIVE]:.4f}); this run is not continued"
                )

        return report


def objective_value(result: ExperimentResult, keep_best: bool) -> float:
    """Mean over seeds of the distilled student's validation accuracy (of the model kept)."""
    values = []
    for run in result.by_role("distilled"):
        accuracies = [row[OBJECTIVE] for row in run.history if OBJECTIVE in row]
        if not accuracies:
            raise ConfigError(
                f"the distilled student of seed {run.seed} has no {OBJECTIVE}: kdlab tune needs "
                "a validation split (data.val_fraction > 0)"
            )
        values.append(max(accuracies) if keep_best else accuracies[-1])
    if not values:
        raise ConfigError(
            "kdlab tune optimises the validation accuracy of the run with role 'distilled', "
            "which this scheme does not record; use scheme offline, mutual, assistant or "
            "adversarial"
        )
    return sum(values) / len(values)


def run_study(
    cfg: ExperimentConfig,
    params: Sequence[str | ParamSpec],
    store: RunStore | None,
    options: TuneOptions | None = None,
    echo: Callable[[str], None] = print,
) -> Any:
    """Run (or continue) the study ``options.name`` of ``cfg`` over ``params``; returns it."""
    optuna = require_optuna()
    options = options or TuneOptions()
    specs = [p if isinstance(p, ParamSpec) else parse_param(p) for p in params]
    if not specs:
        raise ConfigError(f"kdlab tune needs at least one --param ({SYNTAX})")
    if options.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {options.trials}")
    cfg = apply_overrides(cfg, ["student.baseline=false"])  # not the objective: not trained
    check_params(cfg, specs)
    name = options.name or f"{cfg.name}-tune"
    study = _open_study(optuna, name, options)
    check_same_study(study, identity(cfg, specs, f"{options.source} {options.flags}".strip()))
    done = [t for t in study.trials if t.state.is_finished()]
    # A continued study draws new values: the sampler's seed moves on with its trial count.
    study.sampler = optuna.samplers.TPESampler(seed=options.sampler_seed + len(study.trials))
    remaining = max(0, options.trials - len(done))
    echo(f"study {name}: {len(done)} trial(s) done, {remaining} to run; objective: {OBJECTIVE} "
         "of the distilled student (validation split, mean over seeds)")  # fmt: skip
    objective = _Objective(cfg, specs, store, replace(options, pruner=study.pruner), name)

    def report(study: Any, trial: Any) -> None:
        echo(trial_line(study, trial))

    study.optimize(objective, n_trials=remaining, catch=TRIAL_FAILURES, callbacks=[report])
    for line in best_lines(study, options.source, options.flags):
        echo(line)
    return study


def _open_study(optuna: Any, name: str, options: TuneOptions) -> Any:
    check_storage(options.storage)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kdlab prints a line per trial itself
    pruner = options.pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    try:
        return optuna.create_study(study_name=name, storage=options.storage, pruner=pruner,
                                   direction="maximize", load_if_exists=True)  # fmt: skip
    except (KdlabError, KeyboardInterrupt):
        raise
    except Exception as err:  # a driver missing, a server down, a study of another direction
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"cannot open the Optuna study {name!r} in the --storage database: "
            f"{type(err).__name__}: {first[:200]}"
        ) from None


def _plain(value: Any, short: bool = False) -> str:
    """A value as an override writes it (``short``: floats to 4 significant digits)."""
    if short and isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def trial_line(study: Any, trial: Any) -> str:
    """One line per finished trial: its outcome, its values and the best trial so far."""
    state = trial.state.name
    if state == "COMPLETE":
        outcome = f"{OBJECTIVE} {trial.value:.4f}"
    elif state == "PRUNED":
        steps = trial.intermediate_values
        last = f" ({OBJECTIVE} {steps[max(steps)]:.4f})" if steps else ""
        outcome = f"pruned after {len(steps)} validation(s){last}"
    else:
        outcome = f"failed: {trial.user_attrs.get('error', 'see its run in the store')}"
    params = "  ".join(f"{k}={_plain(v, short=True)}" for k, v in trial.params.items())
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = f"  (best: trial {study.best_trial.number}, {study.best_value:.4f})" if completed else ""
    return f"trial {trial.number}: {outcome}  {params}{best}"


def best_lines(study: Any, source: str, flags: str = "") -> list[str]:
    """The best trial's value and params, and the ``kdlab run`` line that reproduces it
    (``source``: the config file and overrides; ``flags``: its ``--seeds``/``--store``)."""
    states = [t.state.name for t in study.trials]
    if "COMPLETE" not in states:
        words = {"PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
        counts = ", ".join(
            f"{states.count(s)} {words.get(s, s.lower())}" for s in sorted(set(states))
        )
        return [f"no trial of study {study.study_name} completed ({counts or 'none run'})"]
    best = study.best_trial
    short = "  ".join(f"{k}={_plain(v, short=True)}" for k, v in best.params.items())
    exact = " ".join(shlex.quote(f"{k}={_plain(v)}") for k, v in best.params.items())
    return [
        f"best: trial {best.number} of {len(states)}, {OBJECTIVE} {best.value:.4f}  {short}",
        f"run it: kdlab run {source} {exact}" + (f" {flags}" if flags else ""),
    ]


# -- the ``kdlab tune`` command (kdlab.cli registers it; cli.py is at its size limit) -----------

_Config = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
_Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Overrides key.path=value, e.g. distill.loss.1.temperature=8.", show_default=False
    ),
]
_Param = Annotated[list[str] | None, typer.Option(help=f"Searched key (repeat): {SYNTAX}.")]
_Trials = Annotated[int, typer.Option(help="Trials of the study in all (a rerun adds the rest).")]
_Storage = Annotated[str, typer.Option(help="Optuna storage: any RDB URL.")]
# No "[default: …]" in help texts: Rich reads "[word…]" as markup and drops it.
_Name = Annotated[
    str | None,
    typer.Option(help="Study and experiment name (default: the config's name with -tune)."),
]
_Seeds = Annotated[str | None, typer.Option(help="Override the config's seeds: 0,1,2")]
_Store = Annotated[  # str, not Path: Path() would fold a postgresql:// URL's "//"
    str | None, typer.Option(help="Run store folder or postgresql:// URL (default: as kdlab run).")
]


def cli_command(
    load: Callable[[Path, list[str]], ExperimentConfig],
    open_store: Callable[[str | None], Any],
    interruptible: Callable[[str], Any],
    echo: Callable[[str], None],
) -> Callable[..., None]:
    """``kdlab tune``, given the CLI's config loader, store opener, Ctrl-C guard and printer."""

    def tune(config: _Config, overrides: _Overrides = None, param: _Param = None,
             trials: _Trials = 20, storage: _Storage = DEFAULT_STORAGE, name: _Name = None,
             seeds: _Seeds = None, store: _Store = None) -> None:  # fmt: skip
        """Search hyperparameters with Optuna (TPE, median pruning) for the best validation
        accuracy of the distilled student; every trial's runs land in the run store."""
        cfg = load(config, [*(overrides or []), *([] if seeds is None else [f"seeds=[{seeds}]"])])
        specs = [parse_param(p) for p in param or []]
        check_set_once(overrides or [], specs, seeds)
        source = " ".join(shlex.quote(a) for a in [str(config), *(overrides or [])])
        flags = [*(["--seeds", seeds] if seeds is not None else []),
                 *(["--store", redact(store)] if store is not None else [])]  # fmt: skip
        again = f"kdlab tune {source} with the same options (the study continues)"
        with open_store(store) as run_store, interruptible(again):
            options = TuneOptions(trials, storage, name, source=source,
                                  flags=" ".join(shlex.quote(f) for f in flags))  # fmt: skip
            run_study(cfg, specs, run_store, options, echo)

    return tune


__all__ = ["DEFAULT_STORAGE", "OBJECTIVE", "ParamSpec", "TuneOptions", "best_lines", "check_params",
           "cli_command", "objective_value", "parse_param", "run_study"]  # fmt: skip
