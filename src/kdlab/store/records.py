"""What the store holds of a run (:class:`RunRecord`), its JSON encoding, and whether the process
that runs a ``running`` run is still alive.

A run is ``running`` from its creation until it finishes, fails or is interrupted; a process that
is killed (``kill -9``, a power cut) cannot say so, so a reader decides: on the run's own host a
``running`` run whose process is gone is ``interrupted``; on another host, one whose heartbeat
(refreshed at every epoch) is older than ``STALE_AFTER_S``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdlab.errors import StoreError

STATUSES = ("running", "finished", "failed", "interrupted")
#: The key of a finished run's reliability bins inside its metrics JSON. Kept there, not in a
#: column of its own, so no schema change was needed; readers keep only the numbers as metrics
#: (an older kdlab skips the bins).
CALIBRATION = "calibration"
BIN_KEYS = ("count", "confidence", "accuracy")
#: A run on another host counts as interrupted when its heartbeat is older than this (6 h: longer
#: than any epoch we expect; on its own host kdlab checks the process instead).
STALE_AFTER_S = 6 * 3600
HOST = socket.gethostname()


@dataclass
class RunRecord:
    """One run as stored. ``status``: ``running``, ``finished``, ``failed`` or ``interrupted``
    (also a ``running`` run whose process is gone, see :func:`effective_status`)."""

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
    pid: int | None = None
    host: str | None = None
    heartbeat_at: str | None = None
    #: SHA-256 of each artefact file, by artefact key (a replaced file is refused on load).
    hashes: dict[str, str] = field(default_factory=dict)
    #: The test set's reliability bins (``count``, ``confidence``, ``accuracy`` lists, see
    #: kdlab.metrics.reliability_bins), for a reliability diagram; None for runs without them.
    calibration: dict[str, list[float]] | None = None


def record_from_row(row: tuple) -> RunRecord:
    """A RunRecord from a row of ``COLUMNS``; damaged JSON fields read as empty, not crash."""
    config, metrics, artefacts, hashes = (_mapping(v) for v in (*row[8:11], row[15]))
    record = RunRecord(*row[:8], config, metrics, artefacts, row[11], *row[12:15], hashes)
    record.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    bins = metrics.get(CALIBRATION)
    record.calibration = bins if isinstance(bins, dict) and _bins_problem(bins) is None else None
    record.status = effective_status(record)
    return record


def _mapping(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}  # e.g. metrics stored as JSON null


def effective_status(record: RunRecord) -> str:
    """``interrupted`` for a ``running`` run whose process is gone; else the stored status."""
    if record.status != "running" or record.pid is None:
        return record.status
    if record.host == HOST:
        return "running" if pid_alive(record.pid) else "interrupted"
    beat = _parse_time(record.heartbeat_at)
    if beat is None:
        return record.status
    age = (datetime.now(timezone.utc) - beat).total_seconds()
    return "interrupted" if age > STALE_AFTER_S else "running"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed child not yet reaped by its parent still answers kill(pid, 0) (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise StoreError(f"cannot store {what}: {e}; use plain JSON types") from e


def checked_bins(bins: Mapping[str, Any]) -> dict[str, list[float]]:
    """Reliability bins as the store keeps them; a StoreError for any other shape."""
    problem = _bins_problem(bins)
    if problem is not None:
        raise StoreError(
            f"cannot store reliability bins: {problem}; pass {BIN_KEYS} as "
            "lists of one length (kdlab.metrics.reliability_bins makes them)"
        )
    return {key: [float(v) for v in bins[key]] for key in BIN_KEYS}


def _bins_problem(bins: Mapping[str, Any]) -> str | None:
    if not isinstance(bins, Mapping) or set(bins) != set(BIN_KEYS):
        keys = sorted(map(str, bins)) if isinstance(bins, Mapping) else type(bins).__name__
        return f"keys {keys} are not {list(BIN_KEYS)}"
    lists = [bins[key] for key in BIN_KEYS]
    if not all(isinstance(v, (list, tuple)) for v in lists) or len({len(v) for v in lists}) != 1:
        return "the three are not lists of one length"
    if not all(isinstance(x, (int, float)) and x >= 0 for v in lists for x in v):
        return "a value is not a non-negative number"
    return None


def floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats (numpy/torch scalars accepted); NaN and inf are kept."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError) as e:
            raise StoreError(f"metric {key!r} = {value!r} is not a number: {e}") from e
    return out
