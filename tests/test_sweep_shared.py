"""A sweep's shared student alone: trained once per seed for all the cells with the same data,
student, metrics and strictness (a grid over the loss), the very run an experiment would have
made, and paired by the report with each cell whose student settings it has."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kdlab import cli
from kdlab.config import parse_config
from kdlab.report.build import ReportOptions, collect
from kdlab.store import RunStore
from kdlab.sweep.plan import SweepOptions, plan_sweep
from test_sweep import CONFIG as SWEEP_CONFIG  # digits, tiny MLPs, 2 epochs, one thread

CONFIG: dict[str, Any] = {**copy.deepcopy(SWEEP_CONFIG), "name": "shared", "seeds": [0, 1]}
GRID = ["--grid", "distill.loss.1.temperature=1,4", "--grid", "student.train.epochs=1,2"]


def plan(*grid: str, overrides: tuple[str, ...] = ()) -> Any:
    options = SweepOptions(grid=list(grid), overrides=list(overrides))
    return plan_sweep(parse_config(copy.deepcopy(CONFIG)), "x", options)


def test_cells_share_the_student_alone_unless_its_sections_differ() -> None:
    loss_only = plan("distill.loss.1.temperature=1,2,4")
    assert len({c.student for c in loss_only.cells}) == 1 and loss_only.cells[0].student
    for cell in loss_only.cells:  # the cell runs without it; its config (and report) keep it
        assert cell.config.student.baseline and not cell.run_config.student.baseline
        assert cell.for_seed(3).student.baseline is False and cell.for_seed(3).seeds == [3]
    assert loss_only.sharing("student", loss_only.cells[0].student) == 3
    epochs = plan("student.train.epochs=1,2", "distill.loss.1.temperature=1,4")
    assert len({c.student for c in epochs.cells}) == 2  # the student's own settings differ
    assert len({c.teacher for c in epochs.cells}) == 1
    data = plan("data.test_size=100,200")  # data changes both
    assert len({c.student for c in data.cells}) == 2 and len({c.teacher for c in data.cells}) == 2
    off = plan("distill.loss.1.temperature=1,4", overrides=("student.baseline=false",))
    assert {c.student for c in off.cells} == {None}
    assert all(c.run_config is c.config for c in off.cells)


def invoke(*args: object) -> Any:
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Temperature 1, 4 × student epochs 1, 2 × seeds 0, 1: two students alone per seed."""
    folder = tmp_path_factory.mktemp("shared")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    result = invoke("sweep", path, *GRID, "--store", folder / "store")
    assert result.exit_code == 0, result.output
    return folder, result


def test_each_student_alone_trains_once_per_seed(swept) -> None:
    folder, result = swept
    lines = [line for line in result.stdout.splitlines() if line.startswith("student alone ")]
    assert len(lines) == 4
    for epochs in (1, 2):  # each labelled with the student settings its cells vary
        for seed in (0, 1):
            label = f"student alone student.train.epochs={epochs} s{seed} (shared by 2 cells): "
            assert sum(line.startswith(label + "test acc") for line in lines) == 1, lines
    with RunStore(folder / "store") as store:
        runs = store.list_runs(experiment="shared", status="finished")
    alone = [r for r in runs if r.role == "student"]
    epochs = sorted((r.config["experiment"]["student"]["train"]["epochs"], r.seed) for r in alone)
    assert epochs == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert sum(r.role == "distilled" for r in runs) == 8
    cell_lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert all("(student alone " in line for line in cell_lines)  # each cell shows its baseline


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_the_shared_student_alone_is_the_run_an_experiment_makes(swept, tmp_path: Path) -> None:
    folder, _ = swept
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))  # student epochs 2, as the cells with epochs=2
    ran = invoke("run", path, "--store", tmp_path / "own", "--no-progress")
    assert ran.exit_code == 0, ran.output
    with RunStore(tmp_path / "own") as store:
        own = {r.seed: r for r in store.list_runs(role="student")}
        own_history = {seed: untimed(store.history(r.id)) for seed, r in own.items()}
    with RunStore(folder / "store") as store:
        shared = {r.seed: r for r in store.list_runs(role="student", status="finished")
                  if r.config["experiment"]["student"]["train"]["epochs"] == 2}  # fmt: skip
        for seed, record in shared.items():  # same weights, examples and steps: same numbers
            assert record.metrics == own[seed].metrics
            assert untimed(store.history(record.id)) == own_history[seed]
    assert sorted(shared) == [0, 1]


def test_the_report_pairs_each_cell_with_its_own_student_alone(swept) -> None:
    folder, _ = swept
    with RunStore(folder / "store") as store:
        data = collect(
            store, ReportOptions("shared", by="temperature,student.train.epochs", figures=False)
        )
    students = [g for g in data.groups if g.role == "student"]
    assert sorted(str(g.values[1]) for g in students) == ["1", "2"]
    assert all(g.values[0] is None for g in students)  # it records no loss: it serves every T
    distilled = [g for g in data.groups if g.role == "distilled"]
    assert len(distilled) == 4
    for group in distilled:
        assert group.baseline is not None and group.baseline.role == "student"
        assert group.baseline.values[1] == group.values[1]  # the student alone with its epochs
        expected = {s: group.seeds[s] - group.baseline.seeds[s] for s in (0, 1)}
        assert group.diff is not None
        assert group.diff.mean == pytest.approx(sum(expected.values()) / 2, abs=1e-12)
        teacher = sum(g.stat.mean for g in data.groups if g.role == "teacher")
        student = group.baseline.stat.mean
        assert group.gap == pytest.approx((group.stat.mean - student) / (teacher - student))
    assert not any("no baseline group" in note for note in data.notes)
