"""Tracking sinks (``kdlab run --track``): TensorBoard event files and MLflow runs receive every
run's per-epoch history; a missing package or a bad spec is one line."""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal, tracking
from kdlab.errors import ConfigError
from kdlab.runs import RunInfo
from kdlab.store import RunStore

EPOCHS = 2
TINY = textwrap.dedent(
    f"""
    name: tracked
    seeds: [0]
    data: {{source: digits}}
    teacher:
      model: {{type: mlp, hidden: [16]}}
      train: {{epochs: {EPOCHS}, threads: 1}}
    student:
      model: {{type: mlp, hidden: [8]}}
      train: {{epochs: {EPOCHS}, threads: 1}}
    """
)
ROLES = {"teacher", "student", "distilled"}


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns when not on a terminal; the tests read whole lines."""
    monkeypatch.setattr(terminal, "err_console", Console(stderr=True, width=200))


def run_tracked(tmp_path: Path, *track: str) -> RunStore:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    args = ["run", str(config), "--store", str(tmp_path / "store"), "--no-progress"]
    for spec in track:
        args += ["--track", spec]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return RunStore(tmp_path / "store")


def test_tensorboard_event_files_hold_every_epoch_of_every_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = run_tracked(tmp_path, f"tensorboard:{tmp_path / 'tb'}")
    records = store.list_runs(experiment="tracked")
    folders = sorted((tmp_path / "tb" / "tracked").iterdir())
    assert len(folders) == len(records) == 3
    for record in records:
        folder = tmp_path / "tb" / "tracked" / f"{record.name.replace(' ', '_')}-{record.id}"
        events = EventAccumulator(str(folder))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"loss", "lr", "seconds", "val_accuracy", "val_nll"} <= tags, tags
        logged = events.Scalars("val_accuracy")
        stored = store.history(record.id)
        assert [e.step for e in logged] == list(range(1, EPOCHS + 1))
        assert [e.value for e in logged] == pytest.approx([r["val_accuracy"] for r in stored])


def test_mlflow_file_store_gets_one_finished_run_per_kdlab_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file: otherwise
    uri = f"file:{tmp_path / 'mlruns'}"
    store = run_tracked(tmp_path, f"mlflow:{uri}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["kdlab.role"] for r in runs} == ROLES
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        stored = store.history(run.data.tags["kdlab.run_id"])
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        by_step = {m.step: m.value for m in history}
        assert [by_step[s] for s in sorted(by_step)] == pytest.approx(
            [r["val_accuracy"] for r in stored]
        )
        assert {"loss", "lr", "val_nll"} <= set(run.data.metrics)


def test_an_mlflow_run_that_stops_early_ends_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with tracking.tracking([f"mlflow:file:{tmp_path / 'ml'}"]) as (sink,):
        log = sink("exp", RunInfo("distilled", "distilled s0"), "abc", 3)
        assert log is not None
        log({"epoch": 1, "loss": 0.5})  # epoch 1 of 3: then the run fails
    client = sink.client  # type: ignore[attr-defined]
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["kdlab.run_id"] == "abc"


def test_only_rank_0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "is_main", lambda: False)
    sink = tracking.TensorBoardSink(tmp_path / "tb")
    assert sink("exp", RunInfo("distilled"), "abc", 3) is None
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("wandb:proj", "is not tensorboard:DIR or mlflow:URI"),
        ("tensorboard:", "is not tensorboard:DIR or mlflow:URI"),
        (
            "tensorboard:tb",
            "--track tensorboard:tb needs tensorboard: pip install kdlab[tensorboard]",
        ),
        ("mlflow:file:x", "--track mlflow:file:x needs mlflow: pip install kdlab[mlflow]"),
    ],
)
def test_a_bad_spec_or_a_missing_package_is_one_line(
    spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    missing = {"tensorboard", "mlflow"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n in missing else real(n, *a)
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        tracking.parse_track(spec)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    result = CliRunner().invoke(cli.app, ["run", str(config), "--track", spec, "--store",
                                          str(tmp_path / "store")])  # fmt: skip
    assert result.exit_code == 2
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists() or not RunStore(tmp_path / "store").list_runs()
