"""The runs layer: fit a scheme on the engine, evaluate the result, record it in the run store.

Every model kdlab trains or evaluates becomes one *run*: a row in the store with its config,
per-epoch history, test metrics and weights. Two objects travel together through every scheme:

- :class:`RunInfo` says what a run *is* — its role (``teacher``, ``student``, ``distilled``, …),
  display name, seed and the config recorded with it;
- :class:`Recorder` says where and how runs are *recorded* — the store (optional), the experiment
  name, progress bars and the metric options (Φ_γ's γ, ECE bins).

:func:`fit` trains anything that follows :class:`Fittable` (kdlab's schemes) with the engine;
:func:`record_model` records a model trained elsewhere (mutual-learning peers, snapshots,
ensembles, loaded checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab.data import ArrayDataset, DataSplits
from kdlab.devices import module_device
from kdlab.distributed import is_main
from kdlab.engine import Engine, EpochCallback, Trainable
from kdlab.errors import ConfigError, StoreError, shorten
from kdlab.health import check_history
from kdlab.inference import call_model, describe_inputs, model_output, predict_logits, to_device
from kdlab.metrics import classification_metrics, reliability_bins
from kdlab.progress import epoch_printer
from kdlab.settings import TrainSettings
from kdlab.store import RunRecord, RunStore
from kdlab.store.records import dumps
from kdlab.store.shared import shared_store
from kdlab.types import Batch


@dataclass
class RunResult:
    """A trained model with its test metrics and per-epoch history (and run id when stored).

    ``model`` is None only for a run read back from the store (``run_experiment(resume=True)``).
    """

    model: nn.Module | None
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    role: str = "model"
    seed: int = 0


@dataclass(frozen=True)
class RunInfo:
    """What one run is: its role, display name (default: the role), seed and recorded config."""

    role: str = "model"
    name: str | None = None
    seed: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.role

    def replace(self, **changes: Any) -> RunInfo:
        """A copy with ``changes``; a ``config`` mapping is merged into the recorded config."""
        if "config" in changes:
            changes["config"] = {**self.config, **changes["config"]}
        return dataclasses.replace(self, **changes)


#: (experiment, run, run id, epochs) → an epoch callback for that run, or None (kdlab.tracking).
RunHook = Callable[[str, RunInfo, str | None, int], EpochCallback | None]


@dataclass
class Recorder:
    """Where and how runs are recorded: the store (None: nowhere), experiment, progress, metrics."""

    store: RunStore | None = None
    experiment: str = "adhoc"
    progress: bool = True
    #: Temperature γ of the distillation error Φ_γ,n (seed 001 §7) and the ECE bin count.
    gamma: float = 1.0
    ece_bins: int = 15
    #: Reuse this experiment's finished runs and continue its interrupted ones, where role, name,
    #: seed and recorded config are the same (``kdlab run --resume``).
    resume: bool = False
    #: Stop (instead of warn) when a run looks like it learned nothing (kdlab.health).
    strict: bool = False
    #: Called as each run starts training: its sinks (kdlab.tracking) and trial pruning (tune).
    hooks: Sequence[RunHook] = ()
    #: Recorded in every run's config beside its own keys (kdlab tune: the trial and its params).
    tags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = shared_store(self.store)  # under DDP: rank 0 writes, the others ask it

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, test: ArrayDataset, teacher: nn.Module | None = None
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Test metrics and the reliability bins (kdlab.metrics), from one pass over test."""
        logits = predict_logits(model, test)
        teacher_logits = predict_logits(teacher, test) if teacher is not None else None
        metrics = classification_metrics(logits, test.y, teacher_logits, gamma=self.gamma,
                                         n_bins=self.ece_bins)  # fmt: skip
        return metrics, reliability_bins(logits, test.y, self.ece_bins)

    def start(self, run: RunInfo, config: Mapping[str, Any]) -> str | None:
        """Create the run's row (status ``running``); None without a store."""
        if self.store is None:
            return None
        return self.store.create_run(
            experiment=self.experiment, name=run.label, role=run.role, seed=run.seed,
            config={**config, **self.tags},
        )  # fmt: skip

    def previous(self, run: RunInfo, config: Mapping[str, Any]) -> RunRecord | None:
        """With ``resume``: the newest finished or interrupted run that is this one."""
        if not self.resume or self.store is None:
            return None
        wanted = json.loads(dumps({**config, **self.tags}, "config"))  # as the store gives it back
        for record in self.store.list_runs(experiment=self.experiment, role=run.role):
            same = (record.name, record.seed, record.config) == (run.label, run.seed, wanted)
            if same and record.status in ("finished", "interrupted"):
                return record
        return None

    def reopen(self, record: RunRecord) -> str:
        """Continue an interrupted run: its checkpoint checked, its status ``running`` again."""
        assert self.store is not None
        if "checkpoint" in record.artefacts and Path(record.artefacts["checkpoint"]).exists():
            verified_artefact(record, "checkpoint")
        self.store.reopen_run(record.id)
        return record.id

    def stop(self, run_id: str | None, err: BaseException, context: str = "") -> None:
        """Record why a run ended early: ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``."""
        if self.store is None or run_id is None:
            return
        if isinstance(err, KeyboardInterrupt):
            self.store.interrupt_run(run_id, f"interrupted ({type(err).__name__})")
        else:
            self.store.fail_run(run_id, context + error_text(err))

    def save_weights(self, run_id: str, model: nn.Module, epochs: int) -> tuple[dict, dict]:
        """Write a run's final weights (``model.pt``, ``model.safetensors``): their paths and
        SHA-256 hashes, by artefact key."""
        assert self.store is not None
        folder = self.store.run_dir(run_id)
        if not is_main():  # rank 0 writes the files and records them
            return {}, {}
        files = ckpt.save_model(model.state_dict(), folder, epochs)
        return {k: str(p) for k, p in files.items()}, {k: ckpt.sha256(p) for k, p in files.items()}

    def checkpoint_hook(self, run_id: str | None) -> Callable[[Path], None] | None:
        """Records each new checkpoint's hash before the file replaces the previous one, keeping
        the previous hash: a kill at any moment leaves a file that one of the two matches."""
        store = self.store
        if store is None or run_id is None:
            return None

        def record(new_file: Path) -> None:
            path = store.run_dir(run_id) / "checkpoint.pt"
            previous = store.get_run(run_id).hashes.get("checkpoint")
            if not is_main():  # the file is rank 0's: only it hashes and records it
                return
            hashes = {"checkpoint": ckpt.sha256(new_file)}
            if previous is not None:
                hashes["checkpoint.previous"] = previous
            store.add_artefact(run_id, "checkpoint", path, hashes)

        return record


def verified_artefact(record: RunRecord, key: str) -> Path:
    """The path of a run's artefact, after checking it is the file kdlab wrote (its SHA-256)."""
    path = Path(record.artefacts.get(key, ""))
    if key not in record.artefacts or not path.is_file():
        raise StoreError(
            f"run {record.id} has no {key} file (expected {path}); it was moved or deleted: "
            "run the experiment again without --resume"
        )
    expected = {record.hashes.get(key), record.hashes.get(f"{key}.previous")} - {None}
    if expected and ckpt.sha256(path) not in expected:
        raise StoreError(
            f"{path} ({key} of run {record.id}) is not the file kdlab wrote: its SHA-256 differs "
            "from the one recorded in the store, so it was replaced or damaged and kdlab will "
            "not load it; restore it, or run the experiment again without --resume"
        )
    return path


class Fittable(Trainable, Protocol):
    """A :class:`~kdlab.engine.Trainable` that also says how its result is judged and recorded."""

    def reference(self) -> nn.Module | None:
        """The teacher the result's agreement, KL and Φ_γ are measured against (None: none)."""
        ...

    def recorded_loss(self) -> list[str]:
        """The loss terms of the main model, as recorded with the run."""
        ...


def error_text(err: BaseException) -> str:
    """The one-line form of an exception that a failed run keeps in the store."""
    return "".join(traceback.format_exception_only(err)).strip()


def check_num_classes(model: nn.Module, data: DataSplits, role: str) -> None:
    """Fail before training when a model's logits do not have one entry per class.

    The logits are read from the model's output as training reads them
    (:func:`kdlab.inference.model_output`), so a tuple, dict or Hugging Face output is checked
    by the logits it holds, and an output selection that does not fit fails here.
    """
    sample = data.train.inputs(slice(2))
    rows = min(2, len(data.train))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            raw = call_model(model, to_device(sample, module_device(model)))
    except Exception as err:
        raise ConfigError(
            f"the {role} cannot process inputs of shape {describe_inputs(sample)} from "
            f"{data.name}: {type(err).__name__}: {shorten(' '.join(str(err).split()), 300)}"
        ) from err
    finally:
        model.train(was_training)
    logits = model_output(model, raw, role).logits
    shape = tuple(logits.shape)
    if shape != (rows, data.num_classes):
        fixes = [f"set its num_classes to {data.num_classes}"] if shape[:1] == (rows,) else []
        if not isinstance(raw, torch.Tensor):  # the selected part may not be the logits
            fixes.append("select its logits with output_index / output_key")
        raise ConfigError(
            f"the {role} outputs {shape} for a batch of {rows}, but {data.name} has "
            f"{data.num_classes} classes: its logits must have shape [batch, "
            f"{data.num_classes}]" + (f" ({', or '.join(fixes)})" if fixes else "")
        )


def fit(
    scheme: Fittable,
    data: DataSplits,
    settings: TrainSettings,
    run: RunInfo,
    recorder: Recorder | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult:
    """Train ``scheme`` on ``data.train`` (validating on ``data.val``), evaluate its
    ``eval_model()`` on ``data.test`` against its ``reference()``, and record the run.

    ``callbacks`` run after each epoch's row (e.g. to snapshot weights at an early epoch); a
    run with callbacks is never reused or continued by ``recorder.resume`` (they must see every
    epoch).
    """
    recorder = recorder or Recorder()
    model, teacher = scheme.eval_model(), scheme.reference()
    check_num_classes(model, data, run.role)
    if teacher is not None:
        check_num_classes(teacher, data, "teacher")
    config = {"settings": settings.model_dump(mode="json"), "loss": scheme.recorded_loss(),
              **run.config}  # fmt: skip
    previous = None if callbacks else recorder.previous(run, config)
    if previous is not None and previous.status == "finished":
        return _reuse(scheme, data, previous, recorder)
    run_id = recorder.reopen(previous) if previous else recorder.start(run, config)
    engine = _engine(settings, run, recorder, run_id, callbacks)
    try:
        history = engine.fit(scheme, data.train, data.val, resume=previous is not None)
        check_history(history, run.label, recorder.strict)
        metrics, bins = recorder.evaluate(model, data.test, teacher)
        if recorder.store is not None and run_id is not None:
            artefacts, hashes = recorder.save_weights(run_id, model, settings.epochs)
            artefacts["checkpoint"] = str(engine.checkpoint_path)
            recorder.store.finish_run(run_id, metrics, artefacts, hashes, bins)
    except BaseException as err:
        recorder.stop(run_id, err)
        raise
    return RunResult(model, metrics, history, run_id, run.role, run.seed)


def _engine(
    settings: TrainSettings,
    run: RunInfo,
    recorder: Recorder,
    run_id: str | None,
    callbacks: Sequence[EpochCallback],
) -> Engine:
    store = recorder.store
    loggers = [_epoch_logger(store, run_id)] if store and run_id else []  # the store's first
    plain = epoch_printer(run.label, settings.epochs, recorder.progress and is_main())
    hooks = [hook(recorder.experiment, run, run_id, settings.epochs) for hook in recorder.hooks]
    return Engine(
        settings, seed=run.seed, progress=recorder.progress,
        callbacks=[*loggers, *filter(None, [plain, *hooks]), *callbacks],
        description=run.label,
        checkpoint_path=store.run_dir(run_id) / "checkpoint.pt" if store and run_id else None,
        on_checkpoint=recorder.checkpoint_hook(run_id),
    )  # fmt: skip


def _reuse(scheme: Fittable, data: DataSplits, record: RunRecord, recorder: Recorder) -> RunResult:
    """A finished run's models loaded back into ``scheme`` (every trainable module from its
    final checkpoint, the evaluated model from its weights), with its stored metrics."""
    assert recorder.store is not None
    sample = data.train.inputs(slice(2))
    index = torch.arange(min(2, len(data.train)))
    scheme.prepare(Batch(sample, data.train.y[:2], index, train_size=len(data.train)))
    if "checkpoint" in record.artefacts:
        state = ckpt.load_checkpoint(verified_artefact(record, "checkpoint"))
        for key, module in scheme.trainable().items():
            module.load_state_dict(state["models"][key])
    model = scheme.eval_model()
    model.load_state_dict(ckpt.load_state_dict(verified_artefact(record, "model")))
    scheme.set_mode(False)
    history = recorder.store.history(record.id)
    return RunResult(model, record.metrics, history, record.id, record.role, record.seed or 0)


def _epoch_logger(store: RunStore, run_id: str) -> EpochCallback:
    def log(row: dict[str, float]) -> None:
        store.log_epoch(run_id, int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})

    return log


def record_model(
    model: nn.Module,
    data: DataSplits,
    run: RunInfo,
    recorder: Recorder | None = None,
    *,
    teacher: nn.Module | None = None,
    history: Sequence[Mapping[str, float]] = (),
    weights_file: str | None = None,
) -> RunResult:
    """Evaluate an already-trained model on test and record it as a finished run.

    For models a scheme trains jointly with others (mutual-learning peers), for snapshots
    (an early-stopped teacher) and for combinations of trained models (ensembles): ``history``
    is stored as the run's per-epoch rows, the weights as its ``model.pt`` — or, for a model
    loaded from ``weights_file``, that file is recorded as the run's model and nothing is written.
    """
    recorder = recorder or Recorder()
    previous = recorder.previous(run, run.config)
    if previous is not None and previous.status == "finished" and recorder.store is not None:
        stored = recorder.store.history(previous.id)
        return RunResult(model, previous.metrics, stored, previous.id, run.role, run.seed)
    metrics, bins = recorder.evaluate(model, data.test, teacher)
    rows = [dict(row) for row in history]
    run_id = recorder.start(run, run.config)
    if recorder.store is not None and run_id is not None:
        try:
            hooks = [hook(recorder.experiment, run, run_id, len(rows)) for hook in recorder.hooks]
            for log in [_epoch_logger(recorder.store, run_id), *filter(None, hooks)]:
                for row in rows:
                    log(row)
            if weights_file is None:
                artefacts, hashes = recorder.save_weights(run_id, model, len(rows))
            else:
                artefacts, hashes = {"model": weights_file}, {}
            recorder.store.finish_run(run_id, metrics, artefacts, hashes, bins)
        except BaseException as err:
            recorder.stop(run_id, err)
            raise
    return RunResult(model, metrics, rows, run_id, run.role, run.seed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    test: ArrayDataset,
    teacher: nn.Module | None = None,
    *,
    gamma: float = 1.0,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Test metrics of ``model`` (and, with a teacher, how closely it follows the teacher)."""
    return Recorder(gamma=gamma, ece_bins=ece_bins).evaluate(model, test, teacher)[0]


__all__ = ["Fittable", "Recorder", "RunHook", "RunInfo", "RunResult", "check_num_classes",
           "error_text", "evaluate", "fit", "record_model", "verified_artefact"]  # fmt: skip
