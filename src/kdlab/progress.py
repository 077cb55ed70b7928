"""Training progress: a rich bar on a terminal, one plain line per epoch in a log.

A batch job's stderr is a file, where a live bar is noise (or nothing at all); there each epoch
prints one line instead — run label, epoch/epochs, the main metrics and seconds — through an
epoch callback (:func:`epoch_printer`), since only the epoch's finished row holds the
validation metrics. Neither costs anything when progress is off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """A bar over the run's steps with live loss/accuracy; a no-op when ``enabled`` is False."""

    def __init__(self, description: str, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self.description = description
        self._progress: Progress | None = None
        self._task: Any = None
        self._console = console or Console(stderr=True)

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        """One bar for the whole run (its time estimate covers every epoch left)."""
        if self._progress is None:
            return
        description = f"{self.description} {epoch}/{epochs}"
        if self._task is None:
            total = steps * (epochs - epoch + 1)  # a resumed run starts at a later epoch
            self._task = self._progress.add_task(description, total=total, stats="")
        else:
            self._progress.update(self._task, description=description)

    def advance(self, stats: dict[str, float] | None = None) -> None:
        if self._progress is None:
            return
        fields = {}
        if stats is not None:
            fields["stats"] = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self._progress.update(self._task, advance=1, **fields)

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.log(message)


#: The metrics of a plain epoch line, in this order, when the row has them (optimizer-prefixed
#: losses of multi-optimizer schemes, e.g. ``student.loss``, follow ``loss``).
MAIN_METRICS = ("loss", "accuracy", "val_accuracy", "val_nll")


def epoch_printer(
    label: str, epochs: int, enabled: bool = True, stream: TextIO | None = None
) -> Callable[[dict[str, float]], None] | None:
    """An epoch callback printing one plain line per epoch to ``stream`` (default: stderr, read
    at each call), or None where the bar shows instead (a terminal) or progress is off."""
    if not enabled or (stream or sys.stderr).isatty():
        return None

    def log(row: dict[str, float]) -> None:
        print(epoch_line(label, epochs, row), file=stream or sys.stderr, flush=True)

    return log


def epoch_line(label: str, epochs: int, row: dict[str, float]) -> str:
    """``distilled s0  epoch 3/20  loss 0.4121  accuracy 0.9062  val_accuracy 0.9444  1.2 s``."""
    losses = [k for k in row if k.endswith(".loss")]
    keys = [k for k in MAIN_METRICS[:1] + tuple(losses) + MAIN_METRICS[1:] if k in row]
    parts = [label, f"epoch {int(row['epoch'])}/{epochs}", *(f"{k} {row[k]:.4g}" for k in keys)]
    if "seconds" in row:
        parts.append(f"{row['seconds']:.3g} s")
    return "  ".join(parts)
