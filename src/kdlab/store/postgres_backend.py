"""The run store in a PostgreSQL database, so that processes on many machines write one store.

Through psycopg 3 (``pip install 'kdlab[postgres]'``), imported only when a URL store is opened.
What differs from SQLite, and only here:

- placeholders: the store's ``?`` become psycopg's ``%s``;
- exclusive writers: every write transaction first takes one transaction-scoped advisory lock
  (``pg_advisory_xact_lock``), so writers run one at a time as under SQLite's ``BEGIN
  IMMEDIATE`` — a read-modify-write (merging artefacts) never loses another's update and no
  transaction fails on a serialisation conflict. Waits are bounded by ``lock_timeout``;
- the schema version is the one row of table ``kdlab_schema`` (SQLite: ``PRAGMA user_version``);
  a PostgreSQL store is created at the current version from ``schema.CURRENT``, with every text
  column in the "C" collation, so that listings sort byte-wise, as SQLite's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from kdlab.errors import StoreError
from kdlab.store.backend import Cursor, one_line, transaction
from kdlab.store.location import PostgresLocation
from kdlab.store.schema import CURRENT, SCHEMA_VERSION, statements

#: Advisory lock key every kdlab writer of a database takes (b"kdlab" as an integer).
LOCK_KEY = int.from_bytes(b"kdlab", "big")
CONNECT_TIMEOUT_S = 5
#: As SQLite's busy timeout: how long a write waits for the other writers.
LOCK_TIMEOUT_S = 60
VERSION_TABLE = "kdlab_schema"
_TABLES = (
    "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
    " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
    " AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
)  # pg_class, not information_schema: that one hides tables this user may not read


def _psycopg(shown: str) -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise StoreError(
            f"run store {shown} is a PostgreSQL URL, which needs psycopg: "
            "pip install 'kdlab[postgres]'"
        ) from e
    return psycopg


class PostgresBackend:
    """One autocommit connection (reads need no transaction); writes open one explicitly."""

    def __init__(self, where: PostgresLocation) -> None:
        self.root = where.artefacts
        self.path: str = where.shown
        self._where = where
        self._pg = _psycopg(where.shown)
        self.errors: tuple[type[Exception], ...] = (self._pg.Error,)
        self._conn = self._connect()
        try:
            self._open()
        except self._pg.Error as e:
            self.close()
            raise StoreError(f"cannot open run store {self.path}: {self._hidden(e)}") from e
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Any:
        pg, where = self._pg, self._where
        try:
            given = pg.conninfo.conninfo_to_dict(where.conninfo)
            extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S,
                                     "application_name": "kdlab"}  # fmt: skip
            options = {k: v for k, v in extra.items() if k not in given}
            conn = pg.connect(where.conninfo, autocommit=True, **options)
        except pg.Error as e:
            message = self._hidden(e)
            raise StoreError(
                f"cannot connect to run store {self.path}: {message}; {_fix(message)}"
            ) from e
        return conn

    def _open(self) -> None:
        self.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
        # A writer stuck mid-transaction (a stopped process) must not hold the lock forever.
        self.execute(f"SET idle_in_transaction_session_timeout = '{LOCK_TIMEOUT_S}s'")
        version = self._check_ours()  # refuse a foreign database before writing anything
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create run store directory {self.root} (the artefact folder of "
                f"{self.path}): {e}; choose a writable folder that every machine sees"
            ) from e
        if version == SCHEMA_VERSION:
            return
        try:
            with transaction(self):
                self._migrate()
        except StoreError as e:
            if not isinstance(e.__cause__, self._pg.errors.InsufficientPrivilege):
                raise
            raise StoreError(
                f"{e}; the user needs CREATE on the database's schema (e.g. make it the "
                "database's owner)"
            ) from e.__cause__

    def _check_ours(self) -> int:
        """The store's schema version (0: empty database); a StoreError for a database kdlab
        must not touch: another program's tables, or a store of a newer kdlab."""
        tables = [row[0] for row in self.execute(_TABLES).fetchall()]
        if VERSION_TABLE not in tables:
            if tables:
                raise StoreError(
                    f"{self.path} is a PostgreSQL database of another program (tables: "
                    f"{', '.join(tables[:20])}); give kdlab an empty database of its own "
                    "(createdb kdlab_runs)"
                )
            return 0
        rows = self.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall()
        version = max((int(row[0]) for row in rows), default=0)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this kdlab understands "
                f"({SCHEMA_VERSION}); upgrade kdlab (pip install -U kdlab)"
            )
        return version

    def _migrate(self) -> None:
        """Create the tables, under the writers' lock: of processes racing to create a fresh
        store, the first creates it and the others find it made."""
        version = self._check_ours()
        if version == SCHEMA_VERSION:
            return
        if version != 0:  # no PostgreSQL store was ever made at an older version
            raise StoreError(f"{self.path} has unknown schema version {version}")
        for statement in statements(CURRENT.replace(" TEXT", ' TEXT COLLATE "C"')):
            self.execute(statement)
        self.execute(f"CREATE TABLE {VERSION_TABLE} (version INTEGER NOT NULL)")
        self.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (SCHEMA_VERSION,))

    # -- the Backend interface ----------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        values = tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in params)
        return self._conn.execute(_placeholders(sql), values)  # PostgreSQL text holds no NUL

    def begin(self) -> None:
        self._conn.execute("BEGIN")
        try:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        if self._conn.info.transaction_status == self._pg.pq.TransactionStatus.INERROR:
            raise self._pg.OperationalError("the transaction was aborted by an earlier error")
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is None or self._conn.closed:
            return
        if self._conn.info.transaction_status == self._pg.pq.TransactionStatus.IDLE:
            return
        # A failure means the connection is gone, and with it (server-side) the transaction.
        with contextlib.suppress(self._pg.Error):
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _hidden(self, err: BaseException) -> str:
        """The driver's message on one line, the password (should it appear) hidden."""
        # libpq's tab-indented hint ("Is the server running...") repeats what our fix says.
        text = one_line("\n".join(ln for ln in str(err).splitlines() if not ln.startswith("\t")))
        password = self._where.password
        return text.replace(password, "***") if len(password) >= 3 else text


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")  # the store's SQL has no literal "?"


def _fix(message: str) -> str:
    """What to do about a failed connection, from libpq's message."""
    low = message.lower()
    if "password" in low:
        return "check the user name and password in the URL (or ~/.pgpass)"
    if "database" in low and "does not exist" in low:
        return "create that database (createdb NAME) or fix its name in the URL"
    if "role" in low and "does not exist" in low:
        return "create that role (createuser NAME) or fix the user name in the URL"
    if any(word in low for word in ("connection option", "invalid uri", 'missing "="')):
        return "fix the URL: postgresql://user:password@host:5432/database"
    return (
        "is PostgreSQL running there and accepting TCP connections? start it, or fix the host "
        "and port in the URL (--store or $KDLAB_STORE)"
    )
