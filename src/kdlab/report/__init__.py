"""Reports: seed statistics with confidence intervals and comparison tables."""

from kdlab.report.stats import Stat, describe, paired_difference
from kdlab.report.table import RunRow, SummaryRow, gain, markdown_table, rich_table, summarize

__all__ = [
    "RunRow",
    "Stat",
    "SummaryRow",
    "describe",
    "gain",
    "markdown_table",
    "paired_difference",
    "rich_table",
    "summarize",
]
