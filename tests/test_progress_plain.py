"""Plain progress lines: one line per epoch when stderr is not a terminal (a batch job's log),
the rich bar on a terminal, nothing with progress off or on a rank other than 0."""

from __future__ import annotations

import io
import re

import pytest

import kdlab
from kdlab import runs
from kdlab.data import DataSplits
from kdlab.models import MLP
from kdlab.progress import epoch_line, epoch_printer
from kdlab.settings import TrainSettings

LINE = re.compile(
    r"^plain  epoch (\d)/3  loss [\d.]+  val_accuracy [\d.]+  val_nll [\d.]+  [\d.e-]+ s$"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_holds_label_epoch_main_metrics_and_seconds() -> None:
    row = {"epoch": 2.0, "loss": 0.51234, "ce": 0.4, "lr": 0.1, "student.loss": 0.3,
           "val_accuracy": 0.9, "val_nll": 0.33, "seconds": 1.25}  # fmt: skip
    assert epoch_line("distilled s0", 20, row) == (
        "distilled s0  epoch 2/20  loss 0.5123  student.loss 0.3  val_accuracy 0.9  "
        "val_nll 0.33  1.25 s"
    )


def test_a_terminal_or_progress_off_gets_no_plain_printer() -> None:
    assert epoch_printer("x", 3, stream=Terminal()) is None  # the bar shows there
    assert epoch_printer("x", 3, enabled=False, stream=io.StringIO()) is None
    log = io.StringIO()
    printer = epoch_printer("x", 3, stream=log)
    assert printer is not None
    printer({"epoch": 1, "loss": 1.0, "seconds": 0.5})
    assert log.getvalue() == "x  epoch 1/3  loss 1  0.5 s\n"


def test_a_run_logging_to_a_file_prints_one_line_per_epoch_and_no_bar(
    digits: DataSplits, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = TrainSettings(epochs=3, threads=1)
    kdlab.train(MLP(64, [8], 10), digits, settings=settings, progress=True, name="plain")
    err = capsys.readouterr().err  # pytest's capture is not a terminal, as a batch job's log
    lines = err.splitlines()
    assert [LINE.match(line) is not None for line in lines] == [True] * 3, err
    assert [int(LINE.match(line).group(1)) for line in lines] == [1, 2, 3]
    assert "━" not in err and "\r" not in err  # no bar drawn


def test_no_plain_lines_with_progress_off_or_off_rank_0(
    digits: DataSplits, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TrainSettings(epochs=2, threads=1)
    kdlab.train(MLP(64, [8], 10), digits, settings=settings, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(runs, "is_main", lambda: False)  # as on rank 1 under DDP
    kdlab.train(MLP(64, [8], 10), digits, settings=settings, progress=True)
    assert capsys.readouterr().err == ""
