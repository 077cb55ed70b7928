"""The run store: one SQLite file (WAL mode) holding every run, its config, metrics and history.

Layout under the store root::

    root/kdlab.sqlite          runs, per-epoch history, completed seeds (schema: store_schema)
    root/runs/<run id>/        artefacts (checkpoints, plots, ...), created on demand

Several processes may write to one store at once: each ``RunStore`` owns one connection, every
write is one short ``BEGIN IMMEDIATE`` transaction and waits up to ``BUSY_TIMEOUT_S`` for the lock.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kdlab.errors import StoreError
from kdlab.store_schema import migrate

BUSY_TIMEOUT_S = 60.0
DB_NAME = "kdlab.sqlite"
STATUSES = ("running", "finished", "failed")

_COLUMNS = (
    "id, experiment, name, role, seed, status, created_at, finished_at,"
    " config, metrics, artefacts, error"
)


@dataclass
class RunRecord:
    """One run as stored. ``status`` is ``running``, ``finished`` or ``failed``."""

    id: str
    experiment: str
    name: str
    role: str
    seed: int | None
    status: str
    created_at: str
    finished_at: str | None
    config: dict
    metrics: dict[str, float]
    artefacts: dict[str, str]
    error: str | None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise StoreError(f"cannot store {what}: {e}; use plain JSON types") from e


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats (numpy/torch scalars accepted); NaN and inf are kept."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError) as e:
            raise StoreError(f"metric {key!r} = {value!r} is not a number: {e}") from e
    return out


class RunStore:
    """Runs of every experiment under ``root``; use as a context manager or call ``close()``."""

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
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL unavailable")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._migrate()
                return
            except sqlite3.OperationalError as e:
                self.close()
                busy = "locked" in str(e) or "busy" in str(e)
                if not busy or attempt == 5:
                    raise
                time.sleep(0.05 * 2**attempt)

    def _migrate(self) -> None:
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

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------

    def _now(self) -> datetime:  # also stamps finished_at
        """UTC now, strictly increasing within this store so newest-first order is exact."""
        now = datetime.now(timezone.utc)
        if self._last_created is not None and now <= self._last_created:
            now = self._last_created + timedelta(microseconds=1)
        self._last_created = now
        return now

    def create_run(
        self, *, experiment: str, name: str, role: str, seed: int | None, config: dict
    ) -> str:
        """Record a new ``running`` run and return its id (``YYYYMMDD-HHMMSS-xxxxxx``, UTC)."""
        if not isinstance(config, Mapping):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        config_json = _dumps(dict(config), "config")
        seed = None if seed is None else int(seed)
        with self._write() as conn:
            for _ in range(8):
                now = self._now()
                run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
                try:
                    conn.execute(
                        "INSERT INTO runs (id, experiment, name, role, seed, status, created_at,"
                        " config) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                        (
                            run_id,
                            experiment,
                            name,
                            role,
                            seed,
                            now.isoformat(timespec="microseconds"),
                            config_json,
                        ),
                    )
                    return run_id
                except sqlite3.IntegrityError:  # id collision: draw again
                    continue
            raise StoreError("could not draw a unique run id after 8 tries")

    def _require(self, conn: sqlite3.Connection, run_id: str, running: bool = False) -> None:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.path}; list runs with `kdlab runs`")
        if running and row[0] != "running":
            raise StoreError(f"run {run_id} is already {row[0]}; start a new run instead")

    @staticmethod
    def _merged_artefacts(conn: sqlite3.Connection, run_id: str, new: dict[str, str]) -> str:
        (old,) = conn.execute("SELECT artefacts FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _dumps({**json.loads(old), **new}, "artefacts")

    def run_dir(self, run_id: str) -> Path:
        """``root/runs/<run_id>``, created if missing. ``run_id`` must be a full, existing id."""
        if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise StoreError(f"no run {run_id!r} in {self.path}; list runs with `kdlab runs`")
        path = self.root / "runs" / run_id
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create run directory {path}: {e}") from e
        return path

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """Store one epoch's metrics; logging an epoch again replaces its metrics."""
        values = _floats(metrics)
        if "epoch" in values:
            raise StoreError("metric name 'epoch' is reserved; pass the epoch as an argument")
        payload = _dumps(values, "metrics")
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            conn.execute(
                "INSERT INTO history (run_id, epoch, metrics) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, epoch) DO UPDATE SET metrics = excluded.metrics",
                (run_id, int(epoch), payload),
            )

    def finish_run(
        self, run_id: str, metrics: dict[str, float], artefacts: dict[str, str] | None = None
    ) -> None:
        """Mark a running run finished with its final metrics; artefacts merge into existing."""
        payload = _dumps(_floats(metrics), "metrics")
        new = {str(k): str(v) for k, v in (artefacts or {}).items()}
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            merged = self._merged_artefacts(conn, run_id, new)
            conn.execute(
                "UPDATE runs SET status = 'finished', finished_at = ?, metrics = ?, artefacts = ?"
                " WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), payload, merged, run_id),
            )

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark a running run failed, keeping ``error`` (message or traceback)."""
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), str(error), run_id),
            )

    def add_artefact(self, run_id: str, key: str, path: str | Path) -> None:
        """Record (or replace) artefact ``key`` of a run in any status; stored as given."""
        with self._write() as conn:
            self._require(conn, run_id)
            merged = self._merged_artefacts(conn, run_id, {str(key): str(path)})
            conn.execute("UPDATE runs SET artefacts = ? WHERE id = ?", (merged, run_id))

    # -- reads --------------------------------------------------------------------------------

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        return RunRecord(*row[:8], *map(json.loads, row[8:11]), row[11])  # JSON: config..artefacts

    def get_run(self, run_id_or_unique_prefix: str) -> RunRecord:
        """The run with this id, or the only run whose id starts with this prefix."""
        prefix = run_id_or_unique_prefix.strip()
        if not prefix:
            raise StoreError("empty run id; list runs with `kdlab runs`")
        rows = self._read(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (prefix,))
        if not rows:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 11",
                (len(prefix), prefix),
            )
        if not rows:
            raise StoreError(f"no run {prefix!r} in {self.path}; list runs with `kdlab runs`")
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise StoreError(
                f"run id prefix {prefix!r} is ambiguous, it matches: {shown}; give more characters"
            )
        return self._record(rows[0])

    def history(self, run_id: str) -> list[dict]:
        """``[{"epoch": 1, **metrics}, ...]`` in epoch order (empty if nothing was logged)."""
        run_id = self.get_run(run_id).id
        rows = self._read(
            "SELECT epoch, metrics FROM history WHERE run_id = ? ORDER BY epoch", (run_id,)
        )
        return [{"epoch": epoch, **json.loads(m)} for epoch, m in rows]

    def list_runs(
        self,
        *,
        experiment: str | None = None,
        role: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if limit is not None and (limit < 0 or int(limit) != limit):
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        where, params = [], []
        for column, value in (("experiment", experiment), ("role", role), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._record(r) for r in self._read(sql, tuple(params))]

    def experiments(self) -> list[str]:
        """Names of all experiments with at least one run, alphabetically."""
        return [r[0] for r in self._read("SELECT DISTINCT experiment FROM runs ORDER BY 1")]

    # -- experiment seeds (for resuming) -------------------------------------------------------

    def mark_seed_complete(
        self, experiment: str, fingerprint: str, seed: int, run_ids: list[str]
    ) -> None:
        """Record that ``seed`` of ``experiment`` (config ``fingerprint``) finished these runs."""
        with self._write() as conn:
            for run_id in run_ids:
                self._require(conn, run_id)
            conn.execute(
                "INSERT OR REPLACE INTO completed_seeds VALUES (?, ?, ?, ?, ?)",
                (experiment, fingerprint, int(seed), json.dumps(run_ids),
                 self._now().isoformat(timespec="microseconds")),
            )  # fmt: skip

    def completed_seed(self, experiment: str, fingerprint: str, seed: int) -> list[RunRecord]:
        """The finished runs of a completed seed, in run order; [] if it is not complete."""
        rows = self._read(
            "SELECT run_ids FROM completed_seeds WHERE experiment = ? AND fingerprint = ?"
            " AND seed = ?",
            (experiment, fingerprint, int(seed)),
        )
        if not rows:
            return []
        run_ids = json.loads(rows[0][0])
        sql = f"SELECT {_COLUMNS} FROM runs WHERE status = 'finished' AND id IN ({{}})"
        rows = self._read(sql.format(", ".join("?" * len(run_ids))), tuple(run_ids))
        found = {row[0]: self._record(row) for row in rows}
        if len(found) < len(run_ids):
            return []  # a run was deleted or is not finished: run the seed again
        return [found[run_id] for run_id in run_ids]
