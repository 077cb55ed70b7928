"""Benchmark ``kdlab sweep`` against the loop a user would otherwise write: one ``kdlab run`` per
cell, each training its own teacher and student alone.

The grid is the common one: the soft-target temperature T ∈ {1, 2, 4, 8} × seeds 0–2 on digits
with 60 labels (MLP 128 teacher, 30 epochs; MLP 16 student, 150 one-batch epochs; 1 thread).
``kdlab sweep`` trains each seed's teacher and student alone once for the four cells that share
them; the loop trains them once per cell. Both write to their own fresh store; reported per
path: wall time (including each process's start-up: the loop starts one per cell, as a shell loop
would) and the runs the store holds by role. The sweep's distilled runs must equal the loop's:
the script checks that their test accuracies agree to the bit (same seeds, same weights).

Usage: ``python benchmarks/bench_sweep.py [--temperatures 1 2 4 8] [--seeds 0-2]
[--json-out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
CLI = "import sys; from kdlab.cli import app; sys.argv[0] = 'kdlab'; app()"
CONFIG = {
    "name": "bench-sweep",
    "data": {"source": "digits", "val_fraction": 0.1},
    "teacher": {"model": {"type": "mlp", "hidden": [128]},
                "train": {"epochs": 30, "batch_size": 64, "threads": 1}},
    "student": {"model": {"type": "mlp", "hidden": [16]}, "train_subset": 60,
                "train": {"epochs": 150, "batch_size": 64, "threads": 1,
                          "optimizer": {"name": "adam", "lr": 0.003}}},
    "distill": {"loss": [{"type": "ce", "weight": 0.1},
                         {"type": "soft_target", "weight": 0.9, "temperature": 4}]},
}  # fmt: skip


def kdlab(*args: object) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", CLI, *map(str, args)], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"[bench] kdlab {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")


def store_runs(store: Path) -> tuple[Counter, dict]:
    """Finished runs by role, and each distilled run's accuracy by (temperature, seed)."""
    sys.path.insert(0, str(SRC))
    from kdlab.store import RunStore

    with RunStore(store) as runs:
        records = runs.list_runs(status="finished")
    roles = Counter(r.role for r in records)
    accuracy = {
        (r.config["experiment"]["distill"]["loss"][1]["temperature"], r.seed): r.metrics["accuracy"]
        for r in records if r.role == "distilled"
    }  # fmt: skip
    return roles, accuracy


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    temperatures = [int(t) if t == int(t) else t for t in args.temperatures]
    low, _, high = args.seeds.partition("-")
    seeds = list(range(int(low), int(high or low) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "exp.yaml"
        config.write_text(yaml.safe_dump({**CONFIG, "seeds": seeds}))
        grid = ",".join(map(str, temperatures))
        sweep_s = timed(lambda: kdlab("sweep", config, "--grid",
                                      f"distill.loss.1.temperature={grid}",
                                      "--store", folder / "sweep"))  # fmt: skip

        def loop() -> None:
            for t in temperatures:
                kdlab("run", config, f"distill.loss.1.temperature={t}", "--store",
                      folder / "loop", "--no-progress")  # fmt: skip

        loop_s = timed(loop)
        sweep_roles, sweep_acc = store_runs(folder / "sweep")
        loop_roles, loop_acc = store_runs(folder / "loop")
    same = sweep_acc == loop_acc and len(sweep_acc) == len(temperatures) * len(seeds)
    result = {
        "cells": len(temperatures), "seeds": len(seeds),
        "sweep": {"seconds": round(sweep_s, 2), "runs": dict(sweep_roles)},
        "loop": {"seconds": round(loop_s, 2), "runs": dict(loop_roles)},
        "loop_over_sweep_time": round(loop_s / sweep_s, 2),
        "distilled_accuracies_identical": same,
    }  # fmt: skip
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    print(f"\n{len(temperatures)} cells × {len(seeds)} seeds (T grid on digits, 60 labels)")
    print(f"{'path':<28}{'seconds':>9}  teacher  student  distilled")
    for name, seconds, roles in (("kdlab sweep", sweep_s, sweep_roles),
                                 ("kdlab run per cell (loop)", loop_s, loop_roles)):  # fmt: skip
        print(f"{name:<28}{seconds:>9.1f}  {roles['teacher']:>7}  {roles['student']:>7}  "
              f"{roles['distilled']:>9}")  # fmt: skip
    print(f"loop ÷ sweep time {loop_s / sweep_s:.2f}; distilled accuracies identical: {same}")
    if not same:
        sys.exit("[bench] the sweep's distilled runs differ from the loop's")


if __name__ == "__main__":
    main()
