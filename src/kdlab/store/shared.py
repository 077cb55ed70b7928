"""The run store under DDP: rank 0 reads and writes it, the other ranks ask rank 0.

Every rank runs the same experiment program, so every rank makes the same store calls in the
same order. Reads (and writes that answer something, such as a new run's id) run on rank 0 and
its answer — or its exception — is broadcast, so all ranks decide alike: resume this run, reuse
that seed. Writes that answer nothing run on rank 0 alone, without waiting for the others: a rank
that is ending because another one died can still mark its run failed or interrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from kdlab import distributed
from kdlab.store.runstore import RunStore

#: Store methods that only write: rank 0 calls them, the other ranks skip them.
WRITES = frozenset({
    "log_epoch", "finish_run", "fail_run", "interrupt_run", "reopen_run", "add_artefact",
    "mark_seed_complete", "remove_temp_files", "close",
})  # fmt: skip


class RankZeroStore:
    """A :class:`RunStore` that only rank 0 touches (see the module doc); same methods."""

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.root, self.path = store.root, store.path

    def __enter__(self) -> RankZeroStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return _on_rank_zero(attr, answers=name not in WRITES)


def _on_rank_zero(method: Callable[..., Any], answers: bool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        main = distributed.is_main()
        if not answers:
            return method(*args, **kwargs) if main else None
        outcome: tuple[bool, Any] | None = None
        if main:
            try:
                outcome = (True, method(*args, **kwargs))
            except Exception as err:  # every rank raises rank 0's error
                outcome = (False, err)
        ok, value = distributed.broadcast(outcome)
        if not ok:
            raise value
        return value

    return call


def shared_store(store: RunStore | None) -> RunStore | None:
    """``store`` as every rank of a distributed run must use it; unchanged in one process."""
    if store is None or isinstance(store, RankZeroStore) or not distributed.world().distributed:
        return store
    return cast(RunStore, RankZeroStore(store))


__all__ = ["WRITES", "RankZeroStore", "shared_store"]
