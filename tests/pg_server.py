"""A throwaway PostgreSQL server for the store tests, and the fixtures that give tests a store
location of either backend (imported by the test modules, like the other helpers here).

The server is started once per test session: ``initdb`` into a temporary folder and ``pg_ctl
start`` on a free loopback port, password authentication (so a wrong password can be tested),
``fsync`` off (a test server need not survive a power cut). As root it runs as the ``postgres``
user (or ``nobody``): PostgreSQL refuses to run as root. ``KDLAB_TEST_PG`` =
``postgresql://user:password@host:port/postgres`` reuses a running server instead (its user must
be able to create databases). Without PostgreSQL's binaries or psycopg the PostgreSQL tests skip,
saying which is missing; the SQLite ones run.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdlab.store.location import with_artefacts

ADMIN_ENV = "KDLAB_TEST_PG"
USER = "kdlab"
BACKENDS = ["sqlite", "postgresql"]


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(versions[-1]).parent if versions else None


def _version(path: str) -> float:
    try:
        return float(Path(path).parents[1].name)
    except ValueError:
        return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; ``stop()`` removes it all."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin, self.port = bin_dir, free_port()
        self.password = secrets.token_hex(8)
        self.base = Path(tempfile.mkdtemp(prefix="kdlab-pg-"))
        self.data = self.base / "data"
        self.owner = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        ids: dict[str, Any] = {}
        if self.owner is not None:
            ids = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        done = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=120, **ids)  # fmt: skip
        if done.returncode != 0:
            log = self.base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()} {tail}")

    def start(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.owner is not None:
            for path in (self.base, pwfile):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                  "--no-locale", "--no-sync")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
            )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t",
                  "60", "start")  # fmt: skip

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def admin(url: str, *statements: str) -> list[tuple]:
    """Run statements (autocommit) at ``url``; the last one's rows, if it returns any."""
    import psycopg

    rows: list[tuple] = []
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
    return rows


def database_url(admin_url: str, name: str) -> str:
    """The admin URL pointing at database ``name``."""
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session", name="pg_admin")
def pg_admin_fixture() -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database as a user who may create others."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'kdlab[postgres]'")
    if os.environ.get(ADMIN_ENV):
        yield os.environ[ADMIN_ENV]
        return
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set "
            f"{ADMIN_ENV} to a running server's admin URL"
        )
    server = Server(bin_dir)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.base, ignore_errors=True)
        raise
    try:
        yield server.admin_url
    finally:
        server.stop()


@pytest.fixture(name="pg_database")
def pg_database_fixture(pg_admin: str) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = f"kdlab_test_{secrets.token_hex(6)}"
    admin(pg_admin, f"CREATE DATABASE {name}")
    try:
        yield database_url(pg_admin, name)
    finally:
        admin(pg_admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class StoreAt:
    """``store_at(folder)``: a store location whose artefacts go to ``folder`` — the folder
    itself (SQLite) or the test's PostgreSQL database with ``?artefacts=folder``."""

    def __init__(self, backend: str, url: str | None) -> None:
        self.backend, self.url = backend, url

    def __call__(self, folder: Path) -> str | Path:
        return folder if self.url is None else with_artefacts(self.url, folder)


@pytest.fixture(name="store_at", params=BACKENDS)
def store_at_fixture(request: pytest.FixtureRequest) -> StoreAt:
    """Parametrizes a test over both backends (see :class:`StoreAt`)."""
    if request.param == "sqlite":
        return StoreAt("sqlite", None)
    return StoreAt("postgresql", request.getfixturevalue("pg_database"))


def count_rows(location: str | Path, table: str) -> int:
    """Rows of ``table`` in a PostgreSQL store, read directly (not through kdlab)."""
    from kdlab.store.location import PostgresLocation, parse_location

    where = parse_location(location)
    assert isinstance(where, PostgresLocation)
    return int(admin(where.conninfo, f"SELECT count(*) FROM {table}")[0][0])
