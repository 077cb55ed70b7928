"""The run store: every run, its config, metrics and history, in one SQLite file (WAL mode) or
one PostgreSQL database (for processes on many machines).

Layout under the store root (a folder; for a PostgreSQL store, its artefact folder)::

    root/kdlab.sqlite          runs, per-epoch history, completed seeds (schema: store.schema)
    root/runs/<run id>/        artefacts (checkpoints, plots, ...), created on demand

Several processes may write to one store at once (see :mod:`kdlab.store.connection`). The SQL
below is shared by both databases; what differs is in ``sqlite_backend`` / ``postgres_backend``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kdlab.errors import StoreError
from kdlab.store.backend import Backend
from kdlab.store.connection import StoreConnection
from kdlab.store.records import (
    CALIBRATION,
    HOST,
    STATUSES,
    RunRecord,
    checked_bins,
    dumps,
    floats,
    record_from_row,
)

_COLUMNS = (
    "id, experiment, name, role, seed, status, created_at, finished_at,"
    " config, metrics, artefacts, error, pid, host, heartbeat_at, hashes"
)


class RunStore(StoreConnection):
    """Runs of every experiment at ``root`` — a folder, or a ``postgresql://`` URL (see
    :mod:`kdlab.store.location`); use as a context manager or call ``close()``."""

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
        config_json = dumps(dict(config), "config")
        seed = None if seed is None else int(seed)
        with self._write() as conn:
            for _ in range(8):
                now = self._now()
                run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
                stamp = now.isoformat(timespec="microseconds")
                # DO NOTHING, not a caught IntegrityError: PostgreSQL aborts the whole
                # transaction on an error, so a collision must not be one.
                cursor = conn.execute(
                    "INSERT INTO runs (id, experiment, name, role, seed, status, created_at,"
                    " config, pid, host, heartbeat_at)"
                    " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (run_id, experiment, name, role, seed, stamp, config_json, os.getpid(),
                     HOST, stamp),
                )  # fmt: skip
                if cursor.rowcount == 1:
                    return run_id  # else: id collision, draw again
            raise StoreError("could not draw a unique run id after 8 tries")

    def _require(self, conn: Backend, run_id: str, running: bool = False) -> None:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.path}; list runs with `kdlab runs`")
        if running and row[0] != "running":
            raise StoreError(f"run {run_id} is already {row[0]}; start a new run instead")

    @staticmethod
    def _merged_artefacts(conn: Backend, run_id: str, new: dict[str, str]) -> str:
        (old,) = conn.execute("SELECT artefacts FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dumps({**json.loads(old), **new}, "artefacts")

    @staticmethod
    def _merged_hashes(conn: Backend, run_id: str, new: dict[str, str]) -> str:
        (old,) = conn.execute("SELECT hashes FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dumps({**json.loads(old or "{}"), **new}, "hashes")

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
        values = floats(metrics)
        if "epoch" in values:
            raise StoreError("metric name 'epoch' is reserved; pass the epoch as an argument")
        payload = dumps(values, "metrics")
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            conn.execute(
                "INSERT INTO history (run_id, epoch, metrics) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, epoch) DO UPDATE SET metrics = excluded.metrics",
                (run_id, int(epoch), payload),
            )
            conn.execute(  # the heartbeat that tells a live run from a dead one elsewhere
                "UPDATE runs SET heartbeat_at = ? WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), run_id),
            )

    def finish_run(
        self,
        run_id: str,
        metrics: dict[str, float],
        artefacts: dict[str, str] | None = None,
        hashes: dict[str, str] | None = None,
        calibration: Mapping[str, list[float]] | None = None,
    ) -> None:
        """Mark a running run finished with its final metrics (and the test set's reliability
        bins, see RunRecord.calibration); artefacts (and the SHA-256 of their files, by the
        same keys) merge into existing ones."""
        values: dict = floats(metrics)
        if CALIBRATION in values:
            raise StoreError(f"metric name {CALIBRATION!r} is reserved for the reliability bins")
        if calibration is not None:
            values[CALIBRATION] = checked_bins(calibration)
        payload = dumps(values, "metrics")
        new = {str(k): str(v) for k, v in (artefacts or {}).items()}
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            merged = self._merged_artefacts(conn, run_id, new)
            sums = self._merged_hashes(conn, run_id, hashes or {})
            conn.execute(
                "UPDATE runs SET status = 'finished', finished_at = ?, metrics = ?, artefacts = ?,"
                " hashes = ? WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), payload, merged, sums, run_id),
            )

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark a running run failed, keeping ``error`` (message or traceback)."""
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), str(error), run_id),
            )

    def interrupt_run(self, run_id: str, reason: str) -> None:
        """Mark a running run ``interrupted`` (Ctrl-C, SIGTERM): resumable from its checkpoint."""
        with self._write() as conn:
            self._require(conn, run_id, running=True)
            conn.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                (self._now().isoformat(timespec="microseconds"), reason, run_id),
            )

    def reopen_run(self, run_id: str) -> None:
        """Make an interrupted run (or one whose process died) ``running`` again, in this
        process, after removing the temporary files a killed write left in its folder."""
        self.remove_temp_files(run_id)
        with self._write() as conn:
            stamp = self._now().isoformat(timespec="microseconds")
            conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, pid = ?,"
                " host = ?, heartbeat_at = ? WHERE id = ?",
                (os.getpid(), HOST, stamp, run_id),
            )

    def remove_temp_files(self, run_id: str) -> list[Path]:
        """Delete the ``.*.tmp`` files that killed atomic writes left in an interrupted run's
        folder; returns them."""
        status = self.get_run(run_id).status
        if status != "interrupted":
            raise StoreError(f"run {run_id} is {status}, not interrupted: its files stay")
        folder = self.root / "runs" / run_id
        stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def add_artefact(
        self, run_id: str, key: str, path: str | Path, hashes: dict[str, str] | None = None
    ) -> None:
        """Record (or replace) artefact ``key`` of a run in any status; ``hashes`` merge in."""
        with self._write() as conn:
            self._require(conn, run_id)
            merged = self._merged_artefacts(conn, run_id, {str(key): str(path)})
            sums = self._merged_hashes(conn, run_id, hashes or {})
            conn.execute("UPDATE runs SET artefacts = ?, hashes = ? WHERE id = ?",
                         (merged, sums, run_id))  # fmt: skip

    # -- reads --------------------------------------------------------------------------------

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
        return record_from_row(rows[0])

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
        """Runs matching every given filter, newest first (``status`` as
        :func:`~kdlab.store.records.effective_status` sees it: a dead run is interrupted)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if limit is not None and (limit < 0 or int(limit) != limit):
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        where, params = [], []
        for column, value in (("experiment", experiment), ("role", role)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if status is not None:  # a stored 'running' may be an effective 'interrupted'
            stored = ("running", "interrupted") if status in ("running", "interrupted") else ()
            where.append(f"status IN ({', '.join('?' * len(stored or (status,)))})")
            params.extend(stored or (status,))
        sql = f"SELECT {_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        records = [record_from_row(r) for r in self._read(sql, tuple(params))]
        if status is not None:
            records = [r for r in records if r.status == status]
        return records if limit is None else records[: int(limit)]

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
                "INSERT INTO completed_seeds (experiment, fingerprint, seed, run_ids,"
                " completed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (experiment, fingerprint,"
                " seed) DO UPDATE SET run_ids = excluded.run_ids,"
                " completed_at = excluded.completed_at",
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
        found = {row[0]: record_from_row(row) for row in rows}
        if len(found) < len(run_ids):
            return []  # a run was deleted or is not finished: run the seed again
        return [found[run_id] for run_id in run_ids]
