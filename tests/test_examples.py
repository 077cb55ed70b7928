"""Every Fashion-MNIST example config runs end to end, shrunk to a smoke run on digits.

The files are the ones users run (`kdlab run examples/fashion_mnist_*.yaml`); here only the data
(8×8 digits instead of 28×28 Fashion-MNIST), the seeds and the epochs change, so every tap path,
adapter, scheme option and stage of each file is exercised in CI without the dataset.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kdlab.config import parse_config
from kdlab.experiment import run_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(EXAMPLES.glob("fashion_mnist_*.yaml"))


def on_digits_for_one_epoch(path: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    raw["data"], raw["seeds"] = {"source": "digits", "val_fraction": 0.1}, [0]
    trains = [raw["student"]["train"], raw["distill"].get("train") or {}]
    if raw.get("teacher"):
        trains.append(raw["teacher"]["train"])
        if "use_epoch" in raw["teacher"]:
            raw["teacher"]["use_epoch"] = 1
    trains += [stage.setdefault("train", {}) for stage in raw["distill"].get("stages", [])]
    for train in trains:
        train.update(epochs=1, threads=1)
    options = raw["distill"].get("options") or {}
    for key in ("pretrain_epochs", "early_epochs"):
        if key in options:
            options[key] = 1
    for stage in [raw["distill"], *raw["distill"].get("stages", [])]:
        for term in stage.get("loss") or []:
            if "warmup" in term:  # DKD's warm-up may not outlast the one epoch
                term["warmup"] = min(term["warmup"], 1)
    return raw


def test_every_digits_example_has_a_fashion_mnist_version() -> None:
    digits = {p.stem.removeprefix("digits_") for p in EXAMPLES.glob("digits_*.yaml")}
    fashion = {p.stem.removeprefix("fashion_mnist_") for p in FILES}
    assert len(digits) >= 10 and digits <= fashion, digits - fashion


@pytest.mark.parametrize("path", FILES, ids=[p.stem.removeprefix("fashion_mnist_") for p in FILES])
def test_example_runs_on_digits_with_finite_terms_and_metrics(path: Path) -> None:
    raw = on_digits_for_one_epoch(path)
    result = run_experiment(parse_config(raw, str(path)), progress=False)
    roles = [run.role for run in result.runs]
    models = [r for r in roles if r != "teacher_member"]  # ensemble members share a role
    assert len(set(models)) == len(models)  # otherwise one run per role and seed
    if raw["student"].get("baseline", True):
        assert "student" in roles
    assert any(r.startswith(("distilled", "gen")) for r in roles), roles
    for run in result.runs:
        assert 0.0 <= run.metrics["accuracy"] <= 1.0
        assert all(math.isfinite(v) for row in run.history for v in row.values()), run.role
    stages = raw["distill"].get("stages") or [{"loss": raw["distill"].get("loss") or []}]
    distilled = [r for r in result.runs if r.role.startswith("distilled")]
    for run, stage in zip(distilled, stages, strict=False):
        logged = run.history[-1]  # keys are "<optimizer>.<term>" when a scheme has several
        for term in stage["loss"]:  # each configured term ran and was logged
            key = term.get("name", term["type"])
            assert any(k == key or k.endswith(f".{key}") for k in logged), (key, logged)
