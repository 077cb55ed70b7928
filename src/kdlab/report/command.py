"""The ``kdlab report`` command: its options and body. ``kdlab.cli`` registers it with its own
error handling and store option, which keeps cli.py to one line for it.

No ``from __future__ import annotations`` here: typer reads the parameters' annotations, and the
store option arrives from cli.py as an object, not a name this module could resolve.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

ExperimentArg = Annotated[str, typer.Argument(help="Experiment name (see `kdlab runs`).")]
ByOpt = Annotated[
    str | None,
    typer.Option(
        help="Config keys to group by besides the role, comma-separated: alpha,temperature "
        "(a short name is the one key path ending in it; full paths like distill.loss.1.alpha)."
    ),
]
MetricOpt = Annotated[str, typer.Option(help="The stored metric to compare (`kdlab show ID`).")]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        help="Baseline group for paired differences: a role (student), key=value pairs "
        "(temperature=1) or both (role=distilled,temperature=1); default: student."
    ),
]
FormatOpt = Annotated[
    str, typer.Option("--format", help="Tables to write, comma-separated: md, latex, html.")
]
OutOpt = Annotated[Path | None, typer.Option(help="Output folder (default: report-NAME/).")]
FiguresOpt = Annotated[
    bool,
    typer.Option(
        "--figures/--no-figures",
        help="PNG and PDF figures (matplotlib: pip install kdlab\\[plot]).",
    ),
]


def report_command(
    open_store: Callable[[Path | None], Any], store_option: Any
) -> Callable[..., None]:
    """The command function, given how cli.py opens the store and its ``--store`` option."""

    def report(
        experiment: ExperimentArg,
        by: ByOpt = None,
        metric: MetricOpt = "accuracy",
        baseline: BaselineOpt = None,
        formats: FormatOpt = "md,latex,html",
        out: OutOpt = None,
        figures: FiguresOpt = True,
        store: store_option = None,  # type: ignore[valid-type]
    ) -> None:
        """Tables (Markdown, LaTeX, HTML) and figures of an experiment's finished runs, grouped
        by role and config keys: mean, std and 95 % CI over seeds, paired differences to a
        baseline."""
        from kdlab.report.build import ReportOptions, write_report

        options = ReportOptions(experiment, by, metric, baseline, formats, out, figures)
        with open_store(store) as run_store:
            written, notes = write_report(run_store, options)
        for path in written:
            typer.echo(f"wrote {path}")
        for note in notes:
            typer.echo(f"note: {note}", err=True)

    return report
