"""Reports: seed statistics with confidence intervals, comparison tables, and ``kdlab report``
(tables in Markdown, LaTeX and HTML, figures) from the run store.

Names load on first use (PEP 562): ``kdlab.cli`` imports ``kdlab.report.command`` at start-up,
and that must not pull in scipy (0.7 s) or rich tables for commands that never use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time __getattr__ loads these
    from kdlab.report.build import ReportOptions, write_report
    from kdlab.report.stats import Stat, bonferroni_note, describe, paired_difference
    from kdlab.report.table import (
        RunRow,
        SummaryRow,
        gain,
        markdown_table,
        rich_table,
        summarize,
    )

_WHERE = {
    "Stat": "stats",
    "describe": "stats",
    "paired_difference": "stats",
    "bonferroni_note": "stats",
    "RunRow": "table",
    "SummaryRow": "table",
    "gain": "table",
    "markdown_table": "table",
    "rich_table": "table",
    "summarize": "table",
    "ReportOptions": "build",
    "write_report": "build",
}

__all__ = [
    "ReportOptions",
    "RunRow",
    "Stat",
    "SummaryRow",
    "bonferroni_note",
    "describe",
    "gain",
    "markdown_table",
    "paired_difference",
    "rich_table",
    "summarize",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
