"""Optional experiment trackers that receive every run's per-epoch history.

    kdlab run exp.yaml --track tensorboard:tb-logs --track mlflow:http://localhost:5000

A sink is a :data:`kdlab.runs.RunHook`: as each run starts training it opens that run's writer
and returns the epoch callback that sends each epoch's row (the keys ``kdlab show --history``
prints: ``loss``, the loss terms, ``lr``, ``seconds``, ``val_accuracy``, …) at step = epoch.
The run store stays the record; the sinks are views of it for the tools people already use.

- ``tensorboard:DIR`` writes one event-file folder per run, ``DIR/<experiment>/<label>-<run id>``
  (``pip install kdlab[tensorboard]``).
- ``mlflow:URI`` logs one MLflow run per kdlab run, under an MLflow experiment of the same name,
  tagged with the kdlab run id, role and seed (``pip install kdlab[mlflow]``); it ends FINISHED
  after its last epoch and KILLED when it stopped early (failed, interrupted, pruned).

Both packages are imported only when a sink is asked for; only rank 0 writes under DDP.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from kdlab.distributed import is_main
from kdlab.engine import EpochCallback
from kdlab.errors import ConfigError, quote, shorten
from kdlab.runs import RunInfo

KINDS = ("tensorboard", "mlflow")


class Sink(Protocol):
    def __call__(
        self, experiment: str, run: RunInfo, run_id: str | None, epochs: int
    ) -> EpochCallback | None: ...

    def close(self) -> None: ...


def _safe(name: str) -> str:
    """A file or folder name from a run label ("distilled s0" → "distilled_s0")."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "run"


def _scalars(row: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "epoch"}


class TensorBoardSink:
    """One ``SummaryWriter`` per run, flushed every epoch (a crash loses no epoch)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._open: dict[int, Any] = {}

    def __call__(
        self, experiment: str, run: RunInfo, run_id: str | None, epochs: int
    ) -> EpochCallback | None:
        if not is_main():
            return None
        from torch.utils.tensorboard import SummaryWriter

        name = _safe(run.label) + (f"-{run_id}" if run_id else "")
        writer = SummaryWriter(log_dir=str(self.directory / _safe(experiment) / name))
        self._open[id(writer)] = writer

        def log(row: dict[str, float]) -> None:
            epoch = int(row["epoch"])
            for key, value in _scalars(row).items():
                writer.add_scalar(key, value, epoch)
            writer.flush()
            if epoch >= epochs:
                writer.close()
                self._open.pop(id(writer), None)

        return log

    def close(self) -> None:
        for writer in self._open.values():
            writer.close()
        self._open.clear()


class MLflowSink:
    """One MLflow run per kdlab run, through ``MlflowClient`` (no global active-run state, so
    runs of several seeds and schemes never nest or clash)."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)  # opens the store: a bad URI fails here
        except Exception as err:
            raise ConfigError(f"--track mlflow:{uri}: {_first_sentence(err)}") from None
        self._experiments: dict[str, str] = {}
        self._open: set[str] = set()

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            self._experiments[name] = (
                found.experiment_id if found else self.client.create_experiment(name)
            )
        return self._experiments[name]

    def __call__(
        self, experiment: str, run: RunInfo, run_id: str | None, epochs: int
    ) -> EpochCallback | None:
        if not is_main():
            return None
        from mlflow.entities import Metric

        tags = {"kdlab.experiment": experiment, "kdlab.role": run.role, "kdlab.seed": str(run.seed)}
        if run_id:
            tags["kdlab.run_id"] = run_id
        created = self.client.create_run(self._experiment_id(experiment), run_name=run.label,
                                         tags=tags)  # fmt: skip
        mlflow_id = created.info.run_id
        self._open.add(mlflow_id)

        def log(row: dict[str, float]) -> None:
            epoch, now = int(row["epoch"]), int(time.time() * 1000)
            metrics = [Metric(k, v, now, epoch) for k, v in _scalars(row).items()]
            self.client.log_batch(mlflow_id, metrics=metrics)
            if epoch >= epochs:
                self.client.set_terminated(mlflow_id, "FINISHED")
                self._open.discard(mlflow_id)

        return log

    def close(self) -> None:
        for mlflow_id in self._open:  # never reached its last epoch
            self.client.set_terminated(mlflow_id, "KILLED")
        self._open.clear()


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return shorten(text.split(". ")[0] + ("." if ". " in text else ""), 300)


def _require(package: str, extra: str, spec: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"--track {spec} needs {package}: pip install kdlab[{extra}]")


def parse_track(spec: str) -> Sink:
    """``tensorboard:DIR`` or ``mlflow:URI`` → its sink (the package checked now, not later)."""
    kind, sep, target = spec.partition(":")
    if kind not in KINDS or not sep or not target:
        raise ConfigError(
            f"--track {quote(spec)} is not tensorboard:DIR or mlflow:URI; write e.g. "
            "--track tensorboard:tb-logs or --track mlflow:http://localhost:5000"
        )
    if kind == "tensorboard":
        _require("tensorboard", "tensorboard", spec)
        return TensorBoardSink(target)
    _require("mlflow", "mlflow", spec)
    return MLflowSink(target)


@contextmanager
def tracking(specs: Sequence[str] | None) -> Iterator[list[Sink]]:
    """The sinks of ``--track`` options, every one closed at the end (even after an error)."""
    sinks = [parse_track(spec) for spec in specs or ()]
    try:
        yield sinks
    finally:
        for sink in sinks:
            sink.close()


__all__ = ["MLflowSink", "Sink", "TensorBoardSink", "parse_track", "tracking"]
