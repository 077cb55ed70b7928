"""Reliability bins: computed against an explicit float64 loop, kept by the store (both backends)
beside the metrics, pooled over seeds by the report exactly as if the seeds' test sets were one,
and a reliability diagram drawn from them (a note instead for runs recorded without bins)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdlab import cli
from kdlab.data import load_dataset
from kdlab.errors import StoreError
from kdlab.metrics import expected_calibration_error, reliability_bins
from kdlab.report.figures import pooled_bins, pooled_ece
from kdlab.report.groups import ReportRun
from kdlab.store import RunStore
from pg_server import (  # noqa: F401  (fixtures: pytest finds them by their name= here)
    StoreAt,
    pg_admin_fixture,
    pg_database_fixture,
    store_at_fixture,
)
from test_report import TINY  # teacher, student alone, distilled; 2 seeds of digits


def loop_bins(logits: torch.Tensor, targets: torch.Tensor, n_bins: int) -> dict[str, list[float]]:
    """The bins one sample at a time in Python floats: bin b holds confidence in (b/n, (b+1)/n]."""
    count, conf, correct = [0.0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for row, y in zip(logits.double().tolist(), targets.tolist(), strict=True):
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        probs = [e / sum(exps) for e in exps]
        c = max(probs)
        b = min(max(math.ceil(c * n_bins) - 1, 0), n_bins - 1)
        count[b] += 1
        conf[b] += c
        correct[b] += float(probs.index(c) == y)

    def mean(sums: list[float]) -> list[float]:
        return [s / n if n else 0.0 for s, n in zip(sums, count, strict=True)]

    return {"count": count, "confidence": mean(conf), "accuracy": mean(correct)}


def sample(seed: int, n: int = 400, classes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * torch.rand(n, 1, generator=gen) * 6
    targets = torch.randint(0, classes, (n,), generator=gen)
    hits = torch.rand(n, generator=gen) < 0.6  # a classifier that is right more often than chance
    targets[hits] = logits[hits].argmax(-1)
    return logits, targets


def test_bins_match_an_explicit_loop_and_give_the_ece() -> None:
    logits, targets = sample(0)
    logits[0] = torch.tensor([100.0, 0, 0, 0, 0, 0, 0])  # confidence 1.0: the last bin
    bins = reliability_bins(logits, targets, 10)
    expected = loop_bins(logits, targets, 10)
    assert bins["count"] == expected["count"] and sum(bins["count"]) == 400
    for key in ("confidence", "accuracy"):
        assert bins[key] == pytest.approx(expected[key], abs=1e-12)
    assert bins["count"][0] == 0 and bins["confidence"][0] == 0.0  # no confidence ≤ 1/10 of 7
    assert pooled_ece(bins) == pytest.approx(expected_calibration_error(logits, targets, 10),
                                             abs=1e-12)  # fmt: skip


def report_run(seed: int, bins: dict | None) -> ReportRun:
    return ReportRun(f"r{seed}", "distilled", seed, {}, {}, bins)


def test_pooling_seeds_equals_the_bins_of_their_joined_test_sets() -> None:
    parts = [sample(seed, n) for seed, n in ((1, 300), (2, 500), (3, 80))]
    runs = [report_run(i, reliability_bins(x, y, 15)) for i, (x, y) in enumerate(parts)]
    runs.append(report_run(9, None))  # a run recorded without bins is left out, not counted
    joined_x = torch.cat([x for x, _ in parts])
    joined_y = torch.cat([y for _, y in parts])
    pooled = pooled_bins(runs)
    assert pooled is not None
    whole = reliability_bins(joined_x, joined_y, 15)
    assert pooled["count"] == whole["count"]
    for key in ("confidence", "accuracy"):
        assert pooled[key] == pytest.approx(whole[key], abs=1e-12)
    assert pooled_ece(pooled) == pytest.approx(
        expected_calibration_error(joined_x, joined_y, 15), abs=1e-12
    )
    other = report_run(5, reliability_bins(*parts[0], 10))
    assert pooled_bins([runs[0], other]) is None  # 15 and 10 bins cannot pool
    assert pooled_bins([report_run(0, None)]) is None


BINS = {"count": [3, 0, 5], "confidence": [0.2, 0.0, 0.9], "accuracy": [0.0, 0.0, 0.8]}


@pytest.fixture
def store(store_at: StoreAt, tmp_path: Path):
    with RunStore(store_at(tmp_path / "store")) as s:
        yield s


def _running(store: RunStore) -> str:
    return store.create_run(experiment="e", name="n", role="student", seed=0, config={})


def test_the_store_keeps_the_bins_beside_the_metrics(store: RunStore) -> None:
    run = _running(store)
    store.finish_run(run, {"accuracy": 0.5, "ece": 0.1}, calibration=BINS)
    record = store.get_run(run)
    assert record.metrics == {"accuracy": 0.5, "ece": 0.1}  # the bins are not a metric
    assert record.calibration == {k: [float(v) for v in vs] for k, vs in BINS.items()}
    assert store.list_runs(experiment="e")[0].calibration == record.calibration
    plain = _running(store)
    store.finish_run(plain, {"accuracy": 0.4})
    assert store.get_run(plain).calibration is None


@pytest.mark.parametrize(
    ("bins", "problem"),
    [
        ({"count": [1], "confidence": [0.5]}, r"keys \['confidence', 'count'\] are not"),
        ({**BINS, "count": [1, 2]}, "not lists of one length"),
        ({**BINS, "accuracy": "0.1,0.2,0.3"}, "not lists of one length"),
        ({**BINS, "count": [1, -2, 3]}, "not a non-negative number"),
        ({**BINS, "confidence": [0.1, None, 0.3]}, "not a non-negative number"),
    ],
    ids=["keys", "lengths", "text", "negative", "none"],
)
def test_malformed_bins_are_refused_and_the_run_stays_open(
    store: RunStore, bins: dict, problem: str
) -> None:
    run = _running(store)
    with pytest.raises(StoreError, match=f"cannot store reliability bins: .*{problem}"):
        store.finish_run(run, {"accuracy": 0.5}, calibration=bins)
    assert store.get_run(run).status == "running"  # nothing half-written: it can still finish
    store.finish_run(run, {"accuracy": 0.5}, calibration=BINS)
    assert store.get_run(run).status == "finished"


def test_a_metric_may_not_take_the_bins_name(store: RunStore) -> None:
    run = _running(store)
    with pytest.raises(StoreError, match="metric name 'calibration' is reserved"):
        store.finish_run(run, {"calibration": 1.0})


def test_damaged_stored_bins_read_as_none_with_the_metrics_intact(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s") as store:
        run = _running(store)
        store.finish_run(run, {"accuracy": 0.5}, calibration=BINS)
    metrics = json.dumps({"accuracy": 0.5, "calibration": {"count": "oops"}})
    with sqlite3.connect(tmp_path / "s" / "kdlab.sqlite") as conn:
        conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", (metrics, run))
    with RunStore(tmp_path / "s") as store:
        record = store.get_run(run)
    assert record.metrics == {"accuracy": 0.5} and record.calibration is None


def test_a_real_run_records_bins_and_the_report_draws_the_diagram(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    (tmp_path / "tiny.yaml").write_text(TINY)
    ran = runner.invoke(cli.app, ["run", str(tmp_path / "tiny.yaml"), "--store",
                                  str(tmp_path / "s"), "--no-progress"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    with RunStore(tmp_path / "s") as store:
        runs = store.list_runs(experiment="tiny_real", status="finished")
    assert len(runs) == 6  # teacher, student alone, distilled × 2 seeds
    for run in runs:  # 15 bins (the default), every test sample counted once, the run's own ECE
        assert run.calibration is not None and len(run.calibration["count"]) == 15
        assert sum(run.calibration["count"]) == len(load_dataset("digits").test)
        assert pooled_ece(run.calibration) == pytest.approx(run.metrics["ece"], abs=1e-9)
    result = runner.invoke(cli.app, ["report", "tiny_real", "--store", str(tmp_path / "s"),
                                     "--out", str(tmp_path / "out"), "--format", "md"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 5000
    assert "no reliability diagram" not in result.stderr


def test_runs_without_bins_get_the_ece_chart_and_a_note(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with RunStore(tmp_path / "s") as store:
        for seed in (0, 1):
            run = store.create_run(experiment="old", name="s", role="student", seed=seed,
                                   config={})  # fmt: skip
            store.finish_run(run, {"accuracy": 0.8, "ece": 0.05})  # as kdlab did before bins
    args = ["report", "old", "--store", tmp_path / "s", "--out", tmp_path / "out", "--format", "md"]
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "calibration.png" in names and "reliability.png" not in names
    assert "no reliability diagram: these runs were recorded without their reliability bins" in (
        " ".join(result.stderr.split())
    )
