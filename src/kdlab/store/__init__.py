"""The run store: every run, its config, metrics and history, in one SQLite file (WAL mode) in a
folder or in a PostgreSQL database at a ``postgresql://`` URL (many machines, one store).

``RunStore`` (runstore.py) reads and writes it, ``RunRecord`` (records.py) is one run as stored,
schema.py holds the schema and its migrations; backend.py is what the store needs of a database,
sqlite_backend.py and postgres_backend.py provide it, location.py tells them apart.
"""

from kdlab.store.connection import DB_NAME
from kdlab.store.records import STATUSES, RunRecord
from kdlab.store.runstore import RunStore

__all__ = ["DB_NAME", "STATUSES", "RunRecord", "RunStore"]
