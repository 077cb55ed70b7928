"""Faults a real user meets: a `kdlab run` killed (kill -9, SIGTERM, Ctrl-C) mid-epoch, then
resumed; foreign files given to the store; four processes writing one store at once.

Each kill test runs the CLI in a subprocess on digits (one thread, so every run is
deterministic), stops it while a run is training, resumes it with `--resume` and compares every
run's final metrics with an uninterrupted run of the same config in another store.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdlab.errors import StoreError
from kdlab.store import RunStore
from pg_server import (  # noqa: F401  (fixtures: pytest finds them by their name= here)
    StoreAt,
    count_rows,
    pg_admin_fixture,
    pg_database_fixture,
    store_at_fixture,
)

CONFIG = {
    "name": "faults",
    "seeds": [0],
    "data": {"source": "digits", "test_size": 200},
    "teacher": {
        "model": {"type": "mlp", "hidden": [256, 256]},
        "train": {"epochs": 40, "batch_size": 32, "threads": 1, "checkpoint_seconds": 0,
                  "optimizer": {"lr": 0.001}},
    },
    "student": {
        "model": {"type": "mlp", "hidden": [16]},
        "train": {"epochs": 40, "batch_size": 32, "threads": 1, "checkpoint_seconds": 0},
    },
}  # fmt: skip
CLI = "import sys; from kdlab.cli import app; sys.argv[0] = 'kdlab'; app()"


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: the
    # Ctrl-C test needs the default disposition whatever launched pytest.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kdlab(*args: object, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("preexec_fn", _default_sigint)
    cmd = [sys.executable, "-c", CLI, *(str(a) for a in args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def epochs_logged(store: Path, role: str) -> int:
    """Epochs of the newest ``role`` run written so far (read-only, like another process)."""
    db = store / "kdlab.sqlite"
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM history JOIN runs ON runs.id = history.run_id"
            " WHERE runs.role = ? ORDER BY runs.created_at DESC", (role,)
        ).fetchone()  # fmt: skip
    except sqlite3.OperationalError:  # the schema is being created
        return 0
    finally:
        conn.close()
    return int(row[0])


def stop_mid_run(proc: subprocess.Popen, store: Path, role: str, sig: int) -> None:
    """Send ``sig`` once ``role``'s run has logged 3 epochs (and is still training)."""
    deadline = time.monotonic() + 180
    while epochs_logged(store, role) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached epoch 3"
        time.sleep(0.02)
    proc.send_signal(sig)


def metrics_by_role(store: Path) -> dict[str, dict[str, float]]:
    with RunStore(store) as runs:
        return {r.role: r.metrics for r in runs.list_runs(status="finished")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "exp.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> dict[str, dict[str, float]]:
    code, _out, err = finish(kdlab("run", workdir / "exp.yaml", "--store", workdir / "clean",
                                  "--no-progress"))  # fmt: skip
    assert code == 0, err
    return metrics_by_role(workdir / "clean")


@pytest.mark.parametrize(
    ("sig", "role", "code"),
    [(signal.SIGKILL, "teacher", -9), (signal.SIGTERM, "student", 143),
     (signal.SIGINT, "distilled", 130)],
    ids=["kill-9-teacher", "sigterm-student", "sigint-distilled"],
)  # fmt: skip
def test_a_killed_run_resumes_to_the_same_numbers(
    workdir: Path, uninterrupted: dict, sig: int, role: str, code: int
) -> None:
    store = workdir / f"store-{sig}"
    proc = kdlab("run", workdir / "exp.yaml", "--store", store, "--no-progress")
    stop_mid_run(proc, store, role, sig)
    returncode, _, err = finish(proc)
    assert returncode == code, err
    if sig != signal.SIGKILL:  # a signal it can catch: one line, how to continue, no traceback
        assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    with RunStore(store) as runs:
        (killed,) = [r for r in runs.list_runs() if r.role == role]
        assert killed.status == "interrupted"  # kill -9: its process is gone
        before = runs.history(killed.id)
        saved = torch.load(killed.artefacts["checkpoint"], weights_only=True)["epoch"]
    assert len(before) - saved <= 1  # at most one checkpoint interval is lost
    listing = finish(kdlab("runs", "--store", store))[1]
    assert "interrupted" in listing

    returncode, _out, err = finish(kdlab("run", workdir / "exp.yaml", "--store", store,
                                        "--no-progress", "--resume"))  # fmt: skip
    assert returncode == 0, err
    assert metrics_by_role(store) == uninterrupted  # every role, every metric, exactly
    with RunStore(store) as runs:
        assert all(r.status == "finished" for r in runs.list_runs())
        resumed = runs.get_run(killed.id)  # continued in place, not started over
        after = runs.history(resumed.id)
        assert after[:saved] == before[:saved]  # the checkpointed epochs were not trained again
        assert [row["epoch"] for row in after] == list(range(1, len(after) + 1))
        assert len(runs.list_runs()) == 3  # nothing trained twice: teacher, student, distilled
    assert not list(store.rglob("*.tmp"))


def test_a_foreign_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "kdlab.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="another program"):
        RunStore(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # not switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdlab.sqlite"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.execute("PRAGMA user_version = 99")
    conn.execute("DROP TABLE photos")
    conn.commit()
    conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="newer than this kdlab"):
        RunStore(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _writer(root: str, tag: str, runs: int, barrier) -> None:
    barrier.wait()
    with RunStore(root) as store:
        for i in range(runs):
            run = store.create_run(experiment="w", name=f"{tag}{i}", role=tag, seed=i, config={})
            for epoch in range(1, 6):
                store.log_epoch(run, epoch, {"loss": epoch / 10})
            store.finish_run(run, {"accuracy": i / runs})


def test_four_processes_write_one_store(store_at: StoreAt, tmp_path: Path) -> None:
    root = str(store_at(tmp_path))  # SQLite, and PostgreSQL as processes on many machines use it
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(root, t, 15, barrier)) for t in "abcd"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)  # spawned children import torch: slow on a busy machine
        assert proc.exitcode == 0, f"writer exited with {proc.exitcode}"
    with RunStore(root) as store:
        runs = store.list_runs()
        assert len(runs) == 60 and all(r.status == "finished" for r in runs)
        assert all(len(store.history(r.id)) == 5 for r in runs)
    if store_at.backend == "postgresql":
        assert count_rows(root, "history") == 60 * 5
        return
    conn = sqlite3.connect(tmp_path / "kdlab.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_dead_running_run_reads_as_interrupted(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(child.stdout)  # exited: no process has this pid now (reuse is unlikely)
    with RunStore(tmp_path) as store:
        live = store.create_run(experiment="e", name="n", role="r", seed=0, config={})
        dead = store.create_run(experiment="e", name="n", role="r", seed=1, config={})
    conn = sqlite3.connect(tmp_path / "kdlab.sqlite")
    conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead_pid, dead))
    conn.commit()
    conn.close()
    with RunStore(tmp_path) as store:
        assert store.get_run(live).status == "running"  # this process is alive
        assert store.get_run(dead).status == "interrupted"
        assert [r.id for r in store.list_runs(status="interrupted")] == [dead]
        assert [r.id for r in store.list_runs(status="running")] == [live]
        (tmp_path / "runs" / dead).mkdir(parents=True)
        (tmp_path / "runs" / dead / ".checkpoint.pt.abc.tmp").write_bytes(b"half")
        store.reopen_run(dead)
        assert store.get_run(dead).status == "running"
        assert not list((tmp_path / "runs" / dead).iterdir())
        assert os.getpid() == store.get_run(dead).pid


class Payload:
    """Unpickling this creates ``marker``: the file appears iff code from the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("artefact", ["model", "checkpoint"])
def test_a_replaced_store_file_is_refused_on_resume(workdir: Path, artefact: str) -> None:
    """Anyone who can write to a shared store must not get code run by whoever resumes."""
    store = workdir / f"shared-{artefact}"
    proc = kdlab("run", workdir / "exp.yaml", "--store", store, "--no-progress")
    stop_mid_run(proc, store, "student", signal.SIGKILL)  # the teacher has finished
    finish(proc)
    with RunStore(store) as runs:
        role = "teacher" if artefact == "model" else "student"  # finished / interrupted run
        (victim,) = [r for r in runs.list_runs() if r.role == role]
    marker = workdir / f"pwned-{artefact}"
    torch.save({"models": {"model": Payload(marker)}}, victim.artefacts[artefact])
    code, _, err = finish(kdlab("run", workdir / "exp.yaml", "--store", store,
                                "--no-progress", "--resume"))  # fmt: skip
    err = err.replace("\n", "")  # rich may wrap the line where there is no terminal
    assert code == 2 and "Traceback" not in err
    assert "is not the file kdlab wrote" in err and victim.id in err
    assert not marker.exists()


def test_runs_and_summary_read_a_row_with_null_metrics(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run = store.create_run(experiment="e", name="n", role="student", seed=0, config={})
        store.finish_run(run, {"accuracy": 0.5})
    conn = sqlite3.connect(tmp_path / "kdlab.sqlite")
    conn.execute("UPDATE runs SET metrics = 'null', artefacts = 'null', config = '[1]'")
    conn.commit()
    conn.close()
    for args in (("runs",), ("summary", "e"), ("show", run)):
        code, out, err = finish(kdlab(*args, "--store", tmp_path))
        assert code == 0 and "Traceback" not in err, err
        assert "student" in out or run in out


def test_a_non_finite_loss_names_the_run_not_a_misleading_optimizer() -> None:
    from kdlab.data import load_dataset
    from kdlab.errors import NonFiniteLossError
    from kdlab.losses import CrossEntropy
    from kdlab.models import MLP
    from kdlab.runs import Recorder, RunInfo
    from kdlab.schemes.offline import fit_offline
    from kdlab.settings import TrainSettings

    class Exploding(CrossEntropy):
        kind = "exploding_test"

        def forward(self, student, teacher, batch):
            return super().forward(student, teacher, batch) * float("inf")

    data = load_dataset("digits", test_size=100)
    with pytest.raises(NonFiniteLossError) as info:
        fit_offline(MLP(64, [8], 10), data, [Exploding()], TrainSettings(epochs=1, threads=1),
                    None, RunInfo("teacher", "teacher s0"), Recorder(progress=False))  # fmt: skip
    message = str(info.value)
    assert "non-finite loss at epoch 1, step 1 while training 'teacher s0'" in message
    assert "optimizer 'student'" not in message  # the teacher's one optimizer is not named


def test_a_kill_between_hashing_and_replacing_a_checkpoint_loses_nothing(tmp_path: Path) -> None:
    """The store learns a checkpoint's hash before the file replaces the old one; a kill -9 in
    between leaves the old file, which the kept previous hash still vouches for."""
    from kdlab import checkpoint as ckpt
    from kdlab.runs import Recorder, verified_artefact

    with RunStore(tmp_path) as store:
        run = store.create_run(experiment="e", name="n", role="teacher", seed=0, config={})
        hook = Recorder(store).checkpoint_hook(run)
        path = store.run_dir(run) / "checkpoint.pt"
        ckpt.save_atomic({"epoch": 1}, path, before_replace=hook)
        assert verified_artefact(store.get_run(run), "checkpoint") == path
        pending = tmp_path / "pending.pt"
        torch.save({"epoch": 2}, pending)
        hook(pending)  # recorded; the process dies before os.replace
        assert verified_artefact(store.get_run(run), "checkpoint") == path  # old file: accepted
        os.replace(pending, path)
        assert verified_artefact(store.get_run(run), "checkpoint") == path  # new file: accepted
        torch.save({"epoch": 3}, path)  # a file kdlab never recorded
        with pytest.raises(StoreError, match="is not the file kdlab wrote"):
            verified_artefact(store.get_run(run), "checkpoint")
