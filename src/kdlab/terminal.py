"""What the command line shows: one-line errors and warnings, and Ctrl-C/SIGTERM handling.

Under DDP only rank 0 prints results (the other ranks' consoles are quiet); a failing rank's error
line names its rank, and under ``kdlab run --nproc`` goes to the launcher, which prints the first.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

from kdlab import distributed
from kdlab.health import TrainingNotice, TrainingWarning
from kdlab.launch import report_error

console = Console()
err_console = Console(stderr=True)


def quiet_unless_main() -> None:
    """Under DDP, ranks other than 0 print nothing but their own errors."""
    here = distributed.world()
    console.quiet = not here.main
    err_console.quiet = False


def fail(message: str, code: int = 2) -> NoReturn:
    # The message may quote what a user wrote: print it as plain text (no markup, which a "[/]"
    # in a value would break, and no highlighting, which is slow on long lines), cut to a size
    # a terminal can show.
    from rich.text import Text

    from kdlab.errors import shorten

    message = shorten(message, 20_000)
    here = distributed.world()
    if here.distributed and report_error(message):  # the launcher prints the first rank's
        raise typer.Exit(code)
    prefix = f" rank {here.rank}:" if here.distributed else ""
    text = Text("error:", style="bold red").append(f"{prefix} {message}")
    err_console.print(text, highlight=False)
    raise typer.Exit(code)


default_show_warning = warnings.showwarning


def show_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> None:
    """kdlab's own warnings (a teacher at chance, a diverged loss) as one line on stderr."""
    if not distributed.is_main():  # rank 0 says it once
        return
    if issubclass(category, TrainingNotice):
        err_console.print(f"[bold]note:[/] {message}", highlight=False, soft_wrap=True)
    elif issubclass(category, TrainingWarning):
        err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        default_show_warning(message, category, *args, **kwargs)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the run in progress is marked interrupted."""


@contextmanager
def interruptible(how_to_continue: str) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the command with one line (exit 130 / 143): the run in progress
    is marked ``interrupted`` in the store (kdlab.runs) and the line says how to continue."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt as err:
        what = "SIGTERM" if isinstance(err, Terminated) else "Ctrl-C"
        err_console.quiet = not distributed.is_main()  # rank 0 speaks for the job
        err_console.print(
            f"[bold yellow]interrupted[/] ({what}): the run in progress is marked interrupted; "
            f"continue with `{how_to_continue}`", highlight=False,
        )  # fmt: skip
        raise typer.Exit(143 if isinstance(err, Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "Terminated",
    "console",
    "err_console",
    "fail",
    "interruptible",
    "quiet_unless_main",
    "show_warning",
]
