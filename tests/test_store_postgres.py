"""The run store at a PostgreSQL URL: what only that backend has — connecting (and failing to,
in one line, password hidden), the artefact folder, refusing a foreign database, one schema
with SQLite's, and the command line with a URL store. tests/test_store.py runs every other
store test against both backends; the server comes from tests/pg_server.py.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdlab import cli
from kdlab.errors import StoreError
from kdlab.store import RunStore
from kdlab.store.location import ARTEFACTS_ENV, redact, with_artefacts
from kdlab.store.postgres_backend import CONNECT_TIMEOUT_S, VERSION_TABLE
from kdlab.store.schema import CURRENT, SCHEMA_VERSION
from pg_server import (  # noqa: F401  (fixtures: pytest finds them by their name= here)
    admin,
    pg_admin_fixture,
    pg_database_fixture,
)

TABLES = ("runs", "history", "completed_seeds")


def _refused(location: str) -> tuple[str, float]:
    """The one-line StoreError opening ``location`` gives, and how long it took."""
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        RunStore(location)
    message = str(info.value)
    assert "\n" not in message, message
    return message, time.monotonic() - start


# -- connecting ---------------------------------------------------------------------------------


def test_nothing_listening_is_one_line_naming_the_url_and_the_fix(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as sock:  # a port nothing listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql://kd:s3cret-pw@127.0.0.1:{port}/runs?artefacts={tmp_path}"
        message, took = _refused(url)
    assert took < CONNECT_TIMEOUT_S, took  # refused at once, not after the connect timeout
    assert f"postgresql://kd:***@127.0.0.1:{port}/runs" in message
    assert "s3cret-pw" not in message and "artefacts" not in message
    assert "Connection refused" in message and "is PostgreSQL running there" in message
    assert not list(tmp_path.iterdir())  # nothing created


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as sock:  # the kernel accepts the connection; nobody ever replies
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        url = f"postgresql://kd:pw@127.0.0.1:{sock.getsockname()[1]}/runs?artefacts={tmp_path}"
        message, took = _refused(url)
    assert took < CONNECT_TIMEOUT_S + 3, took
    assert "timeout" in message and "is PostgreSQL running there" in message


def test_wrong_password_and_missing_database(pg_database: str, tmp_path: Path) -> None:
    good = with_artefacts(pg_database, tmp_path)
    user, _, rest = good.partition("@")
    wrong = user.rsplit(":", 1)[0] + ":not-the-password@" + rest
    message, _ = _refused(wrong)
    assert "password authentication failed" in message
    assert "check the user name and password" in message
    assert "not-the-password" not in message and ":***@" in message
    missing = good.replace(pg_database.rsplit("/", 1)[1], "no_such_db")
    message, _ = _refused(missing)
    assert '"no_such_db" does not exist' in message and "createdb" in message
    assert not list(tmp_path.iterdir())


def test_without_psycopg_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    message, _ = _refused(f"postgresql://kd:pw@db.example:5432/runs?artefacts={tmp_path}")
    assert "needs psycopg: pip install 'kdlab[postgres]'" in message


def test_other_url_schemes_are_refused() -> None:
    message, _ = _refused("mysql://kd:pw@db.example/runs")
    assert "postgresql://" in message and "pw" not in message


def test_passwords_are_hidden_wherever_the_url_has_them() -> None:
    assert redact("postgresql://u:p%40ss@h:5432/d?sslmode=require") == (
        "postgresql://u:***@h:5432/d?sslmode=require"
    )
    assert redact("postgresql://u@h/d?password=x&sslmode=require") == (
        "postgresql://u@h/d?password=***&sslmode=require"
    )


# -- the artefact folder ------------------------------------------------------------------------


def test_the_artefact_folder_must_be_given_and_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARTEFACTS_ENV, raising=False)
    message, _ = _refused("postgresql://kd:pw@127.0.0.1:1/runs")  # before any connection
    assert "?artefacts=/shared/kdlab-artefacts" in message and ARTEFACTS_ENV in message
    message, _ = _refused("postgresql://kd:pw@127.0.0.1:1/runs?artefacts=shared/art")
    assert "relative" in message and "absolute" in message


def test_artefacts_from_the_url_or_the_environment(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARTEFACTS_ENV, str(tmp_path / "from env"))
    with RunStore(pg_database) as store:
        run = store.create_run(experiment="e", name="n", role="teacher", seed=0, config={})
        assert store.run_dir(run) == tmp_path / "from env" / "runs" / run
        assert store.location == redact(pg_database) and "***" in store.location
    url = with_artefacts(pg_database, tmp_path / "from url & more")  # the URL's wins
    with RunStore(Path(url)) as store:  # as typer's --store passes it: "//" folded to "/"
        assert store.run_dir(run) == tmp_path / "from url & more" / "runs" / run


# -- what kdlab refuses to touch ----------------------------------------------------------------


def _tables(url: str) -> list[str]:
    sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    return [row[0] for row in admin(url, sql)]


def test_a_foreign_database_is_refused_untouched(pg_database: str, tmp_path: Path) -> None:
    admin(pg_database, "CREATE TABLE photos (id INTEGER)", "INSERT INTO photos VALUES (7)")
    message, _ = _refused(with_artefacts(pg_database, tmp_path / "art"))
    assert "another program (tables: photos)" in message and "empty database" in message
    assert _tables(pg_database) == ["photos"]  # no kdlab table was created beside it
    assert admin(pg_database, "SELECT id FROM photos") == [(7,)]
    assert not (tmp_path / "art").exists()


def test_a_newer_store_is_refused_untouched(pg_database: str, tmp_path: Path) -> None:
    RunStore(with_artefacts(pg_database, tmp_path)).close()
    assert _tables(pg_database) == sorted([*TABLES, VERSION_TABLE])
    admin(pg_database, f"UPDATE {VERSION_TABLE} SET version = {SCHEMA_VERSION + 1}")
    message, _ = _refused(with_artefacts(pg_database, tmp_path))
    assert "newer than this kdlab" in message and "upgrade kdlab" in message
    assert admin(pg_database, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION + 1,)]


# -- one schema, one behaviour ------------------------------------------------------------------


def _sqlite_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in TABLES}


def test_one_schema_for_both_backends(pg_database: str, tmp_path: Path) -> None:
    fresh = sqlite3.connect(":memory:")
    fresh.executescript(CURRENT)  # the shared DDL is valid SQLite too
    RunStore(tmp_path / "sqlite").close()  # SQLite's migrations, version 1 to 3
    migrated = sqlite3.connect(tmp_path / "sqlite" / "kdlab.sqlite")
    assert _sqlite_columns(fresh) == _sqlite_columns(migrated)
    RunStore(with_artefacts(pg_database, tmp_path)).close()
    sql = (
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    postgres: dict[str, list[str]] = {}
    for table, column in admin(pg_database, sql):
        postgres.setdefault(table, []).append(column)
    assert {t: postgres[t] for t in TABLES} == _sqlite_columns(migrated)
    migrated.close()


def test_listings_sort_bytewise_as_in_sqlite(pg_admin: str, tmp_path: Path) -> None:
    """Even in a database whose default collation would put "a" before "B"."""
    from pg_server import database_url

    name = "kdlab_test_icu"
    try:
        admin(pg_admin, f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                        "ICU_LOCALE 'en-US' LOCALE 'C'")  # fmt: skip
    except Exception as err:  # a server built without ICU
        pytest.skip(f"no ICU collation on this server: {err}")
    try:
        names = ["a", "B", "_x", "b"]
        for location in (
            tmp_path / "sqlite",
            with_artefacts(database_url(pg_admin, name), tmp_path),
        ):
            with RunStore(location) as store:
                for experiment in names:
                    store.create_run(experiment=experiment, name="n", role="r", seed=0, config={})
                assert store.experiments() == sorted(names)  # Python's order is byte order
    finally:
        admin(pg_admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_dead_running_run_reads_as_interrupted(pg_database: str, tmp_path: Path) -> None:
    location = with_artefacts(pg_database, tmp_path)
    with RunStore(location) as store:
        live = store.create_run(experiment="e", name="n", role="r", seed=0, config={})
        dead = store.create_run(experiment="e", name="n", role="r", seed=1, config={})
    admin(pg_database, f"UPDATE runs SET pid = 2147483000 WHERE id = '{dead}'")  # no such pid
    old = "2000-01-01T00:00:00.000000+00:00"  # another host's run, silent for years
    admin(pg_database, f"UPDATE runs SET host = 'elsewhere', heartbeat_at = '{old}' WHERE id = "
                       f"'{live}'")  # fmt: skip
    with RunStore(location) as store:
        assert [r.id for r in store.list_runs(status="interrupted")] == [dead, live]
        store.reopen_run(dead)
        assert store.get_run(dead).status == "running"


# -- the command line ---------------------------------------------------------------------------


def test_kdlab_run_resume_and_runs_with_a_url_store(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "name": "tiny", "seeds": [0], "data": {"source": "digits"},
        "teacher": {"model": {"type": "mlp", "hidden": [16]}, "train": {"epochs": 2, "threads": 1}},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": {"epochs": 2, "threads": 1},
                    "train_subset": 60},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    url = with_artefacts(pg_database, tmp_path / "art")
    runner = CliRunner()
    first = runner.invoke(cli.app, ["run", str(path), "--store", url, "--no-progress"])
    assert first.exit_code == 0, first.output
    monkeypatch.setenv("KDLAB_STORE", url)
    again = runner.invoke(cli.app, ["run", str(path), "--no-progress", "--resume"])
    assert again.exit_code == 0, again.output
    assert "seeds 0 were complete in the store and not re-run" in again.stdout
    with RunStore(url) as store:
        runs = store.list_runs()
        assert {r.role for r in runs} == {"teacher", "student", "distilled"} and len(runs) == 3
        assert all(Path(r.artefacts["model"]).is_file() for r in runs)
    listing = runner.invoke(cli.app, ["runs"])
    assert listing.exit_code == 0 and listing.stdout.count("finished") == 3
    monkeypatch.setenv("KDLAB_STORE", "postgresql://kd:pw@127.0.0.1:1/runs?artefacts=/tmp")
    down = runner.invoke(cli.app, ["runs"])
    assert down.exit_code == 2 and "cannot connect to run store" in " ".join(down.output.split())


def test_a_held_writer_lock_times_out_and_the_store_stays_usable(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from kdlab.store import postgres_backend

    monkeypatch.setattr(postgres_backend, "LOCK_TIMEOUT_S", 1)  # 60 s in use
    with RunStore(with_artefacts(pg_database, tmp_path)) as store:
        run = store.create_run(experiment="e", name="n", role="r", seed=0, config={})
        with psycopg.connect(pg_database) as other:  # another writer, stuck mid-transaction
            other.execute("SELECT pg_advisory_xact_lock(%s)", (postgres_backend.LOCK_KEY,))
            start = time.monotonic()
            with pytest.raises(StoreError, match=r"cannot write to run store.*lock timeout"):
                store.log_epoch(run, 1, {"loss": 1.0})
            assert time.monotonic() - start < 30  # gave up after LOCK_TIMEOUT_S, not 60 s
        store.fail_run(run, "bad\x00byte")  # the lock is free again; PostgreSQL text has no NUL
        assert store.get_run(run).error == "bad\ufffdbyte" and store.history(run) == []
