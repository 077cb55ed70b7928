"""Running a sweep's tasks: in this process, or on N worker processes fed by this one.

This process is the only scheduler: it hands each task to one idle worker over that worker's own
pipe, so within one command no task is ever given out twice. A cell's task is handed out only
after its shared teacher's task succeeded; the shared student alone is its own task, which no
cell waits for (a distilled student does not need it). A worker that dies (``kill -9``, out of
memory) costs its task only: that task is reported failed — its runs read as interrupted and
continue when the command runs again — a new worker takes its place, and the other tasks go on.
Ctrl-C is the scheduler's alone: workers shut SIGINT out from birth and stop on its SIGTERM.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from kdlab.resume import StoredSeed
from kdlab.store import RunStore
from kdlab.sweep.cells import SHARED, Outcome, Task, execute, find_shared, outcome_of
from kdlab.sweep.plan import SweepPlan, format_value

Report = Callable[[Outcome], None]


@dataclass
class Schedule:
    """Tasks ready to run, and cell tasks waiting for their shared teacher."""

    ready: deque[Task] = field(default_factory=deque)
    waiting: dict[tuple[str, int], list[Task]] = field(default_factory=dict)

    def next(self) -> Task | None:
        return self.ready.popleft() if self.ready else None

    def done(self, outcome: Outcome) -> list[Outcome]:
        """Release the cells a finished teacher task taught; outcomes of the cells it failed."""
        task = outcome.task
        if task.kind != "teacher":
            return []
        cells = self.waiting.pop((task.key, task.seed), [])
        if outcome.ok:
            self.ready.extend(cells)
            return []
        why = f"its teacher (seed {task.seed}) did not finish: {outcome.error}"
        return [Outcome(cell, False, error=why) for cell in cells]

    def __len__(self) -> int:
        return len(self.ready) + sum(map(len, self.waiting.values()))


def schedule(plan: SweepPlan, store: RunStore) -> tuple[Schedule, list[Outcome]]:
    """The tasks still to run, and the outcomes of the (cell, seed) pairs the store holds done.

    Only an optimisation: each task checks the store again under its claim before training.
    """
    todo, stored = Schedule(), []
    finished: dict[tuple[str, str, int], bool] = {}  # (kind, key, seed) → shared run is done

    def shared_done(kind: str, key: str, seed: int) -> bool:
        """Whether the shared run has finished; the first time it has not, its task is queued."""
        if (kind, key, seed) not in finished:
            finished[kind, key, seed] = find_shared(plan, kind, key, seed, store) is not None
            if not finished[kind, key, seed]:
                todo.ready.append(Task(kind, seed, key=key))
        return finished[kind, key, seed]

    for cell in plan.cells:
        for seed in plan.seeds:
            task = Task("cell", seed, cell=cell.index)
            runs = StoredSeed(store, plan.name, cell.fingerprint, seed).completed_runs()
            if runs:
                stored.append(outcome_of(plan, task, runs, store, stored=True))
            if cell.student is not None:
                shared_done("student", cell.student, seed)
            if runs:
                continue
            if cell.teacher is None or shared_done("teacher", cell.teacher, seed):
                todo.ready.append(task)
            else:
                todo.waiting.setdefault((cell.teacher, seed), []).append(task)
    return todo, stored


def run_inline(plan: SweepPlan, todo: Schedule, store: RunStore, report: Report) -> None:
    while (task := todo.next()) is not None:
        outcome = execute(plan, task, store)
        for done in (outcome, *todo.done(outcome)):
            report(done)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Around a worker's start: SIGINT blocked in this thread, so the worker is born with it
    blocked (a signal mask survives fork+exec) until worker_main ignores it, and a Ctrl-C while
    it imports prints no traceback; here a Ctrl-C meanwhile is held, then raised: it neither
    cuts start() short (a worker without its task data) nor is lost."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    resource_tracker.ensure_running()  # now: starting it unblocks SIGINT after
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None  # None: not set from Python
    if previous is not None:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)  # after the holder took one pending
        if held:
            signal.raise_signal(signal.SIGINT)  # the scheduler's own handling, now


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second must not cut the marking short
    raise KeyboardInterrupt  # the runs layer marks the run in progress interrupted


def worker_main(conn: Connection, root: str, plan: SweepPlan, threads: int) -> None:
    """A worker process: run each task the scheduler sends, answer its outcome; None ends."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a Ctrl-C pending since birth
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see _sigint_held
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        torch.set_num_threads(threads)  # N workers share the cores (a config's `threads` wins)
        with RunStore(root) as store:
            while (task := conn.recv()) is not None:
                conn.send(execute(plan, task, store))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # interrupted, or the scheduler is gone: the run in progress says so
    finally:  # exiting (atexit callbacks follow): a late SIGTERM ends it without a traceback
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Worker:
    """One worker process and the pipe to it."""

    def __init__(self, context: Any, root: Path, plan: SweepPlan, threads: int) -> None:
        self.conn, self.child = context.Pipe()
        args = (self.child, str(root), plan, threads)
        self.process = context.Process(target=worker_main, args=args, name="kdlab-sweep-worker")
        self.task: Task | None = None

    def start(self) -> None:
        """Start the process (once the pool holds this worker: a Ctrl-C may end start())."""
        with _sigint_held():
            self.process.start()
        self.child.close()

    def give(self, task: Task) -> None:
        self.task = task
        with contextlib.suppress(OSError):  # died meanwhile: collect() reports it
            self.conn.send(task)

    def collect(self) -> Outcome | None:
        """The outcome of the task in hand, once there is one (a failure if the worker died)."""
        assert self.task is not None
        outcome = None
        if self.conn.poll():
            with contextlib.suppress(EOFError, OSError):  # died while answering
                outcome = self.conn.recv()
        if outcome is None and not self.process.is_alive():
            code = self.process.exitcode or 0
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            outcome = Outcome(self.task, False, error=f"its worker process died ({how}); its "
                              "interrupted runs continue when this sweep runs again")  # fmt: skip
        if outcome is not None:
            self.task = None
        return outcome

    def stop(self, terminate: bool) -> None:
        """Ask the process to end: now (SIGTERM), or once idle."""
        if terminate and self.process.is_alive():
            self.process.terminate()  # the run in progress is marked interrupted
        elif not terminate:
            with contextlib.suppress(OSError):
                self.conn.send(None)

    def close(self) -> None:
        """Wait for the process to end (killed after a minute), and close the pipe."""
        if self.process.pid is not None:  # started
            self.process.join(60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.child.close()


def run_parallel(plan: SweepPlan, todo: Schedule, root: Path, workers: int, report: Report) -> None:
    context = mp.get_context("spawn")  # no fork of a process that holds threads and SQLite
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool: list[Worker] = []
    finished = False
    try:
        for _ in range(workers):
            pool.append(Worker(context, root, plan, threads))
            pool[-1].start()
        while True:
            for i, worker in enumerate(pool):
                if worker.task is None and todo.ready:
                    if not worker.process.is_alive():
                        worker.close()
                        pool[i] = worker = Worker(context, root, plan, threads)
                        worker.start()
                    worker.give(todo.ready.popleft())
            busy = [w for w in pool if w.task is not None]
            if not busy:
                break
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                outcome = worker.collect()
                for done in (outcome, *todo.done(outcome)) if outcome else ():
                    report(done)
        finished = True
    finally:
        for worker in pool:  # all at once: each stops its run where it is
            worker.stop(terminate=not finished)
        for worker in pool:
            worker.close()


@dataclass
class SweepResult:
    plan: SweepPlan
    outcomes: list[Outcome] = field(default_factory=list)

    def cells(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.task.kind == "cell"]

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def line(self, outcome: Outcome) -> str:
        """One line of progress: what ran, with which seed, and its test accuracy or error."""
        task = outcome.task
        if task.kind in SHARED:
            role = "student alone" if task.kind == "student" else "teacher"
            label = self.plan.shared_label(task.kind, task.key)  # which one, when cells vary it
            cells = self.plan.sharing(task.kind, task.key)
            what = " ".join(filter(None, (role, label, f"s{task.seed}")))
            what += f" (shared by {cells} cell{'' if cells == 1 else 's'})"
        else:
            done = len(self.cells())
            total = len(self.plan.cells) * len(self.plan.seeds)
            what = f"[{done}/{total}] {self.plan.cells[task.cell].label} seed {task.seed}"
        if not outcome.ok:
            return f"{what}: FAILED: {outcome.error}"
        accuracy = outcome.metrics.get("accuracy", float("nan"))
        text = f"{what}: test acc {100 * accuracy:.2f} %"
        if outcome.baseline is not None:
            text += f" (student alone {100 * outcome.baseline:.2f} %)"
        return text + (" (stored)" if outcome.stored else "")

    def failure_line(self) -> str:
        """What failed: cells (with their seeds), then student-alone runs no cell counted."""
        failed = [o for o in self.failed() if o.task.kind == "cell"]
        total = len(self.plan.cells) * len(self.plan.seeds)
        shown = [f"{self.plan.cells[o.task.cell].label} seed {o.task.seed}" for o in failed[:10]]
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        text = f"{len(failed)} of {total} cells failed: {'; '.join(shown)}{more}" if failed else ""
        alone = [o.task for o in self.failed() if o.task.kind == "student"]
        if alone:
            runs = "; ".join(f"{self.plan.shared_cell('student', t.key).label} seed {t.seed}"
                             for t in alone[:10])  # fmt: skip
            text += ("; the student alone" if text else "the student alone") + f" failed for {runs}"
        return (
            f"{text}. Their errors: `kdlab runs --experiment {format_value(self.plan.name)} "
            "--status failed`; run the same command again to retry them (finished runs are not "
            "trained again)"
        )


def run_sweep(
    plan: SweepPlan, store: RunStore, workers: int, on_line: Callable[[str], None]
) -> SweepResult:
    """Run every (cell, seed) not yet done in ``store``; ``on_line`` gets a line per outcome."""
    result = SweepResult(plan)

    def report(outcome: Outcome) -> None:
        result.outcomes.append(outcome)
        on_line(result.line(outcome))

    todo, stored = schedule(plan, store)
    for outcome in stored:
        report(outcome)
    if workers == 1 or len(todo) <= 1:
        run_inline(plan, todo, store, report)
    else:
        run_parallel(plan, todo, store.root, min(workers, len(todo)), report)
    return result


__all__ = ["Schedule", "SweepResult", "run_sweep"]
