"""Resuming an experiment from its run store: what makes runs comparable, and what can be reused.

A seed whose runs all finished is marked complete under the config's *fingerprint* (the config
without its seed list); ``kdlab run --resume`` reuses such seeds' runs instead of training them
again. Inside an interrupted seed, the runs layer reuses each finished run and continues each
interrupted one from its checkpoint (``Recorder.resume``, :func:`kdlab.runs.fit`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdlab.runs import RunResult
from kdlab.store import RunRecord, RunStore


def config_fingerprint(config_json: Mapping[str, Any]) -> str:
    """What makes two runs of an experiment comparable: the config without its seed list."""
    comparable = {k: v for k, v in config_json.items() if k != "seeds"}
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()[:16]


def run_fingerprint(record: RunRecord) -> str | None:
    """The fingerprint of the experiment config a stored run was made with (None: not known)."""
    config = record.config.get("experiment")
    return config_fingerprint(config) if isinstance(config, dict) else None


@dataclass(frozen=True)
class StoredSeed:
    """What the store already holds of one seed of one experiment config."""

    store: RunStore
    experiment: str
    fingerprint: str
    seed: int

    def completed_runs(self) -> list[RunResult]:
        """A completed seed's runs as results (``model`` is None: the weights stay on disk)."""
        return [
            RunResult(None, rec.metrics, self.store.history(rec.id), rec.id, rec.role, self.seed)
            for rec in self.store.completed_seed(self.experiment, self.fingerprint, self.seed)
        ]

    def mark_complete(self, run_ids: list[str]) -> None:
        self.store.mark_seed_complete(self.experiment, self.fingerprint, self.seed, run_ids)


__all__ = ["StoredSeed", "config_fingerprint", "run_fingerprint"]
