"""The report's figures (matplotlib, imported only here and only when a figure is drawn).

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no global backend or
figure state changes in the process that calls kdlab. Each figure function returns None where
the data do not allow it (a heatmap needs two ``--by`` keys, "gap closed" a teacher and a
student, …).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdlab.errors import KdlabError
from kdlab.report.formats import metric_format
from kdlab.report.groups import STUDENT, TEACHER, Group, ReportRun
from kdlab.report.keys import is_number, show_value, sort_key
from kdlab.report.stats import describe

MAX_CURVES = 12  # more lines than this in one plot are unreadable


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise KdlabError(
            "the report's figures need matplotlib: pip install kdlab[plot] (or pass --no-figures)"
        ) from e


@dataclass
class Plot:
    """What every figure reads."""

    groups: list[Group]
    names: list[str]
    metric: str
    history: Callable[[str], list[dict]]

    @property
    def main_role(self) -> str:
        """The role the figures follow: the distilled student, else the first treatment."""
        roles = [g.role for g in self.groups]
        treated = [r for r in roles if r not in (TEACHER, STUDENT)]
        return "distilled" if "distilled" in roles else (treated or roles)[0]

    def main(self) -> list[Group]:
        return [g for g in self.groups if g.role == self.main_role]

    @property
    def axis_label(self) -> str:
        return metric_format(self.metric)[0]

    @property
    def scale(self) -> float:
        return metric_format(self.metric)[1]


def _new(width: float = 6.4, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _positions(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """x positions of sorted values: the numbers themselves, or 0, 1, … for text and for
    numbers that include ±inf (an axis cannot place α = ∞)."""
    if all(is_number(v) and math.isfinite(float(v)) for v in values):
        return [float(v) for v in values], None
    return list(range(len(values))), [show_value(v) for v in values]


def metric_lines(plot: Plot) -> Any | None:
    """The metric against the first --by key, one line per value of the others, 95 % CI bands,
    the teacher's and student's means as dashed references."""
    groups = plot.main()
    xs_all = sorted({show_value(g.values[0]): g.values[0] for g in groups if g.values}.values(),
                    key=sort_key)  # fmt: skip
    if len(xs_all) < 2:
        return None
    positions, ticks = _positions(xs_all)
    where = {show_value(v): p for v, p in zip(xs_all, positions, strict=True)}
    fig, ax = _new()
    lines: dict[tuple[str, ...], list[Group]] = {}
    for g in groups:
        lines.setdefault(tuple(show_value(v) for v in g.values[1:]), []).append(g)
    for key, members in lines.items():
        members.sort(key=lambda g: sort_key(g.values[0]))
        x = [where[show_value(g.values[0])] for g in members]
        y = [plot.scale * g.stat.mean for g in members]
        w = [plot.scale * (g.stat.half_width if g.stat.n > 1 else 0.0) for g in members]
        label = " ".join(f"{n}={v}" for n, v in zip(plot.names[1:], key, strict=True))
        (line,) = ax.plot(x, y, marker="o", label=label or plot.main_role)
        ax.fill_between(x, [a - b for a, b in zip(y, w, strict=True)],
                        [a + b for a, b in zip(y, w, strict=True)],
                        color=line.get_color(), alpha=0.2)  # fmt: skip
    for role, style in ((TEACHER, ":"), (STUDENT, "--")):
        xs = [x for g in plot.groups if g.role == role for x in g.seeds.values()]
        if xs:
            ax.axhline(plot.scale * sum(xs) / len(xs), color="grey", linestyle=style, label=role)
    if ticks is None and min(positions) > 0 and max(positions) >= 8 * min(positions):
        ax.set_xscale("log", base=2)  # temperatures 1, 2, 4, 8 …: equal steps on a log axis
    ax.set_xticks(positions, ticks or [show_value(v) for v in xs_all])
    ax.set_xlabel(plot.names[0])
    ax.set_ylabel(plot.axis_label)
    ax.set_title(f"{plot.axis_label} vs {plot.names[0]} ({plot.main_role}, 95 % CI bands)")
    ax.legend(fontsize="small")
    return fig


def heatmap(plot: Plot) -> Any | None:
    """Mean of the main role over the first two --by keys (averaged over any further keys)."""
    if len(plot.names) < 2:
        return None
    groups = plot.main()
    cols = sorted({show_value(g.values[0]): g.values[0] for g in groups}.values(), key=sort_key)
    rows = sorted({show_value(g.values[1]): g.values[1] for g in groups}.values(), key=sort_key)
    if len(cols) * len(rows) < 2:
        return None
    cells: dict[tuple[str, str], list[float]] = {}
    for g in groups:
        cells.setdefault((show_value(g.values[1]), show_value(g.values[0])), []).append(g.stat.mean)
    grid = [[plot.scale * sum(v) / len(v) if (v := cells.get((show_value(r), show_value(c))))
             else math.nan for c in cols] for r in rows]  # fmt: skip
    fig, ax = _new(1.6 + 0.9 * len(cols), 1.4 + 0.6 * len(rows))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=plot.axis_label)
    ax.set_xticks(range(len(cols)), [show_value(c) for c in cols])
    ax.set_yticks(range(len(rows)), [show_value(r) for r in rows])
    ax.set_xlabel(plot.names[0])
    ax.set_ylabel(plot.names[1])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="white")
    ax.set_title(f"{plot.main_role}: mean {plot.axis_label}")
    return fig


def gap_closed(plot: Plot) -> Any | None:
    """(distilled − student) / (teacher − student) per group, in % of the gap."""
    groups = [g for g in plot.groups if not math.isnan(g.gap)]
    if not groups:
        return None
    fig, ax = _new(6.4, 1.2 + 0.35 * len(groups))
    labels = [g.label(plot.names) for g in groups]
    ax.barh(range(len(groups)), [100 * g.gap for g in groups], color="tab:green")
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.axvline(100, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"gap closed % of (teacher − student) in {plot.axis_label}")
    ax.set_title("Gap closed: 0 = student alone, 100 = teacher")
    return fig


def _curve_key(rows: list[dict], metric: str) -> str | None:
    keys = {k for row in rows for k in row}
    for key in (f"val_{metric}", "val_accuracy", "acc", "loss"):
        if key in keys:
            return key
    return None


def learning_curves(plot: Plot) -> Any | None:
    """A history metric per epoch, mean over each group's seeds (validation where recorded)."""
    groups = (plot.main() + [g for g in plot.groups if g.role != plot.main_role])[:MAX_CURVES]
    histories = {r.id: plot.history(r.id) for g in groups for r in g.runs}
    rows = [row for h in histories.values() for row in h]
    key = _curve_key(rows, plot.metric)
    if key is None:
        return None
    fig, ax = _new()
    for g in groups:
        by_epoch: dict[int, list[float]] = {}
        for run in g.runs:
            for row in histories[run.id]:
                if isinstance(row.get(key), (int, float)):
                    by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
        if by_epoch:
            epochs = sorted(by_epoch)
            ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
                    label=g.label(plot.names))  # fmt: skip
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(key)
    ax.set_title(f"Learning curves: {key}, mean over seeds")
    ax.legend(fontsize="x-small")
    return fig


def pooled_bins(runs: Sequence[ReportRun]) -> dict[str, list[float]] | None:
    """The reliability bins of a group's seeds pooled into one (counts add; confidence and
    accuracy are count-weighted means); None when no run has bins or their bin counts differ."""
    tables = [r.calibration for r in runs if r.calibration is not None]
    if not tables or len({len(t["count"]) for t in tables}) != 1:
        return None
    count = [sum(t["count"][b] for t in tables) for b in range(len(tables[0]["count"]))]
    pooled = {"count": count}
    for key in ("confidence", "accuracy"):
        pooled[key] = [sum(t["count"][b] * t[key][b] for t in tables) / n if n else 0.0
                       for b, n in enumerate(count)]  # fmt: skip
    return pooled


def pooled_ece(bins: dict[str, list[float]]) -> float:
    """Σ_b |B_b|/n · |acc_b − conf_b| of pooled bins (the ECE of all the seeds' test samples)."""
    total = sum(bins["count"])
    gaps = zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
    return sum(n * abs(a - c) for n, a, c in gaps) / total if total else 0.0


def reliability(plot: Plot) -> Any | None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, each group's
    seeds pooled, the diagonal for perfect calibration; below, where the samples fall."""
    ordered = [g for g in plot.groups if g.role in (TEACHER, STUDENT)] + plot.main()
    curves = [(g, b) for g in ordered[:MAX_CURVES] if (b := pooled_bins(g.runs)) is not None]
    if not curves:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for g, bins in curves:
        kept = [b for b, n in enumerate(bins["count"]) if n > 0]
        label = f"{g.label(plot.names)} (ECE {100 * pooled_ece(bins):.2f} %)"
        x, y = ([bins[key][b] for b in kept] for key in ("confidence", "accuracy"))
        (line,) = top.plot(x, y, marker="o", label=label)
        total, size = sum(bins["count"]), len(bins["count"])
        share = [100 * n / total for n in bins["count"]]
        bottom.stairs(share, [b / size for b in range(size + 1)], color=line.get_color())
    top.set_ylabel("accuracy in the bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title("Reliability diagram (ECE bins; each group's seeds pooled)")
    top.legend(fontsize="x-small")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("% of samples")
    return fig


def calibration(plot: Plot) -> Any | None:
    """ECE per group, mean and 95 % CI over seeds (each run's own ECE, as in the table)."""
    stats = [(g, describe([r.metrics["ece"] for r in g.runs if "ece" in r.metrics]))
             for g in plot.groups]  # fmt: skip
    stats = [(g, s) for g, s in stats if s.n]
    if not stats:
        return None
    fig, ax = _new(6.4, 1.2 + 0.35 * len(stats))
    widths = [100 * (s.half_width if s.n > 1 else 0.0) for _, s in stats]
    ax.barh(range(len(stats)), [100 * s.mean for _, s in stats], xerr=widths, color="tab:orange")
    ax.set_yticks(range(len(stats)), [g.label(plot.names) for g, _ in stats])
    ax.invert_yaxis()
    ax.set_xlabel("ECE %, mean and 95 % CI over seeds")
    ax.set_title("Expected calibration error")
    return fig


def agreement_scatter(plot: Plot) -> Any | None:
    """Each run's top-1 agreement with the teacher against its metric, one colour per group."""
    if plot.metric == "agreement":
        return None
    groups = [g for g in plot.groups if any("agreement" in r.metrics for r in g.runs)]
    if not groups:
        return None
    fig, ax = _new()
    for g in groups[:MAX_CURVES]:
        runs = [r for r in g.runs if "agreement" in r.metrics]
        x = [100 * r.metrics["agreement"] for r in runs]
        y = [plot.scale * r.metrics[plot.metric] for r in runs]
        ax.scatter(x, y, label=g.label(plot.names))
    ax.set_xlabel("agreement with the teacher %")
    ax.set_ylabel(plot.axis_label)
    ax.set_title(f"Agreement vs {plot.axis_label} (one point per run)")
    ax.legend(fontsize="x-small")
    return fig


#: (file stem, caption, drawing function), in the report's order.
FIGURES: list[tuple[str, str, Callable[[Plot], Any | None]]] = [
    (
        "metric_lines",
        "Metric vs the first --by key, one line per value of the second",
        metric_lines,
    ),
    ("heatmap", "Heatmap over the first two --by keys", heatmap),
    ("gap_closed", "Gap closed: (distilled − student) / (teacher − student)", gap_closed),
    ("learning_curves", "Learning curves from the stored per-epoch history", learning_curves),
    ("reliability", "Reliability diagram: accuracy vs confidence, seeds pooled", reliability),
    ("calibration", "Expected calibration error per group, 95 % CI over seeds", calibration),
    ("agreement", "Agreement with the teacher vs the metric", agreement_scatter),
]
