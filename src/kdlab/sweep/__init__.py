"""``kdlab sweep``: one experiment config over grids of values and seeds, into one run store.

The plan (:mod:`kdlab.sweep.plan`) expands the command line into *cells* — the config with one
value per ``--grid`` key (every combination) and one position of the ``--zip`` lists — each
validated like a config file and preflighted before anything trains. Every run of every cell is a
run of one experiment (the sweep's name) and records its cell's assignments under
``config["sweep"]["cell"]``; a teacher shared by cells records ``config["sweep"]["teacher"]``.

Tasks (:mod:`kdlab.sweep.cells`): per seed, each distinct teacher is trained once (its run
appears once in the store), then each (cell, seed) runs with that teacher loaded from its run's
weights. A (cell, seed) the store holds complete under its config's fingerprint is skipped;
interrupted runs continue from their checkpoints. :mod:`kdlab.sweep.pool` runs the tasks in this
process or on ``--workers`` processes, each task under a file lock so that no two processes ever
train the same one.
"""

from __future__ import annotations

from typing import Any

#: Public names by module; imported on first use, so that ``kdlab --help`` (which imports the
#: command's options from kdlab.sweep.command) does not load the experiment machinery.
_EXPORTS = {"SweepOptions": "plan", "SweepPlan": "plan", "plan_sweep": "plan",
            "preflight_plan": "plan", "SweepResult": "pool", "run_sweep": "pool"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdlab.sweep' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"kdlab.sweep.{_EXPORTS[name]}"), name)


__all__ = ["SweepOptions", "SweepPlan", "SweepResult", "plan_sweep", "preflight_plan", "run_sweep"]
