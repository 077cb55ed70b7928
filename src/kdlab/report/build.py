"""``kdlab report``: an experiment's finished runs → tables (Markdown, LaTeX, HTML) and figures.

Every option is checked before anything is written, so a bad key, metric or baseline leaves
no half-written report folder behind.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdlab.errors import ConfigError
from kdlab.report.document import html_document
from kdlab.report.figures import FIGURES, Plot, require_matplotlib
from kdlab.report.formats import Table, build_table, metric_format, to_latex, to_markdown
from kdlab.report.groups import (
    Group,
    LeftOut,
    build_groups,
    close_gaps,
    compare,
    default_baseline,
    load_runs,
    stored_metrics,
    unfinished_note,
)
from kdlab.report.keys import Baseline, parse_baseline, resolve_key
from kdlab.report.stats import bonferroni_note
from kdlab.store import RunStore

#: --format name → file written
FORMATS = {"md": "report.md", "latex": "report.tex", "html": "report.html"}
_ALIASES = {"markdown": "md", "tex": "latex"}


@dataclass
class ReportOptions:
    experiment: str
    by: str | None = None  # comma-separated config keys (short names or full paths)
    metric: str = "accuracy"
    baseline: str | None = None  # a role, key=value pairs, or both; default: student
    formats: str = "md,latex,html"
    out: Path | None = None  # default: report-<experiment>/
    figures: bool = True


@dataclass
class ReportData:
    experiment: str
    metric: str
    names: list[str]  # the --by keys as written
    paths: list[str]  # ... and as resolved
    groups: list[Group]
    baseline: Baseline | None
    history: Callable[[str], list[dict]]
    notes: list[str] = field(default_factory=list)


def parse_formats(text: str) -> list[str]:
    chosen = []
    for token in filter(None, (t.strip().lower() for t in text.split(","))):
        name = _ALIASES.get(token, token)
        if name not in FORMATS:
            raise ConfigError(f"--format {token!r} is not one of {', '.join(FORMATS)}")
        chosen.append(name)
    if not chosen:
        raise ConfigError(f"--format names no format; give some of {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))


def collect(store: RunStore, options: ReportOptions) -> ReportData:
    """Runs → groups with their statistics, comparisons and notes (raises on bad options)."""
    runs = load_runs(store, options.experiment)
    metrics = stored_metrics(runs)
    if options.metric not in metrics:
        raise ConfigError(
            f"unknown metric {options.metric!r}; stored metrics: {', '.join(metrics)}"
        )
    names = list(dict.fromkeys(n.strip() for n in (options.by or "").split(",") if n.strip()))
    configs = [r.config for r in runs]
    paths = [resolve_key(name, configs) for name in names]
    groups, left = build_groups(runs, paths, options.metric)
    roles = list(dict.fromkeys(g.role for g in groups))
    baseline = (
        parse_baseline(options.baseline, paths, configs, roles)
        if options.baseline
        else default_baseline(groups)
    )
    data = ReportData(options.experiment, options.metric, names, paths, groups, baseline,
                      store.history)  # fmt: skip
    data.notes += left_out_notes(left, options.metric)
    unfinished = unfinished_note(store, options.experiment, runs)
    if unfinished:
        data.notes.append(unfinished)
    if baseline is not None:
        _compare(data, baseline)
    if not close_gaps(groups):
        data.notes.append("gap closed needs teacher and student runs; none here")
    return data


def left_out_notes(left: LeftOut, metric: str) -> list[str]:
    notes = []
    if left.nonfinite:
        notes.append(f"{left.nonfinite} run(s) left out whose {metric} is NaN or infinite")
    if left.reruns:
        notes.append(f"{left.reruns} older re-run(s) of a group's seed left out; the newest counts")
    if left.mixed:
        keys = sorted(left.keys)
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        notes.append(
            f"{left.mixed} run(s) left out whose config differs from a newer run of the same "
            f"group and seed (in {shown}): group by those keys too (--by) to compare them"
        )
    return notes


def _compare(data: ReportData, baseline: Baseline) -> None:
    unmatched = compare(data.groups, baseline)
    what = baseline.describe(data.names)
    if unmatched:
        shown = ", ".join(g.label(data.names) for g in unmatched)
        data.notes.append(f"no baseline group ({what}) to pair with: {shown}")
    tested = [(g.label(data.names), g.diff) for g in data.groups if g.diff is not None]
    note = bonferroni_note(tested, baseline=f"the baseline ({what})")
    if note:
        data.notes.append(note)


def caption(data: ReportData) -> str:
    header = metric_format(data.metric)[0]
    by = "role" + "".join(f", {n}" for n in data.names)
    text = f"{data.experiment}: {header} by {by}; mean, std and 95 % CI (Student t) over seeds"
    if any(g.diff is not None for g in data.groups) and data.baseline is not None:
        text += (
            f"; Δ: paired difference to the baseline ({data.baseline.describe(data.names)}) "
            "over the seeds both have, p of the paired t-test"
        )
    return text


def draw_figures(data: ReportData, out: Path) -> tuple[list[Path], list[tuple[str, str, bytes]]]:
    """Each figure the data allow, as PNG and PDF; returns the files and the PNGs for HTML."""
    plot = Plot(data.groups, data.names, data.metric, data.history)
    written: list[Path] = []
    embedded: list[tuple[str, str, bytes]] = []
    for stem, title, draw in FIGURES:
        fig = draw(plot)
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        png = buffer.getvalue()
        (out / f"{stem}.png").write_bytes(png)
        fig.savefig(out / f"{stem}.pdf")
        written += [out / f"{stem}.png", out / f"{stem}.pdf"]
        embedded.append((stem, title, png))
    if not any(stem == "reliability" for stem, _, _ in embedded) and any(
        stem == "calibration" for stem, _, _ in embedded
    ):
        data.notes.append(
            "no reliability diagram: these runs were recorded without their reliability bins "
            "(by an older kdlab); calibration.png shows each group's ECE"
        )
    return written, embedded


def write_report(store: RunStore, options: ReportOptions) -> tuple[list[Path], list[str]]:
    """Write the report into ``options.out``; returns the files written and the notes."""
    formats = parse_formats(options.formats)
    if options.figures:
        require_matplotlib()
    data = collect(store, options)
    out = options.out or Path(f"report-{options.experiment}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        written, embedded = draw_figures(data, out) if options.figures else ([], [])
        table: Table = build_table(data.groups, data.names, data.metric, caption(data))
        table.notes = data.notes
        texts = {
            "md": lambda: to_markdown(table),
            "latex": lambda: to_latex(table),
            "html": lambda: html_document(
                f"kdlab report: {data.experiment}", table, embedded, _meta(data)
            ),
        }
        tables = [out / FORMATS[name] for name in formats]
        for name, path in zip(formats, tables, strict=True):
            path.write_text(texts[name](), encoding="utf-8")
    except OSError as e:  # a file where the folder should be, a read-only disk, no permission
        what = "is a file" if out.is_file() else (e.strerror or str(e)).lower()
        raise ConfigError(
            f"cannot write the report to {out}: {what}; give a writable folder with --out"
        ) from e
    return tables + written, data.notes


def _meta(data: ReportData) -> list[str]:
    runs = sum(len(g.runs) for g in data.groups)
    keys = ", ".join(f"{n} = {p}" for n, p in zip(data.names, data.paths, strict=True))
    lines = [f"{runs} finished runs in {len(data.groups)} groups; metric {data.metric}."]
    if keys:
        lines.append(f"Grouped by role and {keys}.")
    return lines
