"""The report table, and its Markdown, LaTeX (booktabs) and HTML renderings."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdlab.report.groups import Group
from kdlab.report.keys import show_value
from kdlab.report.stats import Stat
from kdlab.report.table import COLUMNS


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str  # one letter per column: l (text) or r (numbers)
    caption: str
    notes: list[str] = field(default_factory=list)


def metric_format(metric: str) -> tuple[str, float, int]:
    """(column header, scale, digits): the summary table's for known metrics (accuracy in %)."""
    for key, header, scale, digits in COLUMNS:
        if key == metric:
            return header, scale, digits
    return metric, 1.0, 4


def _interval(stat: Stat | None, scale: float, digits: int, sign: str = "") -> str:
    if stat is None or stat.n < 2:
        return "—"
    low, high = (scale * x for x in stat.interval)
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _cells(group: Group, scale: float, digits: int) -> list[str]:
    s = group.stat
    mean = f"{scale * s.mean:.{digits}f}"
    std = f"{scale * s.std:.{digits}f}" if s.n > 1 else "—"
    return [str(s.n), mean, std, _interval(s, scale, digits)]


def _comparison(group: Group, scale: float, digits: int) -> list[str]:
    d = group.diff
    if d is None or d.n == 0:
        return ["—"] * 4
    p = d.p_value
    return [f"{scale * d.mean:+.{digits}f}", _interval(d, scale, digits, "+"), str(d.n),
            "—" if math.isnan(p) else f"{p:.3g}"]  # fmt: skip


def build_table(groups: Sequence[Group], names: Sequence[str], metric: str, caption: str) -> Table:
    """One row per group: mean, std, 95 % CI; the paired difference to its baseline (95 % CI,
    pairs, p of the paired t-test) when any group has one; the gap closed when known."""
    header_metric, scale, digits = metric_format(metric)
    compared = any(g.diff is not None for g in groups)
    gaps = any(not math.isnan(g.gap) for g in groups)
    header = ["role", *names, "n", header_metric, "std", "95 % CI"]
    if compared:
        header += ["Δ vs baseline", "95 % CI of Δ", "pairs", "p"]
    if gaps:
        header += ["gap closed %"]
    rows = []
    for g in groups:
        row = [g.role, *(show_value(v) for v in g.values), *_cells(g, scale, digits)]
        if compared:
            row += _comparison(g, scale, digits)
        if gaps:
            row += ["—" if math.isnan(g.gap) else f"{100 * g.gap:.1f}"]
        rows.append(row)
    align = "l" * (1 + len(names)) + "r" * (len(header) - 1 - len(names))
    return Table(header, rows, align, caption)


# -- Markdown -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    lines = [f"**{_md_cell(table.caption)}**", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in table.align) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"- {_md_cell(n)}" for n in table.notes]
    return "\n".join(lines).rstrip() + "\n"


# -- LaTeX ----------------------------------------------------------------------------------------

#: One replacement per character, so a replacement is never escaped again.
_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "−": "$-$", "‖": r"$\|$", "Φ": r"$\Phi$",
    "γ": r"$\gamma$", "α": r"$\alpha$", "<": r"\textless{}", ">": r"\textgreater{}",
}  # fmt: skip


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX.get(ch, ch) for ch in text)
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", escaped)  # a minus sign, not a hyphen


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\begin{{tabular}}{{{table.align}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if table.notes:
        notes = r" \\ ".join(latex_escape(n) for n in table.notes)
        lines.append(rf"\par\smallskip{{\footnotesize {notes}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# -- HTML -----------------------------------------------------------------------------------------


def to_html_table(table: Table) -> str:
    def cell(tag: str, text: str, align: str) -> str:
        cls = ' class="num"' if align == "r" else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, a) for h, a in zip(table.header, table.align, strict=True))
    body = "\n".join(
        "<tr>" + "".join(cell("td", c, a) for c, a in zip(row, table.align, strict=True)) + "</tr>"
        for row in table.rows
    )
    return (
        f'<table id="results">\n<caption>{html.escape(table.caption)}</caption>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )
