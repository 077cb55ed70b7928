"""The ``kdlab sweep`` command: its options and body. ``kdlab.cli`` registers it with its own
error handling, ``--store`` option and overrides argument, which keeps cli.py to one line for it
(the pattern of ``kdlab report``). In the interface layer: it prints, and handles Ctrl-C/SIGTERM.

No ``from __future__ import annotations`` here: typer reads the parameters' annotations, and two
of them arrive from cli.py as objects, not names this module could resolve.
"""

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.")]
GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        show_default=False,
        help="key.path=v1,v2,...: one cell per combination of every grid's values (read as "
        "YAML; inf is a float). Repeatable.",
    ),
]
ZipOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--zip",
        show_default=False,
        help="key.path=v1,v2,...: lists of one length varied together (value i of each in the "
        "same cell). Repeatable.",
    ),
]
SeedsOpt = Annotated[
    str | None, typer.Option("--seeds", help="0-4 or 0,1,2 (default: the config's seeds).")
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Experiment name of all the sweep's runs (default: the config's)."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Processes training cells at once.")]


def sweep_command(
    open_store: Callable[[Path | None], Any], store_option: Any, overrides_arg: Any
) -> Callable[..., None]:
    """The command function, given how cli.py opens the store, its ``--store`` option and its
    ``key.path=value`` overrides argument."""

    def sweep(
        config: ConfigArg,
        overrides: overrides_arg = None,  # type: ignore[valid-type]
        grid: GridOpt = None,
        zip_: ZipOpt = None,
        seeds: SeedsOpt = None,
        name: NameOpt = None,
        workers: WorkersOpt = 1,
        store: store_option = None,  # type: ignore[valid-type]
    ) -> None:
        """Run a config over grids of values × seeds into the run store: each teacher trained
        once per seed, finished cells skipped, on N processes; one line per finished cell."""
        from kdlab.sweep.plan import SweepOptions

        options = SweepOptions(grid or [], zip_ or [], overrides or [], seeds, name, workers)
        run_command(config, options, lambda: open_store(store))

    return sweep


def run_command(config: Path, options: Any, open_store: Callable[[], Any]) -> None:
    """Plan and check every cell (nothing is written before), then run the sweep; exit status 1,
    with one line naming them, when a cell failed."""
    from kdlab import terminal
    from kdlab.config import load_config
    from kdlab.sweep.plan import plan_sweep, preflight_plan
    from kdlab.sweep.pool import run_sweep

    plan = plan_sweep(load_config(config), str(config), options)
    preflight_plan(plan)

    def show(line: str) -> None:
        terminal.console.print(line, markup=False, highlight=False, soft_wrap=True)

    cells, seeds = len(plan.cells), len(plan.seeds)
    show(f"sweep {plan.name}: {cells} cell(s) × {seeds} seed(s) on {options.workers} worker(s)")
    with open_store() as store, terminal.interruptible(_again(config, options, store.root)):
        result = run_sweep(plan, store, options.workers, show)
    if result.failed():
        terminal.fail(result.failure_line(), 1)
    show(
        f"sweep {plan.name} complete: its runs are in {store.root}, experiment {plan.name!r} "
        f"(`kdlab runs --experiment {shlex.quote(plan.name)}`)"
    )


def _again(config: Path, options: Any, root: Path) -> str:
    """The command line that continues this sweep."""
    args = ["kdlab", "sweep", str(config), *options.overrides]
    args += [f"--grid={g}" for g in options.grid] + [f"--zip={z}" for z in options.zip]
    args += [f"--seeds={options.seeds}"] if options.seeds else []
    args += [f"--name={options.name}"] if options.name else []
    return shlex.join([*args, f"--workers={options.workers}", f"--store={root}"])


__all__ = ["sweep_command"]
