"""``kdlab report`` on the stores users really have: an unwritable ``--out``, cells that failed,
a diverged run's NaN, an experiment with no finished run, keys that only some runs record."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.store import RunStore

EXPERIMENT = "inputs"


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns off a terminal; an error must read as one line."""
    monkeypatch.setattr(terminal, "err_console", Console(stderr=True, width=500))


def config(weight: float) -> dict:
    return {"distill": {"loss": [{"type": "ce", "weight": 0.1},
                                 {"type": "soft_target", "weight": weight}]}}  # fmt: skip


def add(store: RunStore, role: str, seed: int, cfg: dict, accuracy: float | None) -> None:
    """A finished run with ``accuracy``, or a failed one (None)."""
    run = store.create_run(experiment=EXPERIMENT, name=f"{role} s{seed}", role=role, seed=seed,
                           config={"experiment": cfg})  # fmt: skip
    if accuracy is None:
        store.fail_run(run, "NonFiniteLossError: the loss is nan")
    else:
        store.finish_run(run, {"accuracy": accuracy})


def report(store: Path, out: Path, *args: str):
    given = ["--store", store, "--out", out, "--format", "md", "--no-figures", *args]
    return CliRunner().invoke(cli.app, ["report", EXPERIMENT, *map(str, given)])


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Seeds 0, 1: a teacher (no loss keys), the student alone, distilled at weight 0.9 and 0.5;
    weight 1e38 failed on both seeds; weight 0.5's seed-1 run diverged to NaN."""
    with RunStore(tmp_path / "store") as runs:
        for seed in (0, 1):
            add(runs, "teacher", seed, {"teacher": {"epochs": 2}}, 0.95)
            add(runs, "student", seed, {"student": {"epochs": 2}}, 0.80)
            add(runs, "distilled", seed, config(0.9), 0.85 + seed / 100)
            add(runs, "distilled", seed, config(0.5), float("nan") if seed else 0.84)
            add(runs, "distilled", seed, config(1e38), None)
        add(runs, "distilled", 0, config(0.9), None)  # failed once, then finished: not missing
    return tmp_path / "store"


def test_failed_cells_and_nan_runs_are_named_not_silently_dropped(store: Path, tmp_path) -> None:
    result = report(store, tmp_path / "out", "--by", "distill.loss.1.weight")
    assert result.exit_code == 0, result.output
    notes = " ".join(result.stderr.split())
    assert "2 failed run(s) without a finished re-run are not in the report" in notes
    assert "kdlab runs --experiment inputs --status failed" in notes
    assert "1 run(s) left out whose accuracy is NaN or infinite" in notes
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| distilled | 0.5 " in table and "1e+38" not in table


def test_an_experiment_without_finished_runs_says_what_it_has(tmp_path: Path) -> None:
    with RunStore(tmp_path / "store") as runs:
        add(runs, "distilled", 0, config(1e38), None)
    result = report(tmp_path / "store", tmp_path / "out")
    assert result.exit_code == 2
    assert "experiment 'inputs' has no finished runs yet (1 failed); see why with `kdlab runs " \
           "--experiment inputs --status failed`" in " ".join(result.stderr.split())  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_an_ambiguous_key_suggests_the_one_that_varies(store: Path, tmp_path: Path) -> None:
    # The teacher and the student alone record no loss: that must not make loss.0.weight vary.
    result = report(store, tmp_path / "out", "--by", "weight")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "matches distill.loss.0.weight, distill.loss.1.weight (varies)" in message
    assert "e.g. --by distill.loss.1.weight" in message


@pytest.mark.parametrize(
    ("where", "problem"),
    [("file", "is a file"), ("file/sub", "not a directory")],
)
def test_an_unwritable_out_is_one_line(store: Path, tmp_path: Path, where, problem) -> None:
    (tmp_path / "file").write_text("a user's file, kept as it is")
    result = report(store, tmp_path / where)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"cannot write the report to {tmp_path / where}: {problem}; give a writable folder " \
           "with --out" in " ".join(result.stderr.split())  # fmt: skip
    assert (tmp_path / "file").read_text() == "a user's file, kept as it is"
