"""``kdlab sweep``: grids × zipped lists × seeds expanded into cells, each teacher trained once per
seed, one finished run per (cell, seed, role), failed cells recorded while the others finish,
resumption after a worker is killed or Ctrl-C, no cell trained twice by concurrent processes, bad
input.

Training runs on digits with one thread and tiny MLPs. The kill, Ctrl-C and concurrency tests run
the CLI in subprocesses (like tests/test_faults.py); the others run it in this process (CliRunner).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.store import RunStore
from kdlab.sweep.cells import Outcome, Task, claim, claim_path
from kdlab.sweep.plan import SweepOptions, parse_seeds, plan_sweep, split_values
from kdlab.sweep.pool import SweepResult

TRAIN = {"epochs": 2, "batch_size": 64, "threads": 1, "checkpoint_seconds": 0}
CONFIG: dict[str, Any] = {
    "name": "sw",
    "seeds": [0],
    "data": {"source": "digits", "test_size": 200},
    "teacher": {"model": {"type": "mlp", "hidden": [32]}, "train": TRAIN},
    "student": {"model": {"type": "mlp", "hidden": [8]}, "train": TRAIN},
    "distill": {"loss": [{"type": "ce", "weight": 0.1},
                         {"type": "soft_target", "weight": 0.9, "temperature": 4}]},
}  # fmt: skip
CLI = "import sys; from kdlab.cli import app; sys.argv[0] = 'kdlab'; app()"


def write(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def invoke(*args: object) -> Any:
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns when not on a terminal; the tests read whole lines."""
    for module in (cli, terminal):
        monkeypatch.setattr(module, "console", Console(width=300))
        monkeypatch.setattr(module, "err_console", Console(stderr=True, width=300))


def by_cell(store: Path, status: str = "finished") -> Counter:
    """(cell or shared teacher, seed, role) → how many runs with ``status`` the store holds."""
    with RunStore(store) as runs:
        records = runs.list_runs(status=status)
    return Counter((yaml.safe_dump(r.config["sweep"]), r.seed, r.role) for r in records)


def assert_one_run_each(store: Path, cells: int, seeds: int) -> None:
    """Each cell's distilled student once; the teacher and the student alone once per seed (the
    cells vary the loss only, so they share both)."""
    counts = by_cell(store)
    assert set(counts.values()) == {1}, counts  # nothing trained twice
    roles = Counter(role for _, _, role in counts)
    assert roles == {"teacher": seeds, "student": seeds, "distilled": cells * seeds}


# -- the plan -------------------------------------------------------------------------------------


def test_grid_zip_and_seeds_expand_into_typed_cells() -> None:
    base = copy.deepcopy(CONFIG)
    base["distill"]["loss"][1].update(divergence="renyi", alpha=2)
    options = SweepOptions(
        grid=["distill.loss.1.alpha=0,0.5,inf", "distill.loss.1.temperature=1,4"],
        zip=["student.train.epochs=1,3", "student.model.hidden=[8],[16, 4]"],
        overrides=["teacher.train.epochs=1"],
        seeds="0-2,7",
        name="grid",
    )
    plan = plan_sweep(parse_config(base), "exp.yaml", options)
    assert plan.name == "grid" and plan.seeds == [0, 1, 2, 7]
    assert len(plan.cells) == 3 * 2 * 2
    first, last = plan.cells[0].assignments, plan.cells[-1].assignments
    assert list(first) == ["distill.loss.1.alpha", "distill.loss.1.temperature",
                           "student.train.epochs", "student.model.hidden"]  # fmt: skip
    assert first == {"distill.loss.1.alpha": 0, "distill.loss.1.temperature": 1,
                     "student.train.epochs": 1, "student.model.hidden": [8]}  # fmt: skip
    alpha = last["distill.loss.1.alpha"]
    assert isinstance(alpha, float) and math.isinf(alpha)
    assert last["student.model.hidden"] == [16, 4] and last["student.train.epochs"] == 3
    for cell in plan.cells:  # zipped values stay together; each config holds its assignments
        cfg = cell.config
        assert (cfg.student.train.epochs, cfg.student.model["hidden"]) in [(1, [8]), (3, [16, 4])]
        assert cfg.distill.loss[1]["alpha"] == cell.assignments["distill.loss.1.alpha"]
        assert cfg.name == "grid" and cfg.teacher.train.epochs == 1  # the plain override
    assert len({c.fingerprint for c in plan.cells}) == 12
    assert len({c.teacher for c in plan.cells}) == 1  # the teacher is not varied: shared
    varied = plan_sweep(parse_config(CONFIG), "x", SweepOptions(grid=["teacher.train.epochs=1,2"]))
    assert len({c.teacher for c in varied.cells}) == 2


def test_values_and_seeds_parse() -> None:
    assert split_values("1,[2, 3],{a: 1, b: 2},'x,y'") == ["1", "[2, 3]", "{a: 1, b: 2}", "'x,y'"]
    assert split_values("") == []
    assert parse_seeds("0-2,5") == [0, 1, 2, 5] and parse_seeds("3") == [3]
    with pytest.raises(ConfigError, match="seed"):
        parse_seeds("0,1-2,2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "studnt.train.epochs=1,2"], "unknown key 'studnt' (did you mean 'student'?)"),
        (["--grid", "distill.loss.1.temperatur=1,2"], "temperatur"),
        (["--grid", "distill.loss.1.temperature="], "lists no values"),
        (["--grid", "distill.loss.1.temperature=1,,2"], "has an empty value"),
        (["--seeds", "5-3"], "the range 5-3 is empty; write the lower seed first: --seeds 3-5"),
        (["--zip", "distill.loss.1.temperature=1,2,4", "--zip", "student.train.epochs=1,2"],
         "need the same number of values"),
        (["--workers", "0"], "--workers is 0; give 1 or more"),
        (["--grid", "seeds=0,1"], "use --seeds"),
    ],
    ids=["unknown-key", "unknown-deep-key", "empty-grid", "empty-value", "seeds-5-3", "zip-lengths",
         "workers-0", "grid-over-seeds"],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    store = tmp_path / "store"
    result = invoke("sweep", write(tmp_path, CONFIG), *args, "--store", store)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert not store.exists()  # nothing written


def test_a_claim_excludes_every_other_holder(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    plan = plan_sweep(parse_config(CONFIG), "x", SweepOptions(grid=["student.train.epochs=1,2"]))
    one, two = (claim_path(tmp_path, plan, Task("cell", 0, cell=i)) for i in (0, 1))
    assert one != two and one == claim_path(tmp_path, plan, Task("cell", 0, cell=0))
    with claim(one), open(one, "a+b") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(one, "a+b") as other:  # released on exit
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_shared_run_is_labelled_with_what_its_cells_vary_in_its_sections() -> None:
    def lines(*grid: str, zip_: tuple[str, ...] = ()) -> list[str]:
        plan = plan_sweep(parse_config(CONFIG), "x", SweepOptions(grid=list(grid), zip=list(zip_)))
        result = SweepResult(plan)
        keys = {(k, c.shared(k)) for c in plan.cells for k in ("teacher", "student")}
        outcomes = [Outcome(Task(k, 0, key=key), True, {"accuracy": 0.5}) for k, key in keys]
        return sorted(result.line(o) for o in outcomes)

    assert lines("student.train.epochs=1,2", "distill.loss.1.temperature=1,4",
                 "teacher.train.epochs=1,3") == [
        "student alone student.train.epochs=1 s0 (shared by 4 cells): test acc 50.00 %",
        "student alone student.train.epochs=2 s0 (shared by 4 cells): test acc 50.00 %",
        "teacher teacher.train.epochs=1 s0 (shared by 4 cells): test acc 50.00 %",
        "teacher teacher.train.epochs=3 s0 (shared by 4 cells): test acc 50.00 %",
    ]  # fmt: skip
    assert lines("data.test_size=100,150", "student.model.hidden=[8, 8],[16]") == [
        "student alone data.test_size=100 student.model.hidden=[16] s0 (shared by 1 cell): "
        "test acc 50.00 %",
        "student alone data.test_size=100 student.model.hidden=[8, 8] s0 (shared by 1 cell): "
        "test acc 50.00 %",
        "student alone data.test_size=150 student.model.hidden=[16] s0 (shared by 1 cell): "
        "test acc 50.00 %",
        "student alone data.test_size=150 student.model.hidden=[8, 8] s0 (shared by 1 cell): "
        "test acc 50.00 %",
        "teacher data.test_size=100 s0 (shared by 2 cells): test acc 50.00 %",
        "teacher data.test_size=150 s0 (shared by 2 cells): test acc 50.00 %",
    ]
    assert lines(zip_=("distill.loss.1.temperature=1,4", "distill.loss.0.weight=0.1,0.2")) == [
        "student alone s0 (shared by 2 cells): test acc 50.00 %",  # nothing of theirs varies
        "teacher s0 (shared by 2 cells): test acc 50.00 %",
    ]


# -- a sweep in this process ----------------------------------------------------------------------

FAILING = ["--zip", "distill.loss.1.temperature=1,4,4",
           "--zip", "student.train.optimizer.lr=0.003,0.003,1e30", "--seeds", "0,1"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """Three cells × two seeds; the third cell's learning rate makes its student diverge."""
    folder = tmp_path_factory.mktemp("sweep")
    config = write(folder, CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for module in (cli, terminal):
            mp.setattr(module, "console", Console(width=300))
            mp.setattr(module, "err_console", Console(stderr=True, width=300))
        result = invoke("sweep", config, *FAILING, "--store", folder / "store")
    return config, folder / "store", result


def test_each_teacher_trains_once_and_each_cell_records_its_assignments(swept) -> None:
    _, store, result = swept
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and sum("test acc" in line for line in progress) == 4, progress
    assert "[1/6] distill.loss.1.temperature=1 student.train.optimizer.lr=0.003 seed 0: " \
           "test acc" in result.stdout  # fmt: skip
    lines = result.stdout.splitlines()
    assert sum(line.startswith("teacher s") for line in lines) == 2
    # The two good cells share their student alone (one per seed); the third's diverges. Each
    # line names the student settings the cells vary (the learning rate).
    assert sum(line.startswith("student alone student.train.optimizer.lr=0.003 s")
               and "(shared by 2 cells): test acc" in line for line in lines) == 2  # fmt: skip
    with RunStore(store) as runs:
        records = runs.list_runs(status="finished")
    for role in ("teacher", "student"):  # one per seed, shared by the cells
        shared = [r for r in records if r.role == role]
        assert sorted(r.seed for r in shared) == [0, 1]
        assert all(set(r.config["sweep"]) == {"name", role} for r in shared)
    alone = [r for r in records if r.role == "student"]
    assert all("distill" not in r.config["experiment"] for r in alone)  # labels only
    cells = Counter((yaml.safe_dump(r.config["sweep"]["cell"]), r.seed, r.role)
                    for r in records if r.role == "distilled")  # fmt: skip
    assert set(cells.values()) == {1} and len(cells) == 2 * 2  # two good cells
    for r in records:
        assert r.experiment == "sw"
        if r.role == "distilled":
            cell = r.config["sweep"]["cell"]
            assert cell["distill.loss.1.temperature"] in (1, 4)  # typed: an int, as YAML reads
            assert cell["student.train.optimizer.lr"] == 0.003
            assert r.config["experiment"]["distill"]["loss"][1]["temperature"] == cell[
                "distill.loss.1.temperature"]  # fmt: skip
            assert "agreement" in r.metrics  # taught by the shared teacher
    with RunStore(store) as runs:  # "1e30" is a string to YAML; the cell records the config's float
        (bad, *_) = runs.list_runs(status="failed")
    assert bad.config["sweep"]["cell"]["student.train.optimizer.lr"] == 1e30


def test_a_failed_cell_is_recorded_and_the_others_finish(swept) -> None:
    _, store, result = swept
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    cells = [line for line in failed if line.startswith("[") and "lr=1e+30" in line]  # seeds 0, 1
    its_alone = "student alone student.train.optimizer.lr=1e+30 s"  # "(shared by 1 cell)"
    alone = [line for line in failed if line.startswith(its_alone) and "by 1 cell)" in line]
    assert len(cells) == 2 and len(alone) == 2 and len(failed) == 4, failed
    assert all("NonFiniteLossError" in line for line in failed)
    err = " ".join(result.stderr.split())
    assert err.startswith("error: 2 of 6 cells failed: ")
    assert "lr=1e+30 seed 0" in err and "lr=1e+30 seed 1" in err
    assert "the student alone failed for distill.loss.1.temperature=4 " in err
    with RunStore(store) as runs:
        bad = runs.list_runs(status="failed")
    assert sorted(r.seed for r in bad) == [0, 0, 1, 1]
    assert sorted(r.role for r in bad) == ["distilled", "distilled", "student", "student"]
    assert all("non-finite loss" in (r.error or "") for r in bad)


def test_a_second_sweep_reuses_every_finished_cell(swept) -> None:
    config, store, _ = swept
    before = by_cell(store)
    again = invoke("sweep", config, *FAILING, "--store", store)
    assert again.exit_code == 1  # the failing cell is tried again, and fails again
    assert sum("(stored)" in line for line in again.stdout.splitlines()) == 4
    assert "teacher s" not in again.stdout  # no teacher trained or loaded for stored cells
    assert by_cell(store) == before  # nothing trained twice
    assert sum(by_cell(store, "failed").values()) == 8  # the failing cell and student, again


# -- several processes ----------------------------------------------------------------------------


def kdlab(*args: object) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CLI, *(str(a) for a in args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def running_distilled(store: Path) -> tuple[str, int] | None:
    """(id, pid) of a running distilled run with 3 epochs logged (read-only, as another process)."""
    db = store / "kdlab.sqlite"
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT runs.id, runs.pid FROM runs JOIN history ON runs.id = history.run_id"
            " WHERE runs.role = 'distilled' AND runs.status = 'running'"
            " GROUP BY runs.id HAVING COUNT(*) >= 3"
        ).fetchone()  # fmt: skip
    except sqlite3.OperationalError:  # the schema is being created
        return None
    finally:
        conn.close()
    return None if row is None else (row[0], int(row[1]))


def test_a_worker_killed_mid_cell_resumes_without_losing_or_duplicating(tmp_path: Path) -> None:
    config = copy.deepcopy(CONFIG)
    config["distill"]["train"] = {**TRAIN, "epochs": 20, "batch_size": 32}  # time to kill it
    path, store = write(tmp_path, config), tmp_path / "store"
    args = ("sweep", path, "--grid", "distill.loss.1.temperature=1,4", "--store", store)
    proc = kdlab(*args, "--workers", 2)  # the two cells train at once, one per worker
    deadline = time.monotonic() + 180
    while (victim := running_distilled(store)) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no distilled run reached epoch 3"
        time.sleep(0.02)
    run_id, pid = victim
    assert pid != proc.pid  # a worker process, not the scheduler
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 1, err
    assert "its worker process died (killed by signal 9)" in out
    assert err.startswith("error: 1 of 2 cells failed: distill.loss.1.temperature=")
    assert "test acc" in out  # the other worker's cell finished
    with RunStore(store) as runs:
        assert runs.get_run(run_id).status == "interrupted"
        # Worker processes wrote the runs, not the scheduler: two, or three when the killed
        # worker was replaced for a cell still waiting (a worker was busy with the student alone).
        pids = {r.pid for r in runs.list_runs()}
        assert proc.pid not in pids and len(pids) >= 2
    code, out, err = finish(kdlab(*args))  # resumes in one process: the store decides, not N
    assert code == 0, err
    assert sum("(stored)" in line for line in out.splitlines()) == 1
    assert_one_run_each(store, cells=2, seeds=1)
    with RunStore(store) as runs:
        assert all(r.status == "finished" for r in runs.list_runs())  # none failed or left over
        epochs = [row["epoch"] for row in runs.history(run_id)]  # continued in place
    assert epochs == list(range(1, 21))


def test_two_sweeps_at_once_never_train_a_cell_twice(tmp_path: Path) -> None:
    path, store = write(tmp_path, CONFIG), tmp_path / "store"
    args = ("sweep", path, "--grid", "distill.loss.1.temperature=1,4", "--seeds", "0-1",
            "--store", store)  # fmt: skip
    first, second = kdlab(*args), kdlab(*args)
    for proc in (first, second):
        code, _, err = finish(proc)
        assert code == 0, err
    assert_one_run_each(store, cells=2, seeds=2)


def sweep_workers(pid: int) -> list[int]:
    """The worker processes of sweep ``pid`` that import or have imported torch."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # not a process, or ended
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and "libtorch" in (entry / "maps").read_text():
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="finds workers in /proc")
@pytest.mark.parametrize("moment", ["workers-importing", "mid-training"])
def test_ctrl_c_stops_a_worker_sweep_without_a_traceback(tmp_path: Path, moment: str) -> None:
    """Ctrl-C signals the whole process group: the workers leave it to the scheduler, whose
    SIGTERM marks their runs interrupted, even while they still import torch. The workers get
    it first here, as when their handlers run before the scheduler's SIGTERM arrives."""
    config = copy.deepcopy(CONFIG)
    if moment == "mid-training":
        config["distill"]["train"] = {**TRAIN, "epochs": 60, "batch_size": 32}  # time to stop it
    path, store = write(tmp_path, config), tmp_path / "store"
    args = ("sweep", path, "--grid", "distill.loss.1.temperature=1,4", "--store", store)
    cmd = [sys.executable, "-c", CLI, *(str(a) for a in (*args, "--workers", 2))]
    pipe = subprocess.PIPE  # in its own process group, as a command in a terminal
    proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
    try:
        deadline, victim = time.monotonic() + 120, None
        while not (
            len(sweep_workers(proc.pid)) == 2  # both past Python's start, in `import torch`
            if moment == "workers-importing"
            else (victim := running_distilled(store))
        ):
            assert proc.poll() is None, proc.communicate()
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"the sweep never reached {moment}: {proc.communicate()}")
            time.sleep(0.01)
        for pid in sweep_workers(proc.pid):
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        code, out, err = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in out + err and "Exception ignored" not in out + err, err
    assert "FAILED" not in out, out  # no worker ended on its own
    line = " ".join(err.split())  # the one line, wrapped at 80 columns
    assert code == 130 and line.startswith("interrupted (Ctrl-C): "), err
    assert line.endswith(f"--workers=2 --store={store}`") and line.count("interrupted") == 2, err
    if victim is not None:  # stopped by the scheduler's SIGTERM, marked so
        with RunStore(store) as runs:
            assert runs.get_run(victim[0]).status == "interrupted"
    code, out, err = finish(kdlab(*args))  # the sweep resumes
    assert code == 0, err
    assert_one_run_each(store, cells=2, seeds=1)
    if victim is not None:
        with RunStore(store) as runs:
            assert [row["epoch"] for row in runs.history(victim[0])] == list(range(1, 61))
