"""The ``kdlab`` command line."""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kdlab import distributed, tune
from kdlab.errors import KdlabError
from kdlab.report.command import report_command
from kdlab.sweep.command import sweep_command
from kdlab.terminal import (
    console,
    err_console,
    fail,
    interruptible,
    quiet_unless_main,
    show_warning,
)
from kdlab.tracking import tracking

app = typer.Typer(
    help="Knowledge distillation: train teachers, distill students, compare runs across seeds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DEFAULT_STORE = "kdlab-runs"
STORE_HELP = f"Run store folder or postgresql:// URL ($KDLAB_STORE, ./{DEFAULT_STORE})"
StoreOpt = Annotated[str | None, typer.Option("--store", help=STORE_HELP)]  # str: keeps URLs
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Overrides key.path=value, e.g. distill.loss.1.temperature=8.", show_default=False
    ),
]


def _load(config: Path, overrides: list[str] | None) -> Any:
    """The config file with the command line's ``key.path=value`` overrides, validated."""
    from kdlab.config import load_config
    from kdlab.overrides import apply_overrides

    return apply_overrides(load_config(config), overrides or [], str(config))


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Register a command whose kdlab errors print as one clear line and exit with status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_unless_main()
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (KdlabError, ValueError) as err:
            if os.environ.get("KDLAB_DEBUG"):
                raise
            fail(
                f"{err}  (set KDLAB_DEBUG=1 for a traceback)"
                if not isinstance(err, KdlabError)
                else str(err)
            )
        except Exception as err:  # under DDP: one line per failing rank, not N tracebacks
            if os.environ.get("KDLAB_DEBUG") or not distributed.world().distributed:
                raise
            fail(f"{type(err).__name__}: {err}", 1)

    return app.command()(wrapper)


def _store(path: str | Path | None, create: bool = True):
    from kdlab.store import RunStore

    # Strings, not Path(): Path() would fold a postgresql:// URL's "//".
    return RunStore(path or os.environ.get("KDLAB_STORE", DEFAULT_STORE), create)


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        fail(f"--seeds must be comma-separated integers like 0,1,2, got {text!r}")
    if not seeds:
        fail("--seeds needs at least one seed")
    return seeds


@command
def quickstart(
    store: StoreOpt = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated seeds (default: 0,1,2).")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Teacher, student alone and distilled student on the embedded digits data, in one table."""
    from kdlab.quickstart import print_quickstart, run_quickstart

    with _store(store) as run_store, interruptible("kdlab quickstart"):
        rows, _, _ = run_quickstart(run_store, _seeds(seeds), progress)
        print_quickstart(rows, console)
        console.print(f"Runs recorded in {run_store.location} — list them with `kdlab runs`.")


@command
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    overrides: OverridesArg = None,
    store: StoreOpt = None,
    seeds: Annotated[str | None, typer.Option(help="Override the config's seeds: 0,1,2")] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder with the dataset files (overrides data.root).")
    ] = None,
    progress: ProgressOpt = True,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Reuse the seeds this experiment (same config, seeds aside) already completed "
            "in the store; run only the others.",
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps, for every model.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, bf16 or fp16 (CUDA), for every model.")
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="Run on N processes of this machine (torchrun, DDP): one per GPU."),
    ] = None,
    track: Annotated[list[str] | None, typer.Option(help="tensorboard:DIR or mlflow:URI")] = None,
) -> None:
    """Run an experiment: per seed, teacher, student alone and distilled student."""
    from kdlab.experiment import run_experiment
    from kdlab.report import RunRow, gain, rich_table, summarize

    options = {"--seeds": seeds, "--data-root": data_root, "--device": device,
               "--precision": precision}  # fmt: skip
    cfg = _with_overrides(_load(config, overrides), config, options)
    if nproc is not None and not distributed.world().distributed:
        _launch(nproc, cfg)
    again = ["kdlab run", str(config), *(overrides or []),
             *(["--store", str(store)] if store else []),
             *(f"{k} {v}" for k, v in options.items() if v), "--resume"]  # fmt: skip
    with _store(store) as run_store, interruptible(" ".join(again)), tracking(track) as sinks:
        result = run_experiment(cfg, run_store, progress=progress, resume=resume, hooks=sinks)
        if result.reused_seeds:
            reused = ", ".join(map(str, result.reused_seeds))
            console.print(f"Resumed: seeds {reused} were complete in the store and not re-run.")
        rows = [RunRow(r.role, r.seed, r.metrics) for r in result.runs]
        title = f"{escape(cfg.name)} — mean ± std over seeds"
        console.print(rich_table(summarize(rows), title=title))
        g = gain(rows, "student", "distilled")
        if g.n:
            console.print(
                f"KD gain in test accuracy: {100 * g.mean:+.2f} points, paired over {g.n} seeds"
            )
        console.print(f"Runs recorded in {run_store.location}.")


def _launch(nproc: int, cfg: Any) -> None:
    """``kdlab run --nproc N``: checked here, then the same command on N processes."""
    import sys

    from kdlab.launch import check_launch, launch, training_sections

    check_launch(nproc, training_sections(cfg))
    if nproc > 1:
        args = sys.argv[1:]
        at = next(i for i, a in enumerate(args) if a.startswith("--nproc"))
        del args[at : at + (1 if "=" in args[at] else 2)]
        raise typer.Exit(launch(nproc, args))


def _with_overrides(cfg: Any, source: Path, options: dict[str, Any]) -> Any:
    """``cfg`` with the command line's overrides: seeds, data root, and the device and
    precision of every training section (teacher, student, distillation)."""
    from kdlab.config import parse_config

    if not any(options.values()):
        return cfg
    data = cfg.model_dump(mode="json")
    if options["--seeds"]:
        data["seeds"] = _seeds(options["--seeds"])
    if options["--data-root"]:
        data["data"]["root"] = str(options["--data-root"])
    sections = [data["student"]["train"], (data["teacher"] or {}).get("train"),
                data["distill"]["train"]]  # fmt: skip
    for key in ("device", "precision"):
        if options[f"--{key}"]:
            for section in filter(None, sections):
                section[key] = options[f"--{key}"]
    return parse_config(data, str(source))


@command
def validate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    overrides: OverridesArg = None,
) -> None:
    """Check an experiment file without running it: schema, data, models, weights, taps.

    Loads the data of the first seed, builds every model and passes two samples through it,
    loads the teacher's weights files and finds the loss terms' taps: seconds, no training.
    """
    from kdlab.errors import shorten
    from kdlab.preflight import preflight

    cfg = _load(config, overrides)
    preflight(cfg)
    seeds = shorten(str(cfg.seeds), 200)
    line = f"{config}: valid ({cfg.name}, seeds {seeds}, data {cfg.data.source})"
    console.print(line, markup=False, highlight=False)


@command
def runs(
    store: StoreOpt = None,
    experiment: Annotated[str | None, typer.Option(help="Only this experiment.")] = None,
    role: Annotated[str | None, typer.Option(help="Only this role.")] = None,
    status: Annotated[
        str | None, typer.Option(help="running, finished, failed or interrupted.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
) -> None:
    """List runs in the store, newest first, with their key metrics."""
    with _store(store, create=False) as run_store:
        records = run_store.list_runs(experiment=experiment, role=role, status=status, limit=limit)
    if not records:
        filtered = experiment or role or status
        console.print("No runs match these filters." if filtered else
                      "No runs in this store yet: try `kdlab quickstart`.")  # fmt: skip
        return
    table = Table()
    table.add_column("id", no_wrap=True, min_width=22)  # ids must stay copy-pastable
    for col in ("experiment", "role", "seed", "status", "test acc %", "agree %", "Φ_γ"):
        table.add_column(col, no_wrap=col == "status", min_width=11 if col == "status" else None)
    for r in records:
        m = r.metrics

        def pct(key: str, m: dict = m) -> str:
            return f"{100 * m[key]:.2f}" if key in m else "—"

        phi = f"{m['distill_error']:.3f}" if "distill_error" in m else "—"
        colour = {"failed": "red", "interrupted": "yellow"}.get(r.status)
        status_text = f"[{colour}]{r.status}[/]" if colour else r.status
        table.add_row(
            r.id,
            r.experiment,
            r.role,
            str(r.seed),
            status_text,
            pct("accuracy"),
            pct("agreement"),
            phi,
        )
    console.print(table)


@command
def summary(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `kdlab runs`).")],
    store: StoreOpt = None,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table.")] = False,
) -> None:
    """Aggregate an experiment's finished runs by role over seeds (mean ± std), with KD gain."""
    from kdlab.report import RunRow, gain, markdown_table, rich_table, summarize

    with _store(store, create=False) as run_store:
        records = run_store.list_runs(experiment=experiment, status="finished")
    if not records:
        known = ", ".join(_store(store, create=False).experiments()) or "none yet"
        fail(f"no finished runs of experiment {experiment!r}; experiments: {known}")
    latest = latest_per_role_and_seed(records)
    rows = [RunRow(r.role, r.seed or 0, r.metrics) for r in latest]
    table = summarize(rows)
    if markdown:
        typer.echo(markdown_table(table))
    else:
        console.print(rich_table(table, title=f"{escape(experiment)} — mean ± std over seeds"))
    g = gain(rows, "student", "distilled")
    if g.n:
        console.print(
            f"KD gain in test accuracy: {100 * g.mean:+.2f} points, paired over {g.n} seeds"
        )
    for note in summary_notes(experiment, records, latest):
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


def latest_per_role_and_seed(records: list[Any]) -> list[Any]:
    """One run per (role, seed): the newest; records come newest first, rows go oldest first."""
    kept: dict[tuple[str, int | None], Any] = {}
    for r in records:
        kept.setdefault((r.role, r.seed), r)
    return list(reversed(kept.values()))


def summary_notes(experiment: str, records: list[Any], latest: list[Any]) -> list[str]:
    """Warnings that the table hides re-runs or mixes configs under one experiment name."""
    from kdlab.resume import run_fingerprint

    notes = []
    if len(latest) < len(records):
        notes.append(
            f"{len(records) - len(latest)} older finished run(s) with the same role and seed "
            f"(re-runs) are left out; the newest counts. `kdlab runs --experiment {experiment}` "
            "lists them all."
        )
    configs = {run_fingerprint(r) for r in latest} - {None}
    if len(configs) > 1:
        notes.append(
            f"these runs come from {len(configs)} different configs under the name "
            f"{experiment!r} (a sweep's cells, or a YAML that changed), so the table mixes "
            f"them: `kdlab report {experiment} --by KEY` groups them by the keys that differ"
        )
    return notes


@command
def show(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it.")],
    store: StoreOpt = None,
    history: Annotated[bool, typer.Option(help="Print the per-epoch history too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Print one run: its config, metrics, artefacts and (optionally) history."""
    with _store(store, create=False) as run_store:
        record = run_store.get_run(run_id)
        rows = run_store.history(record.id)
    if as_json:
        payload = {**record.__dict__, "history": rows if history else None}
        console.print_json(json.dumps(payload, default=str))
        return
    console.print(
        f"[bold]{record.id}[/]  {record.experiment} / {record.name}  "
        f"role={record.role} seed={record.seed} status={record.status}"
    )
    console.print(f"created {record.created_at}, finished {record.finished_at or '—'}")
    if record.error:
        console.print(f"[red]error:[/] {record.error}")
    for key, value in sorted(record.metrics.items()):
        console.print(f"  {key:>14}: {value:.6g}")
    for key, value in record.artefacts.items():
        console.print(f"  artefact {key}: {value}")
    console.print(f"  {len(rows)} epochs recorded")
    if history and rows:
        table = Table()
        keys = list(rows[0])
        for key in keys:
            table.add_column(key, justify="right")
        for row in rows:
            table.add_row(*[f"{row.get(k, float('nan')):.4g}" for k in keys])
        console.print(table)


report = command(report_command(functools.partial(_store, create=False), StoreOpt))

sweep = command(sweep_command(_store, StoreOpt, OverridesArg))
command(tune.cli_command(_load, _store, interruptible, typer.echo))  # plain lines: no wrapping


@command
def datasets(
    root: Annotated[Path | None, typer.Option(help="Extra folder to look in.")] = None,
) -> None:
    """List dataset sources and whether their files are found on this machine."""
    from kdlab.data import SOURCES, locate

    table = Table()
    table.add_column("source")
    table.add_column("found at")
    for name, source in SOURCES.items():
        if source.find is None:
            where = "bundled"
        else:
            try:
                where = str(locate(source, root))
            except KdlabError:
                where = "[dim]not found (kdlab run tells where to put it)[/]"
        table.add_row(name, where)
    console.print(table)
