"""The run store: one SQLite file (WAL mode) holding every run, its config, metrics and history.

``RunStore`` (runstore.py) reads and writes it, ``RunRecord`` (records.py) is one run as stored,
schema.py holds the SQLite schema and its migrations.
"""

from kdlab.store.connection import DB_NAME
from kdlab.store.records import STATUSES, RunRecord
from kdlab.store.runstore import RunStore

__all__ = ["DB_NAME", "STATUSES", "RunRecord", "RunStore"]
