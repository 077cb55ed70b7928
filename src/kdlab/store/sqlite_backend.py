"""The run store in one SQLite file, ``root/kdlab.sqlite``: WAL mode, one ``BEGIN IMMEDIATE``
transaction per write, the schema checked (and migrated, ``PRAGMA user_version``) on open.

Several processes may write to one store at once: every write waits up to ``BUSY_TIMEOUT_S`` for
SQLite's write lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.errors import StoreError
from kdlab.store.backend import transaction
from kdlab.store.schema import check_ours, migrate

BUSY_TIMEOUT_S = 60.0
DB_NAME = "kdlab.sqlite"


class SQLiteBackend:
    """The store's file under ``root``, created (with ``root``) if missing — unless ``create``
    is False (commands that only read: a mistyped ``--store`` must not make an empty store)."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = root
        self.path: Path | str = root / DB_NAME
        self._conn: sqlite3.Connection | None = None
        self._check_folder(create)
        try:
            self._open()
        except sqlite3.Error as e:
            self.close()
            if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise StoreError(
                    f"{self.path} is not an SQLite database, so not a kdlab run store; "
                    "move that file away or point kdlab at another store directory"
                ) from e
            if not os.access(self.root, os.W_OK):  # SQLite writes -wal/-shm files even to read
                raise StoreError(
                    f"cannot open run store {self.root}: its folder is read-only, and SQLite "
                    "writes its -wal and -shm files beside kdlab.sqlite even to read; copy the "
                    "store to a writable folder"
                ) from e
            raise StoreError(f"cannot open run store {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise

    def _check_folder(self, create: bool) -> None:
        if self.root.is_file():
            fix = f"--store {self.root.parent}" if self.root.name == DB_NAME else "a folder"
            raise StoreError(
                f"run store {self.root} is a file; a store is the folder that holds "
                f"{DB_NAME}: give {fix}"
            )
        if not create and not Path(self.path).is_file():
            raise StoreError(
                f"no run store at {self.root} (it holds no {DB_NAME}); check --store or "
                "$KDLAB_STORE — `kdlab run` creates a store where it records runs"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create run store directory {self.root}: {e}; "
                "choose a writable directory (e.g. --store ./runs)"
            ) from e

    def _open(self) -> None:
        # Switching a fresh file to WAL while another process does the same can answer
        # SQLITE_BUSY without waiting on the busy handler (e.g. during WAL recovery): retry.
        for attempt in range(6):
            try:
                self._conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
                )
                self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                check_ours(self._conn, Path(self.path))  # refuse a foreign file before changing it
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
        self.execute("PRAGMA foreign_keys = OFF")
        with transaction(self):
            migrate(self._connection(), Path(self.path))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"run store {self.root} is closed; open a new RunStore")
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._connection().execute(sql, tuple(params))

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")  # takes the write lock now, not at the first write

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
