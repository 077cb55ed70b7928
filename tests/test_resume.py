"""Resuming an experiment from the run store, and summaries that count each seed once.

A seed is marked complete in the store when all its runs finished; ``resume`` skips exactly the
seeds completed under the same config (seeds aside), and ``kdlab summary`` keeps one run per
(role, seed) so re-runs do not inflate n or narrow the confidence interval.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from kdlab import checkpoint as ckpt
from kdlab import cli
from kdlab.config import parse_config
from kdlab.errors import ConfigError, StoreError
from kdlab.experiment import run_experiment
from kdlab.resume import config_fingerprint
from kdlab.store import RunStore
from kdlab.store.schema import SCHEMA_VERSION

CONFIG = {
    "name": "tiny",
    "seeds": [0, 1],
    "data": {"source": "digits"},
    "teacher": {"model": {"type": "mlp", "hidden": [16]}, "train": {"epochs": 2, "threads": 1}},
    "student": {
        "model": {"type": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "threads": 1},
        "train_subset": 60,
    },
}


def config(**changes):
    return parse_config({**CONFIG, **changes}, "test")


def result_fingerprint() -> str:
    return config_fingerprint(config().model_dump(mode="json"))


class Interrupt(Exception):
    pass


def stop_at(seed: int, role: str):
    def on_run(run) -> None:
        if (run.seed, run.role) == (seed, role):
            raise Interrupt  # as if the process died right after this run finished

    return on_run


# -- the store --------------------------------------------------------------------------------


def test_a_version_1_store_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    from kdlab.store.schema import _V1

    tmp_path.mkdir(exist_ok=True)
    conn = sqlite3.connect(tmp_path / "kdlab.sqlite")
    conn.executescript(_V1)
    conn.execute(
        "INSERT INTO runs (id, experiment, name, role, seed, status, created_at, config)"
        " VALUES ('r1', 'old', 'n', 'teacher', 0, 'finished', '2026-01-01', '{}')"
    )
    conn.execute("INSERT INTO history VALUES ('r1', 1, '{\"loss\": 0.5}')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with RunStore(tmp_path) as store:
        assert [r.id for r in store.list_runs()] == ["r1"]
        store.mark_seed_complete("old", "f", 0, ["r1"])
        assert [r.id for r in store.completed_seed("old", "f", 0)] == ["r1"]
        assert store.history("r1") == [{"epoch": 1, "loss": 0.5}]  # v3 rebuilt runs, kept history
        run = store.create_run(experiment="new", name="n", role="student", seed=0, config={})
        store.interrupt_run(run, "KeyboardInterrupt")  # the v3 status is accepted
        assert store.get_run(run).status == "interrupted"
    conn = sqlite3.connect(tmp_path / "kdlab.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_completed_seed_needs_every_run_finished(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        done = store.create_run(experiment="e", name="a", role="teacher", seed=0, config={})
        store.finish_run(done, {"accuracy": 0.9})
        running = store.create_run(experiment="e", name="b", role="student", seed=0, config={})
        store.mark_seed_complete("e", "f", 0, [done])
        assert [r.id for r in store.completed_seed("e", "f", 0)] == [done]
        assert store.completed_seed("e", "other config", 0) == []
        assert store.completed_seed("e", "f", 1) == []
        store.mark_seed_complete("e", "f", 0, [done, running])
        assert store.completed_seed("e", "f", 0) == []  # one of its runs never finished
        with pytest.raises(StoreError, match="no run 'nope'"):
            store.mark_seed_complete("e", "f", 0, [done, "nope"])


# -- run_experiment(resume=True) --------------------------------------------------------------


def test_resume_reuses_completed_seeds_and_the_finished_runs_of_the_interrupted_one(
    tmp_path: Path,
) -> None:
    with RunStore(tmp_path) as store:
        with pytest.raises(Interrupt):
            run_experiment(config(), store, progress=False, on_run=stop_at(1, "student"))
        first = {(r.seed, r.role): r for r in store.list_runs()}
        assert set(first) == {(0, "teacher"), (0, "student"), (0, "distilled"),
                              (1, "teacher"), (1, "student")}  # fmt: skip

        result = run_experiment(config(), store, progress=False, resume=True)
        assert result.reused_seeds == [0]
        seed0 = [r for r in result.runs if r.seed == 0]
        assert [r.role for r in seed0] == ["teacher", "student", "distilled"]
        for run in seed0:  # read back, not retrained: same ids, metrics and history
            stored = first[(0, run.role)]
            assert run.run_id == stored.id and run.model is None
            assert run.metrics == stored.metrics
            assert run.history == store.history(stored.id)
        seed1 = [r for r in result.runs if r.seed == 1]
        assert [r.role for r in seed1] == ["teacher", "student", "distilled"]
        teacher, student, distilled = seed1  # seed 1's finished runs: loaded, not retrained
        for run in (teacher, student):
            assert run.run_id == first[(1, run.role)].id
            weights = ckpt.load_state_dict(first[(1, run.role)].artefacts["model"])
            assert all(torch.equal(v, weights[k]) for k, v in run.model.state_dict().items())
        assert distilled.model is not None and (1, "distilled") not in first
        assert len(store.list_runs()) == 5 + 1
        assert store.completed_seed("tiny", result_fingerprint(), 1)[0].id == teacher.run_id

        again = run_experiment(config(seeds=[1, 0, 2]), store, progress=False, resume=True)
        assert again.reused_seeds == [1, 0]  # the seed list is not part of the config identity
        assert len(store.list_runs()) == 6 + 3


def test_a_changed_config_reuses_nothing(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run_experiment(config(seeds=[0]), store, progress=False)
        changed = {**CONFIG["student"], "train": {"epochs": 3, "threads": 1}}
        result = run_experiment(config(seeds=[0], student=changed), store, progress=False,
                                resume=True)  # fmt: skip
        assert result.reused_seeds == []
        assert len(store.list_runs()) == 6
        assert config_fingerprint(config().model_dump(mode="json")) != config_fingerprint(
            config(student=changed).model_dump(mode="json")
        )


def test_resume_without_a_store_is_rejected() -> None:
    with pytest.raises(ConfigError, match="resume reads completed seeds from a run store"):
        run_experiment(config(), None, progress=False, resume=True)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=200))
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, width=200))


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def table_rows(text: str) -> dict[str, str]:
    rows = [line.split("│") for line in text.splitlines() if line.startswith("│ ")]
    return {cells[1].strip(): cells[2].strip() for cells in rows}


def test_cli_resume_and_summary_count_each_seed_once(tmp_path: Path, wide) -> None:
    path, store = tmp_path / "tiny.yaml", tmp_path / "store"
    path.write_text(yaml.safe_dump({**CONFIG, "seeds": [0]}))
    assert invoke("run", path, "--store", store, "--no-progress").exit_code == 0
    resumed = invoke("run", path, "--store", store, "--no-progress", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Resumed: seeds 0 were complete in the store and not re-run." in resumed.stdout
    assert table_rows(resumed.stdout)["distilled"] == "1"
    rerun = invoke("run", path, "--store", store, "--no-progress")  # a plain re-run trains again
    assert rerun.exit_code == 0 and "Resumed" not in rerun.stdout

    summary = invoke("summary", "tiny", "--store", store)
    assert summary.exit_code == 0, summary.output
    assert set(table_rows(summary.stdout).values()) == {"1"}  # n = 1 seed per row, not 2
    assert "3 older finished run(s) with the same role and seed" in summary.stderr
    assert "different configs" not in summary.stderr

    path.write_text(yaml.safe_dump({**CONFIG, "seeds": [1], "teacher": {
        **CONFIG["teacher"], "train": {"epochs": 3, "threads": 1}}}))  # fmt: skip
    assert invoke("run", path, "--store", store, "--no-progress").exit_code == 0
    mixed = invoke("summary", "tiny", "--store", store)
    assert set(table_rows(mixed.stdout).values()) == {"2"}
    assert "come from 2 different configs under the name 'tiny'" in mixed.stderr
