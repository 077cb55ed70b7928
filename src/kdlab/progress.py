"""A rich progress bar for the training loop that costs nothing when switched off."""

from __future__ import annotations

import sys
from typing import Any

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
