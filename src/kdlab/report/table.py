"""The comparison table: one row per model (teacher, student alone, distilled …) over seeds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.table import Table

from kdlab.report.stats import Stat, describe, paired_difference

#: (metric key, column header, scale, digits)
COLUMNS: list[tuple[str, str, float, int]] = [
    ("accuracy", "test acc %", 100.0, 2),
    ("agreement", "agree %", 100.0, 2),
    ("kl_to_teacher", "KL(T‖S)", 1.0, 3),
    ("ece", "ECE %", 100.0, 2),
    ("distill_error", "Φ_γ", 1.0, 3),
]


@dataclass
class RunRow:
    """What a table needs of one run (a stored run or an in-memory result)."""

    label: str
    seed: int
    metrics: dict[str, float]


@dataclass
class SummaryRow:
    label: str
    n: int
    stats: dict[str, Stat]


def summarize(runs: Iterable[RunRow], columns: Sequence[str] | None = None) -> list[SummaryRow]:
    """Aggregate runs by label, in first-seen order, over seeds."""
    keys = list(columns or [c[0] for c in COLUMNS])
    groups: dict[str, list[RunRow]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return [
        SummaryRow(
            label,
            len(rows),
            {k: describe([r.metrics[k] for r in rows if k in r.metrics]) for k in keys},
        )
        for label, rows in groups.items()
    ]


def gain(runs: Sequence[RunRow], base: str, other: str, metric: str = "accuracy") -> Stat:
    """Paired (by seed) difference other − base of a metric."""
    a = {r.seed: r.metrics[metric] for r in runs if r.label == base and metric in r.metrics}
    b = {r.seed: r.metrics[metric] for r in runs if r.label == other and metric in r.metrics}
    return paired_difference(a, b)


def rich_table(rows: Sequence[SummaryRow], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    table.add_column("seeds", justify="right")
    for _, header, _, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [
            row.stats[k].format(scale, digits) if k in row.stats else "—"
            for k, _, scale, digits in COLUMNS
        ]
        table.add_row(row.label, str(row.n), *cells)
    return table


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    header = ["model", "seeds", *[h for _, h, _, _ in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.stats[k].format(scale, digits) if k in row.stats else "—"
            for k, _, scale, digits in COLUMNS
        ]
        lines.append("| " + " | ".join([row.label, str(row.n), *cells]) + " |")
    return "\n".join(lines)
