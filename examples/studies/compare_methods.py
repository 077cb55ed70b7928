"""Compare the methods of several example files on one footing: one teacher, one budget, the
same student seeds; a table of test accuracy (mean ± 95 % CI) and the gain over the student
alone, paired by seed.

The first file's teacher section trains the teacher once (experiment ``<prefix>-teacher``,
seed 0); then every file loads it (``teacher.checkpoint``) and runs its seeds, the first file
also training the student alone, so every row differs from the others only by its
distillation. ``--source`` runs the files on another dataset,
``--epochs`` / ``--train-subset`` set one budget for every training section. The files must share
the teacher and student models (the script checks).

    # every loss method with the CNN teacher (issue 15's table), 3 seeds, 10k labelled images:
    python examples/studies/compare_methods.py --store runs/methods.db --seeds 3 \\
        --train-subset 10000 --epochs 10 --files feature-methods
    # seed 004's adversarial variants on a dataset:
    python examples/studies/compare_methods.py --store runs/adv.db --seeds 3 \\
        --files examples/fashion_mnist_adversarial_{kd,pretrained,gan,wgan}.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from kdlab.report.stats import describe, paired_difference
from kdlab.store import RunStore

EXAMPLES = Path(__file__).resolve().parents[1]


def feature_methods() -> list[Path]:
    """Plain KD first, then every Fashion-MNIST example with the [32, 64, 128] CNN teacher."""
    files = [EXAMPLES / "studies" / "fashion_mnist_kd.yaml"]
    for path in sorted(EXAMPLES.glob("fashion_mnist_*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if (raw.get("teacher") or {}).get("model", {}).get("channels") == [32, 64, 128]:
            files.append(path)
    return files


def budgeted(raw: dict, args: argparse.Namespace, teacher: str | None, baseline: bool) -> dict:
    """The file with the shared budget, loading ``teacher`` (None: train it, seed 0 only)."""
    raw = json.loads(json.dumps(raw))  # a deep copy
    raw["name"] = f"{args.prefix}-{raw['name'] if teacher else 'teacher'}"
    raw["seeds"] = list(range(args.seeds)) if teacher else [0]
    if args.source:
        raw["data"] = {"source": args.source, "val_fraction": raw["data"].get("val_fraction", 0.1)}
    sections = [raw["teacher"]["train"], raw["student"]["train"], raw["distill"].get("train")]
    sections += [s.setdefault("train", {}) for s in raw["distill"].get("stages") or []]
    for section in filter(None, sections):
        section["threads"] = 1  # the workers share the cores
        if args.epochs:
            section["epochs"] = args.epochs
    for stage in [raw["distill"], *(raw["distill"].get("stages") or [])]:
        for term in stage.get("loss") or []:
            if "warmup" in term:  # a warm-up within the budget (DKD)
                term["warmup"] = min(term["warmup"], max(1, section["epochs"] // 5))
    if args.train_subset:
        raw["student"]["train_subset"] = args.train_subset
    raw["student"]["baseline"] = baseline
    if teacher:
        raw["teacher"]["checkpoint"] = teacher
    return raw


def run(raw: dict, args: argparse.Namespace) -> None:
    path = Path(args.workdir) / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    command = ["kdlab", "run", str(path), "--store", args.store, "--resume"]
    done = subprocess.run(command, capture_output=True, text=True)
    status = "ok" if done.returncode == 0 else f"FAILED: {done.stderr.strip()[-300:]}"
    print(f"{raw['name']}: {status}", flush=True)


def accuracy(store: RunStore, experiment: str, role: str) -> dict[int, float]:
    runs = store.list_runs(experiment=experiment, role=role, status="finished")
    return {r.seed: 100 * r.metrics["accuracy"] for r in runs}


def table(store: RunStore, names: list[str], prefix: str) -> list[dict]:
    teacher = accuracy(store, f"{prefix}-teacher", "teacher")
    alone = accuracy(store, names[0], "student")
    rows = [{"method": "teacher", "acc": describe(list(teacher.values()))},
            {"method": "student alone", "acc": describe(list(alone.values()))}]  # fmt: skip
    for name in names:
        distilled = accuracy(store, name, "distilled")
        rows.append({"method": name, "acc": describe(list(distilled.values())),
                     "gain": paired_difference(alone, distilled)})  # fmt: skip
    return rows


def check_models(configs: list[dict]) -> None:
    for raw in configs[1:]:
        for role in ("teacher", "student"):
            if raw[role]["model"] != configs[0][role]["model"]:
                raise SystemExit(f"{raw['name']}: its {role} differs from {configs[0]['name']}'s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--files", nargs="+", required=True, help="or: feature-methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--source", default=None)
    parser.add_argument("--prefix", default="study")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default="study-configs")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    files = feature_methods() if args.files == ["feature-methods"] else map(Path, args.files)
    configs = [yaml.safe_load(path.read_text()) for path in files]
    check_models(configs)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        first = budgeted(configs[0], args, None, baseline=False)
        run(first, args)  # the shared teacher
        (teacher,) = RunStore(args.store).list_runs(experiment=first["name"], role="teacher")
        weights = teacher.artefacts["model"]
        jobs = [budgeted(raw, args, weights, baseline=i == 0) for i, raw in enumerate(configs)]
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda raw: run(raw, args), jobs))
    names = [f"{args.prefix}-{raw['name']}" for raw in configs]
    rows = table(RunStore(args.store), names, args.prefix)
    print("| method | test acc % (mean ± 95 % CI) | gain over student alone (paired, 95 % CI) |")
    print("|---|---|---|")
    for row in rows:
        gain = row["gain"].format(spread="ci") if "gain" in row else "—"
        print(f"| {row['method']} | {row['acc'].format(spread='ci')} | {gain} |")


if __name__ == "__main__":
    main()
