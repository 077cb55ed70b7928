"""``kdlab run --nproc N``: the same command on N processes of this machine, through torchrun's
launcher (``torch.distributed.launcher``), with one clear line when a rank fails.

Each rank runs ``python -m kdlab run ...`` (without ``--nproc``). A rank that fails writes its
one-line error into a folder the launcher gives it (``KDLAB_ERRORS``); torchrun stops the other
ranks, and the launcher prints the first failing rank's line — not N tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch

from kdlab import distributed
from kdlab.devices import resolve_device
from kdlab.errors import ConfigError
from kdlab.preflight import training_sections
from kdlab.settings import TrainSettings

#: The environment variable naming the folder where failing ranks leave their error line.
ERRORS_ENV = "KDLAB_ERRORS"


def check_launch(nproc: int, sections: Iterable[tuple[str, TrainSettings]]) -> None:
    """Refuse, before any process starts, what N processes cannot run: more processes than
    GPUs (or CPU cores), and a batch size that does not split over them."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be ≥ 1, got {nproc}")
    world = distributed.World(0, nproc, 0)
    for where, settings in sections:
        device = resolve_device(settings.device)
        if device.type == "cuda" and nproc > torch.cuda.device_count():
            raise ConfigError(
                f"--nproc {nproc} asks for {nproc} GPUs, but this machine has "
                f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} (or "
                "torchrun --nnodes for more machines)"
            )
        if device.type == "mps":
            raise ConfigError(
                f"{where}: Apple MPS runs one process; drop --nproc or use --device cpu"
            )
        cores = os.cpu_count() or 1
        if device.type == "cpu" and nproc > cores:
            raise ConfigError(
                f"--nproc {nproc} asks for more processes than this machine's {cores} CPU "
                f"cores; use --nproc {cores} or fewer"
            )
        distributed.check_batch_size(settings.batch_size, world, f"{where}.batch_size")


def launch(nproc: int, args: list[str]) -> int:
    """Run ``kdlab <args>`` on ``nproc`` local processes; the exit status of the job."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log (restarts, closing signals) is noise here: failures are reported below.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"kdlab-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kdlab-errors-") as folder:
        os.environ[ERRORS_ENV] = folder
        try:
            elastic_launch(config, sys.executable)("-m", "kdlab", *args)
            return 0
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            print(first_error(Path(folder), rank, failure.exitcode), file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
        finally:
            del os.environ[ERRORS_ENV]


def first_error(folder: Path, rank: int, exitcode: int) -> str:
    """The error line of the rank that failed first (by when it wrote it)."""
    files = sorted(folder.glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
    if files:
        return files[0].read_text().strip()
    return f"error: rank {rank} ended with exit status {exitcode} (no kdlab error was recorded)"


def report_error(message: str) -> bool:
    """Under ``kdlab run --nproc``: leave this rank's error line for the launcher (True);
    elsewhere False (the caller prints it)."""
    folder = os.environ.get(ERRORS_ENV)
    if not folder or not Path(folder).is_dir():
        return False
    rank = distributed.world().rank
    (Path(folder) / f"rank{rank}.txt").write_text(f"error: rank {rank}: {message}\n")
    return True


__all__ = [
    "ERRORS_ENV",
    "check_launch",
    "first_error",
    "launch",
    "report_error",
    "training_sections",  # re-exported for the command line
]
