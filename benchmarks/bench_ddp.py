"""bench_device.py's ``ddp`` row: the same kdlab KD epoch on 1 and on 2 processes (DDP).

Each process count runs in freshly spawned processes (``torch.multiprocessing``, torchrun's
environment variables set by hand), so both sides pay the same start-up and neither inherits the
other's threads. On CUDA each rank takes its own GPU (NCCL needs one per rank: the row is skipped
with fewer than 2); on the CPU the cores are shared out — 1 process with every core's threads vs
2 with half each — so the ratio says what DDP buys on this machine. The global batch is the same
in both (each of the 2 ranks computes half of it).

    python benchmarks/bench_ddp.py --device cpu --n-images 512 --epochs 1   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, job: dict[str, Any], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(job["threads"])
    from bench_device import (
        KD_LOSS,
        LR,
        MOMENTUM,
        NUM_CLASSES,
        SHAPE,
        STUDENT,
        TEACHER,
        synthetic_data,  # the same images as the other rows
    )
    from kdlab.engine import Engine
    from kdlab.losses import build_objective
    from kdlab.models import build_model
    from kdlab.schemes.offline import OfflineScheme
    from kdlab.settings import OptimizerSettings, TrainSettings

    data = synthetic_data(job["n_images"], job["seed"])
    teacher = build_model({"type": TEACHER}, SHAPE, NUM_CLASSES, seed=job["seed"]).eval()
    student = build_model({"type": STUDENT}, SHAPE, NUM_CLASSES, seed=job["seed"] + 1)
    scheme = OfflineScheme(student, build_objective(KD_LOSS), teacher, cache_teacher=False)
    marks: list[float] = []

    def mark(_row: Any = None) -> None:
        if job["device"] == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    settings = TrainSettings(
        epochs=job["warmup"] + job["epochs"], batch_size=job["batch_size"], device=job["device"],
        optimizer=OptimizerSettings(name="sgd", lr=LR, momentum=MOMENTUM), cache_teacher=False,
    )  # fmt: skip
    Engine(settings, seed=job["seed"], progress=False, callbacks=[mark]).fit(scheme, data)
    if rank == 0:  # an epoch lasts from the previous epoch's end: the first one is a warm-up
        times = [marks[i] - marks[i - 1] for i in range(job["warmup"], len(marks))]
        Path(out).write_text(json.dumps(times))


def epoch_seconds(nprocs: int, job: dict[str, Any]) -> list[float]:
    """Seconds of each timed epoch (after ``job['warmup']`` ≥ 1 untimed ones) on ``nprocs``."""
    import torch.multiprocessing as mp

    if job["warmup"] < 1:
        raise ValueError("the ddp row needs at least one warm-up epoch (it marks epoch ends)")
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "times.json")
        mp.spawn(_rank, args=(nprocs, _free_port(), job, out), nprocs=nprocs, join=True)
        return json.loads(Path(out).read_text())


def compare(job: dict[str, Any]) -> dict[str, Any]:
    """1 vs 2 processes on ``job['device']``: median seconds per epoch and images per second."""
    if job["device"] == "cuda" and torch.cuda.device_count() < 2:
        return {"status": "skipped", "note": "skipped: DDP on CUDA needs 2 GPUs (one per rank)"}
    cores = os.cpu_count() or 2
    row: dict[str, Any] = {"status": "ok"}
    for nprocs in (1, 2):
        threads = max(1, cores // nprocs) if job["device"] == "cpu" else 1
        times = epoch_seconds(nprocs, {**job, "threads": threads})
        med = statistics.median(times)
        row[f"processes_{nprocs}"] = {
            "seconds_per_epoch": med, "images_per_second": job["n_images"] / med,
            "epoch_seconds": times, "threads_per_process": threads,
        }  # fmt: skip
    row["seconds_per_epoch"] = row["processes_2"]["seconds_per_epoch"]
    row["images_per_second"] = row["processes_2"]["images_per_second"]
    row["epoch_seconds"] = row["processes_2"]["epoch_seconds"]
    row["two_over_one_process"] = (
        row["processes_2"]["images_per_second"] / row["processes_1"]["images_per_second"]
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    job = {"device": a.device, "n_images": a.n_images, "batch_size": a.batch_size,
           "epochs": a.epochs, "warmup": a.warmup, "seed": a.seed}  # fmt: skip
    print(json.dumps(compare(job), indent=2))


if __name__ == "__main__":
    main()
