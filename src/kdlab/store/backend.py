"""What the run store needs of a database: the interface both backends implement, and the write
transaction built on it.

The store's SQL is written once, with ``?`` placeholders, in the subset SQLite and PostgreSQL
agree on (``ON CONFLICT`` upserts, ``substr``, ``IN (...)``); each backend (``sqlite_backend``,
``postgres_backend``) hides what differs: placeholders, how a writer gets exclusive access, and
how the schema version is kept and migrated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from kdlab.errors import StoreError


class Cursor(Protocol):
    """The part of a DB-API cursor the store reads."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Backend(Protocol):
    """One open database connection of a run store."""

    #: Folder of the runs' artefacts (``root/runs/<run id>/``).
    root: Path
    #: Where the rows are, as messages name it: the SQLite file, or the URL without password.
    path: Path | str
    #: The driver's exception classes: turned into one-line StoreErrors.
    errors: tuple[type[Exception], ...]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement written with ``?`` placeholders."""
        ...

    def begin(self) -> None:
        """Start a write transaction that no other writer of this store runs beside."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back the open transaction, if any (a no-op outside one)."""
        ...

    def close(self) -> None: ...


def one_line(err: BaseException | str) -> str:
    """A driver's message on one line (PostgreSQL's carry hints on further lines)."""
    return " ".join(str(err).split())


@contextmanager
def transaction(db: Backend) -> Iterator[Backend]:
    """One write transaction: committed entirely or not at all."""
    try:
        db.begin()
    except db.errors as e:
        raise StoreError(f"cannot write to run store {db.path}: {one_line(e)}") from e
    try:
        yield db
    except BaseException as exc:
        db.rollback()
        if isinstance(exc, db.errors):
            raise StoreError(f"write to run store {db.path} failed: {one_line(exc)}") from exc
        raise
    try:
        db.commit()
    except db.errors as e:
        db.rollback()
        raise StoreError(f"write to run store {db.path} failed: {one_line(e)}") from e
