"""Tests of the ``kdlab`` command line (typer's CliRunner on kdlab.cli.app)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.quickstart import FEW_LABELS, quickstart_configs
from kdlab.store import RunStore

runner = CliRunner()
EPOCHS = 3

TINY = textwrap.dedent(
    f"""
    name: tiny
    seeds: [0]
    data: {{source: digits}}
    teacher:
      model: {{type: mlp, hidden: [32]}}
      train: {{epochs: {EPOCHS}, threads: 1}}
    student:
      model: {{type: mlp, hidden: [16]}}
      train: {{epochs: {EPOCHS}, threads: 1}}
      train_subset: 60
    """
)


def wide_consoles(mp: pytest.MonkeyPatch, width: int = 200) -> None:
    """Rich wraps at 80 columns when not on a terminal; tests read whole lines."""
    for module in (cli, terminal):
        mp.setattr(module, "console", Console(width=width))
        mp.setattr(module, "err_console", Console(stderr=True, width=width))


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    wide_consoles(monkeypatch)


def invoke(*args: str, **kw):
    return runner.invoke(cli.app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    """``kdlab run tiny.yaml`` once; returns (store folder, result)."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    store = folder / "store"
    with pytest.MonkeyPatch.context() as mp:
        wide_consoles(mp)
        result = invoke("run", config, "--store", store, "--no-progress")
    return store, result


# -- validate -----------------------------------------------------------------------------------


def test_validate_good_config(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert f"{path}: valid (tiny, seeds [0], data digits)" in result.stdout


@pytest.mark.parametrize(
    "text,expected",
    [
        ("seed: [0]\n", "unknown key 'seed' (did you mean 'seeds'?)"),
        ("name: x\nseeds: [0, 1\n", "is not valid YAML"),
        ("teacher:\n  train: {epoch: 3}\n", "at teacher.train: unknown key 'epoch'"),
        ("distill:\n  loss: [{type: kdd}]\n", "unknown loss 'kdd'"),
        ("- 1\n- 2\n", "must be a mapping of keys to values, got list"),
        (None, "does not exist"),
    ],
)
def test_validate_bad_config_exits_2_with_error_line(tmp_path: Path, text, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


# -- run, runs, show ----------------------------------------------------------------------------


def test_run_prints_summary_and_records_runs(ran) -> None:
    store, result = ran
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for role in ("teacher", "student", "distilled"):
        assert any(line.startswith(f"│ {role} ") for line in lines), result.stdout
    assert "KD gain in test accuracy:" in result.stdout and "paired over 1 seeds" in result.stdout
    assert f"Runs recorded in {store}." in result.stdout
    with RunStore(store) as s:
        records = s.list_runs()
        assert sorted(r.role for r in records) == ["distilled", "student", "teacher"]
        assert all(r.status == "finished" for r in records)
        assert all(len(s.history(r.id)) == EPOCHS for r in records)


def test_runs_lists_every_run(ran) -> None:
    store, _ = ran
    result = invoke("runs", "--store", store)
    assert result.exit_code == 0, result.output
    with RunStore(store) as s:
        records = s.list_runs()
    for record in records:
        row = next(line for line in result.stdout.splitlines() if record.id in line)
        assert record.role in row and "finished" in row
        assert f"{100 * record.metrics['accuracy']:.2f}" in row
    only = invoke("runs", "--store", store, "--role", "teacher")
    assert sum(r.id in only.stdout for r in records) == 1
    via_env = invoke("runs", env={"KDLAB_STORE": str(store)})
    assert all(r.id in via_env.stdout for r in records)


def test_runs_shows_full_ids_at_80_columns(ran, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = ran
    wide_consoles(monkeypatch, width=80)
    result = invoke("runs", "--store", store)
    with RunStore(store) as s:
        ids = [r.id for r in s.list_runs()]
    assert all(i in result.stdout for i in ids), result.stdout


def test_show_by_prefix_and_as_json(ran) -> None:
    store, _ = ran
    with RunStore(store) as s:
        record = s.list_runs(role="distilled")[0]
        history = s.history(record.id)
        ids = [r.id for r in s.list_runs()]
    prefix = next(
        record.id[:k]
        for k in range(1, len(record.id))
        if sum(i.startswith(record.id[:k]) for i in ids) == 1
    )
    text = invoke("show", prefix, "--store", store)
    assert text.exit_code == 0, text.output
    assert record.id in text.stdout and "role=distilled" in text.stdout
    assert f"{EPOCHS} epochs recorded" in text.stdout
    assert f"agreement: {record.metrics['agreement']:.6g}" in text.stdout
    assert f"artefact model: {record.artefacts['model']}" in text.stdout

    as_json = invoke("show", prefix, "--store", store, "--json", "--history")
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["id"] == record.id and payload["status"] == "finished"
    assert payload["metrics"] == record.metrics
    assert payload["history"] == history and len(payload["history"]) == EPOCHS
    assert {"ce", "kd", "loss"} <= set(payload["history"][0])
    no_history = json.loads(invoke("show", record.id, "--store", store, "--json").stdout)
    assert no_history["history"] is None and no_history["config"] == record.config

    table = invoke("show", record.id, "--store", store, "--history")
    assert table.exit_code == 0
    assert all(f"{row['loss']:.4g}" in table.stdout for row in history)


def test_show_unknown_and_ambiguous_ids_exit_2(ran) -> None:
    store, _ = ran
    result = invoke("show", "unknownid", "--store", store)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no run 'unknownid'")
    assert "kdlab runs" in result.stderr and "Traceback" not in result.output
    ambiguous = invoke("show", "2", "--store", store)  # every id starts with the year
    assert ambiguous.exit_code == 2 and "is ambiguous" in ambiguous.stderr


def test_runs_on_empty_store_and_bad_seeds(tmp_path: Path) -> None:
    result = invoke("runs", "--store", tmp_path / "empty")  # a store that does not exist
    assert result.exit_code == 2 and "no run store at" in result.stderr
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    bad = invoke("run", config, "--store", tmp_path / "s", "--seeds", "0,x", "--no-progress")
    assert bad.exit_code == 2
    assert "--seeds must be comma-separated integers like 0,1,2, got '0,x'" in bad.stderr
    twice = invoke("run", config, "--store", tmp_path / "s", "--seeds", "0,0", "--no-progress")
    assert twice.exit_code == 2 and "seeds must be distinct" in twice.stderr
    assert "Traceback" not in twice.output
    with RunStore(tmp_path / "s") as s:
        assert s.list_runs() == []


def test_summary_of_stored_experiment(ran) -> None:
    store, _ = ran
    result = invoke("summary", "tiny", "--store", store)
    assert result.exit_code == 0, result.output
    rows = [
        line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│ ")
    ]
    assert rows == ["teacher", "student", "distilled"]
    missing = invoke("summary", "nope", "--store", store)
    assert missing.exit_code == 2
    assert "no finished runs of experiment 'nope'; experiments: tiny" in missing.stderr


# -- quickstart and datasets ----------------------------------------------------------------------


def test_quickstart_one_seed(tmp_path: Path) -> None:
    # One seed of the quickstart takes about 4 s on one core, so it runs for real.
    store = tmp_path / "qs"
    result = invoke("quickstart", "--seeds", "0", "--store", store, "--no-progress")
    assert result.exit_code == 0, result.output
    labels = [
        "teacher",
        "student alone, all labels",
        "distilled, all labels",
        f"student alone, {FEW_LABELS} labels",
        f"distilled, {FEW_LABELS} labels",
    ]
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == labels
    assert all(row.split("│")[2].strip() == "1" for row in rows)  # one seed each
    assert "KD gain in test accuracy, all labels" in result.stdout
    assert f"KD gain in test accuracy, {FEW_LABELS} labels" in result.stdout
    with RunStore(store) as s:
        records = s.list_runs()
    assert len(records) == 5  # one teacher, shared by both regimes
    assert sorted(r.role for r in records) == [
        "distilled",
        "distilled",
        "student",
        "student",
        "teacher",
    ]
    assert {r.experiment for r in records} == {"quickstart", f"quickstart-{FEW_LABELS}-labels"}
    assert all(r.status == "finished" for r in records)
    teacher = next(r for r in records if r.role == "teacher")
    assert f"{100 * teacher.metrics['accuracy']:.2f}" in rows[0]


def test_quickstart_configs() -> None:
    full, few = quickstart_configs([4, 5])
    assert full.seeds == few.seeds == [4, 5]
    assert full.student.train_subset is None and few.student.train_subset == FEW_LABELS
    assert few.name == f"quickstart-{FEW_LABELS}-labels"
    assert few.student.train.epochs > full.student.train.epochs
    assert few.teacher == full.teacher and few.distill == full.distill


def test_datasets_lists_digits_as_bundled() -> None:
    result = invoke("datasets")
    assert result.exit_code == 0
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("│ ")
    }
    assert rows["digits"] == "bundled"
    assert {"mnist", "fashion-mnist", "cifar10", "svhn", "notmnist"} <= set(rows)
