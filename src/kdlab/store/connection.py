"""How the run store talks to SQLite: one connection per process, WAL mode, short write
transactions that commit entirely or not at all, and the schema checked (and migrated) on open.

Several processes may write to one store at once: every write is one ``BEGIN IMMEDIATE``
transaction and waits up to ``BUSY_TIMEOUT_S`` for the lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from kdlab.errors import StoreError
from kdlab.store.schema import check_ours, migrate

BUSY_TIMEOUT_S = 60.0
DB_NAME = "kdlab.sqlite"


class StoreConnection:
    """The SQLite file ``root/kdlab.sqlite``; use as a context manager or call ``close()``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.path = self.root / DB_NAME
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._last_created: datetime | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create run store directory {self.root}: {e}; "
                "choose a writable directory (e.g. --store ./runs)"
            ) from e
        try:
            self._open()
        except sqlite3.Error as e:
            self.close()
            if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise StoreError(
                    f"{self.path} is not an SQLite database, so not a kdlab run store; "
                    "move that file away or point kdlab at another store directory"
                ) from e
            raise StoreError(f"cannot open run store {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise

    # -- connection and transactions ---------------------------------------------------------

    def _open(self) -> None:
        # Switching a fresh file to WAL while another process does the same can answer
        # SQLITE_BUSY without waiting on the busy handler (e.g. during WAL recovery): retry.
        for attempt in range(6):
            try:
                self._conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
                )
                self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                check_ours(self._conn, self.path)  # refuse a foreign file before changing it
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL unavailable")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
                self._conn.execute("PRAGMA foreign_keys = ON")
                return
            except sqlite3.OperationalError as e:
                self.close()
                busy = "locked" in str(e) or "busy" in str(e)
                if not busy or attempt == 5:
                    raise
                time.sleep(0.05 * 2**attempt)

    def _migrate(self) -> None:
        # Foreign keys stay off while the schema changes (PRAGMA is a no-op in a transaction).
        self._connection().execute("PRAGMA foreign_keys = OFF")
        with self._write() as conn:
            migrate(conn, self.path)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"run store {self.root} is closed; open a new RunStore")
        if os.getpid() != self._pid:
            raise StoreError(
                f"this RunStore ({self.root}) was opened in process {self._pid}; "
                "open a new RunStore in each process"
            )
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed entirely or not at all."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot write to run store {self.path}: {e}") from e
        try:
            yield conn
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"write to run store {self.path} failed: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"write to run store {self.path} failed: {e}") from e

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read run store {self.path}: {e}") from e

    def close(self) -> None:
        if self._conn is not None and os.getpid() == self._pid:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> StoreConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
