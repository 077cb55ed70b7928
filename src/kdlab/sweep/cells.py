"""One task of a sweep, as a worker runs it: train a shared run (a teacher, or the student alone)
of one seed, or run one (cell, seed).

Each task runs under a *claim*: an exclusive ``flock`` on a file named after the task in the
store (``<store>/sweep-locks/``), held while it trains. Two processes that reach the same task —
two workers, or two ``kdlab sweep`` commands on one store — take turns, and the second then finds
the task finished in the store and reuses it. The kernel drops the lock when its process dies
(``kill -9`` included), so a killed worker never leaves a stale claim behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kdlab import checkpoint as ckpt
from kdlab.config import ExperimentConfig
from kdlab.errors import StoreError
from kdlab.experiment import fit_student_alone, run_experiment
from kdlab.models import build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.preflight import load_data
from kdlab.resume import StoredSeed
from kdlab.runs import Recorder, RunInfo, RunResult, error_text, verified_artefact
from kdlab.schemes.base import DistillContext
from kdlab.seeding import derived_seed
from kdlab.store import RunRecord, RunStore
from kdlab.sweep.plan import SweepPlan, shared_sections
from kdlab.teachers import build_teacher

try:
    import fcntl
except ImportError:  # Windows: no flock; one command's workers still never share a task
    fcntl = None  # type: ignore[assignment]


#: Runs a sweep trains once per seed for every cell that shares them (see kdlab.sweep.plan).
SHARED = ("teacher", "student")


@dataclass(frozen=True)
class Task:
    """Train shared run ``key`` (kind ``teacher`` or ``student``) of ``seed``, or run cell
    ``cell`` with ``seed`` (kind ``cell``)."""

    kind: str
    seed: int
    cell: int = -1
    key: str = ""


@dataclass
class Outcome:
    """How a task ended: the main run's test metrics, or the error that stopped it."""

    task: Task
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    #: The test accuracy of the cell's student alone, when the store holds it.
    baseline: float | None = None
    #: Read back from the store: it had finished before.
    stored: bool = False
    error: str = ""


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (so NaN equals NaN, and a stored value equals the one recorded)."""
    dump = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return dump(a) == dump(b)


def cell_tag(plan: SweepPlan, index: int) -> dict[str, Any]:
    """What each run of a cell records under ``config["sweep"]``: the sweep and the cell."""
    return {"name": plan.name, "cell": plan.cells[index].assignments}


def shared_tag(plan: SweepPlan, kind: str, key: str) -> dict[str, Any]:
    return {"name": plan.name, kind: key}


def claim_path(root: Path, plan: SweepPlan, task: Task) -> Path:
    """The task's lock file, named by what the task makes (a cell by its config's fingerprint,
    not its position), so that two commands sweeping different grids still meet on a cell."""
    what = (f"{task.kind}-{task.key}" if task.kind in SHARED
            else f"cell-{plan.cells[task.cell].fingerprint}")  # fmt: skip
    folder = root / "sweep-locks" / hashlib.sha256(plan.name.encode()).hexdigest()[:16]
    return folder / f"{what}-s{task.seed}.lock"


@contextmanager
def claim(path: Path) -> Iterator[None]:
    """Hold the lock file at ``path`` (waiting while another process holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def execute(plan: SweepPlan, task: Task, store: RunStore) -> Outcome:
    """Run one task; an error becomes a failed Outcome (its run is already marked failed)."""
    try:
        with claim(claim_path(store.root, plan, task)):
            if task.kind in SHARED:
                return shared_run(plan, task, store)
            return run_cell(plan, task, store)
    except Exception as err:  # the sweep goes on with the other cells
        return Outcome(task, False, error=error_text(err))


def find_shared(
    plan: SweepPlan, kind: str, key: str, seed: int, store: RunStore
) -> RunRecord | None:
    """The finished run of shared ``kind`` run ``key`` for ``seed``, if any."""
    tag = shared_tag(plan, kind, key)
    for record in store.list_runs(experiment=plan.name, role=kind, status="finished"):
        if record.seed == seed and same(record.config.get("sweep"), tag):
            return record
    return None


def shared_run(plan: SweepPlan, task: Task, store: RunStore) -> Outcome:
    """Train (or continue, or find) the teacher or student alone that every cell with its key
    uses."""
    record = find_shared(plan, task.kind, task.key, task.seed, store)
    if record is not None:
        return Outcome(task, True, record.metrics, stored=True)
    cfg = plan.shared_cell(task.kind, task.key).config
    recorder = _recorder(cfg, store, {"sweep": shared_tag(plan, task.kind, task.key)})
    recorded = shared_sections(cfg, task.kind)
    data = load_data(cfg, task.seed)
    if task.kind == "student":
        ctx = DistillContext.for_seed(cfg, data, task.seed, None, recorder, recorded)
        return Outcome(task, True, fit_student_alone(cfg, ctx).metrics)
    assert cfg.teacher is not None  # cells without a teacher have no teacher key
    run = RunInfo(seed=task.seed, config={"experiment": recorded})
    teacher = build_teacher(cfg.teacher, data, run, recorder)
    return Outcome(task, True, teacher.runs[-1].metrics)


def _recorder(cfg: ExperimentConfig, store: RunStore, tags: dict[str, Any]) -> Recorder:
    return Recorder(store, cfg.name, progress=False, gamma=cfg.metrics.gamma,
                    ece_bins=cfg.metrics.ece_bins, resume=True, strict=cfg.strict,
                    tags=tags)  # fmt: skip


def load_teacher(plan: SweepPlan, task: Task, store: RunStore) -> nn.Module:
    """A cell's shared teacher, with the weights its finished run saved."""
    cell = plan.cells[task.cell]
    t = cell.config.teacher
    assert t is not None and cell.teacher is not None
    record = find_shared(plan, "teacher", cell.teacher, task.seed, store)
    if record is None:
        raise StoreError(
            f"the shared teacher of seed {task.seed} has no finished run in {store.root} (it "
            "failed or was interrupted); run the same kdlab sweep command again"
        )
    data = load_data(cell.config, task.seed)
    n = t.member_count()
    specs = t.ensemble if isinstance(t.ensemble, list) else [t.model] * n
    models = [build_model(spec, data.input_shape, data.num_classes, derived_seed(task.seed, m))
              for m, spec in enumerate(specs)]  # fmt: skip
    model = models[0] if n == 1 else EnsembleTeacher(models, temperature=t.ensemble_temperature)
    model.load_state_dict(ckpt.load_state_dict(verified_artefact(record, "model")))
    return model.eval()


def run_cell(plan: SweepPlan, task: Task, store: RunStore) -> Outcome:
    """One cell with one seed: reused when the store holds it complete, else run (its
    interrupted runs continue, its finished ones are reused)."""
    cell = plan.cells[task.cell]
    done = StoredSeed(store, plan.name, cell.fingerprint, task.seed).completed_runs()
    if done:
        return outcome_of(plan, task, done, store, stored=True)
    teachers = {task.seed: load_teacher(plan, task, store)} if cell.teacher else None
    # The tag joins each run's recorded config: the runs layer then continues or reuses only
    # this cell's runs (it compares recorded configs), and a report can group by assignments.
    result = run_experiment(cell.for_seed(task.seed), store, progress=False, teachers=teachers,
                            resume=True, tags={"sweep": cell_tag(plan, task.cell)})  # fmt: skip
    return outcome_of(plan, task, result.runs, store, stored=False)


def outcome_of(
    plan: SweepPlan, task: Task, runs: list[RunResult], store: RunStore, stored: bool
) -> Outcome:
    """The cell's main run is its distilled student (else its last run); beside it, the test
    accuracy of its shared student alone, where that has finished."""
    main = next((r for r in reversed(runs) if r.role == "distilled"), runs[-1])
    key = plan.cells[task.cell].student
    alone = find_shared(plan, "student", key, task.seed, store) if key else None
    baseline = alone.metrics.get("accuracy") if alone is not None else None
    return Outcome(task, True, main.metrics, baseline, stored)


__all__ = [
    "SHARED",
    "Outcome",
    "Task",
    "claim",
    "claim_path",
    "execute",
    "find_shared",
    "outcome_of",
]
