"""Where ``--store`` points, as users get it wrong: a mistyped folder for a command that only
reads (no empty store may appear there), the database file instead of its folder, a read-only
folder. Each is one line naming the fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.errors import StoreError
from kdlab.store import RunStore, sqlite_backend


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "err_console", Console(stderr=True, width=500))


def invoke(*args: object):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def store(tmp_path: Path) -> Path:
    with RunStore(tmp_path / "store") as runs:
        run = runs.create_run(experiment="e", name="n", role="student", seed=0, config={})
        runs.finish_run(run, {"accuracy": 0.5})
    return tmp_path / "store"


@pytest.mark.parametrize(
    "command",
    [["runs"], ["summary", "e"], ["show", "2026"], ["report", "e", "--format", "md"]],
    ids=["runs", "summary", "show", "report"],
)
def test_reading_a_mistyped_store_creates_nothing(store: Path, tmp_path: Path, command) -> None:
    typo = tmp_path / "stroe"
    result = invoke(*command, "--store", typo)
    assert result.exit_code == 2, result.output
    assert f"no run store at {typo} (it holds no kdlab.sqlite); check --store" in " ".join(
        result.stderr.split()
    )
    assert not typo.exists()


def test_an_existing_empty_store_still_lists_no_runs(tmp_path: Path) -> None:
    RunStore(tmp_path / "empty").close()
    result = invoke("runs", "--store", tmp_path / "empty")
    assert result.exit_code == 0 and "No runs in this store yet" in result.stdout


def test_the_database_file_instead_of_its_folder_names_the_folder(store: Path) -> None:
    result = invoke("runs", "--store", store / "kdlab.sqlite")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert f"run store {store / 'kdlab.sqlite'} is a file; a store is the folder that holds " \
           f"kdlab.sqlite: give --store {store}" in message  # fmt: skip
    other = store.parent / "notes.txt"
    other.write_text("x")
    with pytest.raises(StoreError, match=r"is a file; .* give a folder"):
        RunStore(other)
    assert other.read_text() == "x"


def test_writing_commands_still_create_their_store(tmp_path: Path) -> None:
    with RunStore(tmp_path / "new" / "store") as runs:
        assert runs.list_runs() == []
    assert (tmp_path / "new" / "store" / "kdlab.sqlite").is_file()


def test_a_read_only_store_folder_says_so(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: the tests may run as root, for whom chmod does not make a folder read-only.
    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite_backend.sqlite3, "connect", refuse)
    monkeypatch.setattr(sqlite_backend.os, "access", lambda path, mode: False)
    with pytest.raises(StoreError, match=r"its folder is read-only, .* copy the store to a "
                                         r"writable folder"):  # fmt: skip
        RunStore(store, create=False)


def test_a_filter_that_matches_nothing_is_not_an_empty_store(store: Path) -> None:
    result = invoke("runs", "--store", store, "--experiment", "nope")
    assert result.exit_code == 0 and "No runs match these filters." in result.stdout
    assert "try `kdlab quickstart`" not in result.stdout
