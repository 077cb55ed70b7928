"""The run store's schema: SQLite's migrations (``PRAGMA user_version`` is the version) and
``CURRENT``, the same tables written for both dialects (a PostgreSQL store is created from it).

Version 1: ``runs`` and per-epoch ``history``. Version 2 adds ``completed_seeds``: which seeds of
an experiment finished all their runs under one config, so ``kdlab run --resume`` can skip them.
Version 3 adds the ``interrupted`` status, the process that runs a run (``pid``, ``host``, a
``heartbeat_at`` stamp) so a dead one can be told from a live one, and ``hashes``: the SHA-256 of
each artefact file, so a replaced file is refused. Changing a CHECK constraint means rebuilding
``runs`` (SQLite's documented procedure, with foreign keys off so ``history`` is kept).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kdlab.errors import StoreError

SCHEMA_VERSION = 3

_V1 = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, experiment TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    seed INTEGER, status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    created_at TEXT NOT NULL, finished_at TEXT, config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', artefacts TEXT NOT NULL DEFAULT '{}', error TEXT
);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_experiment ON runs (experiment, created_at);
CREATE TABLE history (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
"""
_V2 = """
CREATE TABLE completed_seeds (
    experiment TEXT NOT NULL, fingerprint TEXT NOT NULL, seed INTEGER NOT NULL,
    run_ids TEXT NOT NULL, completed_at TEXT NOT NULL,
    PRIMARY KEY (experiment, fingerprint, seed)
) WITHOUT ROWID;
"""
_V3 = """
CREATE TABLE runs_v3 (
    id TEXT PRIMARY KEY, experiment TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    created_at TEXT NOT NULL, finished_at TEXT, config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', artefacts TEXT NOT NULL DEFAULT '{}', error TEXT,
    pid INTEGER, host TEXT, heartbeat_at TEXT, hashes TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO runs_v3 (id, experiment, name, role, seed, status, created_at, finished_at, config,
    metrics, artefacts, error)
    SELECT id, experiment, name, role, seed, status, created_at, finished_at, config, metrics,
    artefacts, error FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_experiment ON runs (experiment, created_at);
"""
#: Statements that bring a store at version i (list index) to version i + 1.
_STEPS = [_V1, _V2, _V3]

#: Version 3 created from nothing, in SQL both dialects read alike (BIGINT: seeds go past 2**31;
#: no ``WITHOUT ROWID``, which is SQLite's only). Timestamps stay ISO-8601 UTC text and JSON
#: stays text in both: metrics may be NaN or inf, which PostgreSQL's json types refuse, and the
#: records read back exactly as SQLite's. tests/test_store_postgres.py checks that these are the
#: columns SQLite's migrations end with. A later version appends one step to _STEPS and the
#: same statements (where the dialects agree) to postgres_backend's steps.
CURRENT = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, experiment TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    seed BIGINT,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    created_at TEXT NOT NULL, finished_at TEXT, config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', artefacts TEXT NOT NULL DEFAULT '{}', error TEXT,
    pid BIGINT, host TEXT, heartbeat_at TEXT, hashes TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_experiment ON runs (experiment, created_at);
CREATE TABLE history (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, epoch BIGINT NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch)
);
CREATE TABLE completed_seeds (
    experiment TEXT NOT NULL, fingerprint TEXT NOT NULL, seed BIGINT NOT NULL,
    run_ids TEXT NOT NULL, completed_at TEXT NOT NULL,
    PRIMARY KEY (experiment, fingerprint, seed)
);
"""


def statements(script: str) -> list[str]:
    """The statements of a script (none of ours has a ``;`` inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def check_ours(conn: sqlite3.Connection, path: Path) -> int:
    """The store's schema version; a StoreError (after reading only) for a file kdlab must not
    touch: another program's database, or a store of a newer kdlab."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this kdlab understands "
            f"({SCHEMA_VERSION}); upgrade kdlab (pip install -U kdlab)"
        )
    if version == 0:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
        if tables:
            raise StoreError(
                f"{path} is an SQLite database of another program (tables: "
                f"{', '.join(t[0] for t in tables)}); move it away or use another store directory"
            )
    return int(version)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the open database to SCHEMA_VERSION inside the caller's write transaction (with
    foreign keys off: rebuilding ``runs`` must not cascade into ``history``)."""
    version = check_ours(conn, path)
    for script in _STEPS[version:]:
        for statement in statements(script):
            conn.execute(statement)
    if version != SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
