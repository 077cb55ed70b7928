"""``kdlab quickstart``: teacher, student alone and distilled student on digits, in one table."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from kdlab.config import ExperimentConfig, parse_config
from kdlab.experiment import ExperimentResult, run_experiment
from kdlab.report import RunRow, gain, rich_table, summarize
from kdlab.store import RunStore

#: The scarce-label regime: the student sees this many labelled images (stratified).
FEW_LABELS = 60
FEW_LABEL_EPOCHS = 300  # one batch per epoch at 60 images: more epochs for the same steps


def quickstart_configs(seeds: list[int] | None = None) -> tuple[ExperimentConfig, ExperimentConfig]:
    """The two experiments of the quickstart: all training labels, and 60 labels."""
    text = resources.files("kdlab").joinpath("configs/quickstart.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    if seeds is not None:
        data["seeds"] = seeds
    full = parse_config(data, "quickstart.yaml")
    few = full.model_copy(deep=True)
    few.name = f"{full.name}-{FEW_LABELS}-labels"
    few.student.train_subset = FEW_LABELS
    few.student.train.epochs = FEW_LABEL_EPOCHS
    return full, few


def run_quickstart(
    store: RunStore | None, seeds: list[int] | None = None, progress: bool = True
) -> tuple[list[RunRow], ExperimentResult, ExperimentResult]:
    full_cfg, few_cfg = quickstart_configs(seeds)
    full = run_experiment(full_cfg, store, progress=progress)
    few = run_experiment(few_cfg, store, progress=progress, teachers=full.teachers)
    labels = {
        ("teacher", full_cfg.name): "teacher",
        ("student", full_cfg.name): "student alone, all labels",
        ("distilled", full_cfg.name): "distilled, all labels",
        ("student", few_cfg.name): f"student alone, {FEW_LABELS} labels",
        ("distilled", few_cfg.name): f"distilled, {FEW_LABELS} labels",
    }
    rows = [
        RunRow(labels[(run.role, result.name)], run.seed, run.metrics)
        for result in (full, few)
        for run in result.runs
    ]
    return rows, full, few


def print_quickstart(rows: list[RunRow], console: Any) -> None:
    title = "kdlab quickstart — digits, mean ± std over seeds (test set of 500 images)"
    console.print(rich_table(summarize(rows), title=title))
    for regime in ("all labels", f"{FEW_LABELS} labels"):
        g = gain(rows, f"student alone, {regime}", f"distilled, {regime}")
        if g.n:
            ci = f" (95% CI ± {100 * g.half_width:.2f})" if g.n > 1 else ""
            console.print(
                f"KD gain in test accuracy, {regime}: {100 * g.mean:+.2f} points"
                f"{ci}, paired over {g.n} seeds"
            )
