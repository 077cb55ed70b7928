"""Tests of the run store (kdlab.store), each against SQLite and PostgreSQL (``store_at``, from
tests/pg_server.py) unless it is about an SQLite file; tests/test_store_postgres.py has the
PostgreSQL-only ones."""

from __future__ import annotations

import math
import multiprocessing as mp
import re
import sqlite3
from pathlib import Path

import pytest

from kdlab.errors import StoreError
from kdlab.store import RunRecord, RunStore
from kdlab.store.schema import SCHEMA_VERSION
from pg_server import (  # noqa: F401  (fixtures: pytest finds them by their name= here)
    StoreAt,
    count_rows,
    pg_admin_fixture,
    pg_database_fixture,
    store_at_fixture,
)

ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


@pytest.fixture
def store(store_at: StoreAt, tmp_path: Path):
    with RunStore(store_at(tmp_path / "store")) as s:
        yield s


def _new(store: RunStore, experiment: str = "exp", role: str = "student", **kw) -> str:
    kw.setdefault("name", "r")
    kw.setdefault("seed", 0)
    kw.setdefault("config", {})
    return store.create_run(experiment=experiment, role=role, **kw)


def _shortest_unique_prefix(run_id: str, ids: list[str]) -> str:
    for k in range(1, len(run_id) + 1):
        if sum(i.startswith(run_id[:k]) for i in ids) == 1:
            return run_id[:k]
    raise AssertionError("ids are not unique")


def test_round_trip_config_metrics_artefacts_history(store: RunStore, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")  # imported here: keeps the spawned workers light
    torch = pytest.importorskip("torch")
    config = {"lr": 0.1, "layers": [64, 32], "nested": {"T": 4.0, "name": "kd"}, "p": Path("/x")}
    rid = store.create_run(experiment="cifar", name="kd-t4", role="student", seed=3, config=config)
    assert ID_RE.match(rid), rid
    store.log_epoch(rid, 1, {"loss": float("nan"), "acc": np.float32(0.5)})
    store.log_epoch(rid, 2, {"loss": torch.tensor(0.25), "acc": float("inf")})
    store.add_artefact(rid, "ckpt", store.run_dir(rid) / "last.pt")
    store.finish_run(rid, {"acc": np.float64(0.75), "nll": -math.inf}, {"plot": "p.png"})

    rec = store.get_run(rid)
    assert isinstance(rec, RunRecord)
    assert (rec.experiment, rec.name, rec.role, rec.seed, rec.status) == (
        "cifar",
        "kd-t4",
        "student",
        3,
        "finished",
    )
    assert rec.config == {**config, "p": "/x"}
    assert rec.metrics["acc"] == 0.75 and rec.metrics["nll"] == -math.inf
    assert all(type(v) is float for v in rec.metrics.values())
    assert rec.artefacts == {
        "ckpt": str(tmp_path / "store/runs" / rid / "last.pt"),
        "plot": "p.png",
    }
    assert rec.error is None and rec.finished_at is not None and rec.finished_at > rec.created_at

    hist = store.history(rid)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert math.isnan(hist[0]["loss"]) and hist[0]["acc"] == 0.5
    assert hist[1] == {"epoch": 2, "loss": 0.25, "acc": math.inf}
    assert store.run_dir(rid).is_dir() and store.run_dir(rid).parent == tmp_path / "store/runs"


def test_status_transitions(store: RunStore) -> None:
    ok, bad = _new(store), _new(store)
    assert store.get_run(ok).status == "running" and store.get_run(ok).finished_at is None
    store.finish_run(ok, {"acc": 1.0})
    assert store.get_run(ok).status == "finished"
    store.fail_run(bad, "Traceback: boom")
    rec = store.get_run(bad)
    assert (rec.status, rec.error) == ("failed", "Traceback: boom") and rec.finished_at
    for call in (
        lambda: store.finish_run(ok, {"acc": 0.0}),
        lambda: store.fail_run(ok, "late"),
        lambda: store.finish_run(bad, {}),
        lambda: store.log_epoch(ok, 9, {"acc": 0.0}),
    ):
        with pytest.raises(StoreError, match="already"):
            call()
    assert store.get_run(ok).metrics == {"acc": 1.0} and store.history(ok) == []
    store.add_artefact(ok, "report", "r.html")  # artefacts may be added after the run ended
    assert store.get_run(ok).artefacts == {"report": "r.html"}


def test_prefix_lookup_unique_ambiguous_unknown(store: RunStore) -> None:
    ids = [_new(store, name=f"r{i}") for i in range(3)]
    for i, rid in enumerate(ids):
        assert store.get_run(rid).name == f"r{i}"
        assert store.get_run(_shortest_unique_prefix(rid, ids)).id == rid
    common = ids[0]
    while not all(i.startswith(common) for i in ids):
        common = common[:-1]
    with pytest.raises(StoreError, match="ambiguous") as err:
        store.get_run(common)
    assert all(rid in str(err.value) for rid in ids)
    with pytest.raises(StoreError, match=r"no run '1999'.*kdlab runs"):
        store.get_run("1999")
    with pytest.raises(StoreError, match="no run"):
        store.log_epoch("nope", 1, {"a": 1.0})
    with pytest.raises(StoreError, match="no run"):
        store.run_dir(ids[0][:-1])  # writers and run_dir need the full id


def test_list_filters_and_ordering(store: RunStore) -> None:
    t = _new(store, "cifar", "teacher", name="t")
    s1 = _new(store, "cifar", "student", name="s1")
    s2 = _new(store, "mnist", "student", name="s2")
    s3 = _new(store, "cifar", "student", name="s3")
    store.finish_run(s1, {})
    store.fail_run(s3, "x")
    assert [r.id for r in store.list_runs()] == [s3, s2, s1, t]
    assert [r.id for r in store.list_runs(experiment="cifar")] == [s3, s1, t]
    assert [r.id for r in store.list_runs(role="student")] == [s3, s2, s1]
    assert [r.id for r in store.list_runs(status="running")] == [s2, t]
    assert [r.id for r in store.list_runs(experiment="cifar", role="student", status="failed")] == [
        s3
    ]
    assert [r.id for r in store.list_runs(limit=2)] == [s3, s2]
    assert store.list_runs(experiment="imagenet") == []
    assert store.experiments() == ["cifar", "mnist"]
    with pytest.raises(ValueError, match="status"):
        store.list_runs(status="done")


def test_history_upsert_and_atomic_writes(store: RunStore) -> None:
    rid = _new(store)
    store.log_epoch(rid, 2, {"acc": 0.2, "old": 1.0})
    store.log_epoch(rid, 1, {"acc": 0.1})
    store.log_epoch(rid, 2, {"acc": 0.3})  # re-logged (e.g. after resuming): replaced
    assert store.history(rid) == [{"epoch": 1, "acc": 0.1}, {"epoch": 2, "acc": 0.3}]
    with pytest.raises(StoreError, match="not a number"):
        store.log_epoch(rid, 3, {"acc": 0.4, "bad": "high"})
    with pytest.raises(StoreError, match="not a number"):
        store.finish_run(rid, {"acc": object()}, {"ckpt": "c.pt"})
    with pytest.raises(StoreError, match="serialisable"):
        _new(store, name="bad-config", config={"model": object()})
    assert len(store.history(rid)) == 2
    rec = store.get_run(rid)
    assert (rec.status, rec.artefacts) == ("running", {})
    assert [r.name for r in store.list_runs()] == ["r"]


def _worker(root: str, tag: str, n_runs: int, n_epochs: int, barrier) -> None:
    with RunStore(root) as s:
        barrier.wait(timeout=60)
        for r in range(n_runs):
            rid = s.create_run(experiment=tag, name=f"{tag}-{r}", role="student", seed=r, config={})
            for e in range(n_epochs):
                s.log_epoch(rid, e, {"loss": 1.0 / (e + 1), "worker": float(r)})
            s.add_artefact(rid, "ckpt", f"{tag}-{r}.pt")
            s.finish_run(rid, {"acc": float(r)})


def test_two_processes_write_concurrently(store_at: StoreAt, tmp_path: Path) -> None:
    root = str(store_at(tmp_path / "shared"))  # fresh: both processes race to create the schema
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(root, t, 2, 120, barrier)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    with RunStore(root) as s:
        runs = s.list_runs()
        assert len(runs) == 4 and {r.status for r in runs} == {"finished"}
        assert s.experiments() == ["a", "b"]
        for r in runs:
            assert [h["epoch"] for h in s.history(r.id)] == list(range(120))
            assert r.artefacts == {"ckpt": f"{r.name}.pt"}
    if store_at.backend == "postgresql":
        assert count_rows(root, "history") == 4 * 120
        return
    con = sqlite3.connect(Path(root) / "kdlab.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM history").fetchone()[0] == 4 * 120
    finally:
        con.close()


def test_two_stores_in_one_process_interleave(store_at: StoreAt, tmp_path: Path) -> None:
    with RunStore(store_at(tmp_path)) as a, RunStore(store_at(tmp_path)) as b:
        ra, rb = _new(a, name="a"), _new(b, name="b")
        for e in range(5):
            a.log_epoch(ra, e, {"x": e})
            b.log_epoch(rb, e, {"x": -e})
        assert [h["x"] for h in a.history(rb)] == [0, -1, -2, -3, -4]
        assert {r.name for r in b.list_runs()} == {"a", "b"}


def test_not_a_database_file_raises(tmp_path: Path) -> None:
    db = tmp_path / "kdlab.sqlite"
    db.write_bytes(b"this is definitely not sqlite, just some text " * 40)
    with pytest.raises(StoreError, match="not an SQLite database") as err:
        RunStore(tmp_path)
    assert str(db) in str(err.value)


def test_foreign_or_newer_database_raises(tmp_path: Path) -> None:
    foreign, newer = tmp_path / "foreign", tmp_path / "newer"
    for d in (foreign, newer):
        d.mkdir()
    con = sqlite3.connect(foreign / "kdlab.sqlite")
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="another program"):
        RunStore(foreign)
    RunStore(newer).close()
    con = sqlite3.connect(newer / "kdlab.sqlite")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=r"newer.*upgrade kdlab"):
        RunStore(newer)


def test_uncreatable_root_and_closed_store_raise(store_at: StoreAt, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create run store directory"):
        RunStore(store_at(blocker / "store"))
    s = RunStore(store_at(tmp_path / "ok"))
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.list_runs()


def test_reopen_keeps_data(store_at: StoreAt, tmp_path: Path) -> None:
    with RunStore(store_at(tmp_path)) as s:
        rid = _new(s, config={"a": 1})
        s.log_epoch(rid, 1, {"acc": float("nan")})
        s.finish_run(rid, {"acc": 0.5}, {"ckpt": "c.pt"})
    with RunStore(store_at(tmp_path)) as s:
        rec = s.get_run(rid)
        assert (rec.status, rec.config, rec.metrics, rec.artefacts) == (
            "finished",
            {"a": 1},
            {"acc": 0.5},
            {"ckpt": "c.pt"},
        )
        assert math.isnan(s.history(rid)[0]["acc"])
        rid2 = _new(s)
        assert [r.id for r in s.list_runs()] == [rid2, rid]


def _use_inherited(store: RunStore, queue) -> None:
    try:
        store.list_runs()
        queue.put("no error")
    except StoreError as e:
        queue.put(str(e))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_child_must_open_its_own_store(store: RunStore) -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_inherited, args=(store, queue))
    child.start()
    message = queue.get(timeout=30)
    child.join(timeout=30)
    assert "open a new RunStore in each process" in message
    assert store.list_runs() == []  # the parent's connection is untouched
