"""How the run store talks to its database: one connection per process, short write
transactions that commit entirely or not at all, and the schema checked (and migrated) on open.

The database is an SQLite file in a folder (:mod:`kdlab.store.sqlite_backend`, WAL mode) or a
PostgreSQL database at a ``postgresql://`` URL (:mod:`kdlab.store.postgres_backend`), chosen by
the location; both sit behind :class:`kdlab.store.backend.Backend`. Several processes may write
to one store at once: every write is one transaction that waits up to 60 s for the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from kdlab.errors import StoreError
from kdlab.store.backend import Backend, one_line, transaction
from kdlab.store.location import parse_location
from kdlab.store.sqlite_backend import BUSY_TIMEOUT_S, DB_NAME, SQLiteBackend


def open_backend(location: str | Path, create: bool = True) -> Backend:
    """The database at ``location``: a folder (SQLite; with ``create`` False it must exist) or a
    ``postgresql://`` URL."""
    where = parse_location(location)
    if isinstance(where, Path):
        return SQLiteBackend(where, create)
    from kdlab.store.postgres_backend import PostgresBackend  # psycopg only for URL stores

    return PostgresBackend(where)


class StoreConnection:
    """The store at ``root``: a folder (``root/kdlab.sqlite``) or a ``postgresql://`` URL (its
    artefact folder from ``?artefacts=`` or ``$KDLAB_ARTEFACTS``); use as a context manager or
    call ``close()``. ``create=False``: a folder that holds no store is an error, not a new
    store (for commands that only read)."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self._db: Backend | None = None
        self._pid = os.getpid()
        self._last_created: datetime | None = None
        self._db = open_backend(root, create)
        #: Artefact folder (``root/runs/<run id>/``) and where the rows are (file or URL).
        self.root: Path = self._db.root
        self.path: Path | str = self._db.path

    @property
    def location(self) -> str:
        """Where the store is, as messages name it: its folder, or its URL without password."""
        return str(self.root) if isinstance(self.path, Path) else self.path

    # -- connection and transactions ---------------------------------------------------------

    def _connection(self) -> Backend:
        if self._db is None:
            raise StoreError(f"run store {self.location} is closed; open a new RunStore")
        if os.getpid() != self._pid:
            raise StoreError(
                f"this RunStore ({self.location}) was opened in process {self._pid}; "
                "open a new RunStore in each process"
            )
        return self._db

    @contextmanager
    def _write(self) -> Iterator[Backend]:
        """One write transaction: committed entirely or not at all."""
        with transaction(self._connection()) as db:
            yield db

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        db = self._connection()
        try:
            return db.execute(sql, params).fetchall()
        except db.errors as e:
            raise StoreError(f"cannot read run store {self.path}: {one_line(e)}") from e

    def close(self) -> None:
        if self._db is not None and os.getpid() == self._pid:
            self._db.close()
        self._db = None

    def __enter__(self) -> StoreConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BUSY_TIMEOUT_S", "DB_NAME", "StoreConnection", "open_backend"]
