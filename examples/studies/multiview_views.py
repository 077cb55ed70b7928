"""Multi-view vs single-view test accuracy of the runs of ``multiview_patches.yaml``.

Reads every finished run of the experiment from the store, rebuilds each network from its
``model.pt``, and splits its accuracy on the bundled test set (half multi-view, half single-view
samples) by kind of sample. Rows: one network on labels (the `student` runs and each ensemble
member), the ensemble of 3 (mean of the members' probabilities), the student distilled from it.
Mean ± 95 % t-interval over seeds, and the distilled − single gap paired by seed.

    python examples/studies/multiview_views.py runs/multiview.db [--config PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from kdlab.checkpoint import load_state_dict
from kdlab.data.multiview import view_accuracy
from kdlab.data.patch_views import bundled_test_set
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.models.patchnet import PatchNet
from kdlab.report.stats import describe, paired_difference
from kdlab.store import RunStore

HERE = Path(__file__).resolve().parent


def network(spec: dict, path: str) -> PatchNet:
    options = {k: v for k, v in spec.items() if k != "type"}
    test = bundled_test_set()
    model = PatchNet(num_classes=10, input_shape=test.x.shape[1:], **options)
    model.load_state_dict(load_state_dict(path))
    return model.eval()


def cell(run) -> str:
    """A sweep cell's short label (``temperature=4``); empty for a plain run of the file."""
    values = ((run.config.get("sweep") or {}).get("cell")) or {}
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items())


def accuracies(store: RunStore, experiment: str, config: dict) -> dict[str, dict[int, dict]]:
    """{row: {seed: {view kind: accuracy}}} for single, ensemble and each distilled variant
    (runs of a ``kdlab sweep`` over the file are labelled by their cell; the teachers and the
    student alone, identical across cells, are counted once per seed)."""
    test, out = bundled_test_set(), defaultdict(dict)
    members: dict[int, dict[int, PatchNet]] = defaultdict(dict)
    for run in reversed(store.list_runs(experiment=experiment)):  # oldest first
        if run.status != "finished" or "model" not in run.artefacts:
            continue
        spec = config["teacher" if run.role.startswith("teacher") else "student"]["model"]
        if run.role == "teacher_member":
            index = int(run.config.get("member", len(members[run.seed])))
            members[run.seed].setdefault(index, network(spec, run.artefacts["model"]))
        elif run.role == "student" and run.seed not in out["single"]:
            out["single"][run.seed] = merge(network(spec, run.artefacts["model"]), test)
        elif run.role == "distilled":
            label = f"distilled ({cell(run)})" if cell(run) else "distilled"
            out[label][run.seed] = merge(network(spec, run.artefacts["model"]), test)
    for seed, by_index in members.items():
        models = list(by_index.values())
        out["single (ensemble members)"][seed] = {
            k: float(np.mean([merge(m, test)[k] for m in models])) for k in ("multi", "single")
        }
        out["ensemble"][seed] = merge(EnsembleTeacher(models), test)
    return out


def merge(model: torch.nn.Module, test) -> dict[str, float]:
    """Accuracy on multi-view samples and on single-view samples (both kinds together)."""
    by_kind = view_accuracy(model, test)
    counts = {k: int((test.view == i).sum()) for i, k in enumerate(by_kind)}
    single = sum(by_kind[k] * counts[k] for k in by_kind if k != "multi")
    return {"multi": by_kind["multi"], "single": single / (len(test.y) - counts["multi"])}


def table(rows: dict[str, dict[int, dict]]) -> list[dict]:
    fixed = ["single", "single (ensemble members)", "ensemble"]
    names = [n for n in fixed if n in rows] + sorted(n for n in rows if n.startswith("distilled"))
    lines = []
    for name in names:
        line = {"model": name, "seeds": len(rows[name])}
        for kind in ("multi", "single"):
            line[kind] = describe([100 * v[kind] for v in rows[name].values()])
        lines.append(line)
    for name in (n for n in names if n.startswith("distilled") and "single" in rows):
        for kind in ("multi", "single"):
            gap = paired_difference(  # distilled − single, seed by seed
                {s: 100 * v[kind] for s, v in rows["single"].items()},
                {s: 100 * v[kind] for s, v in rows[name].items()},
            )
            lines.append({"model": f"{name} − single ({kind}-view), paired", "gap": gap})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--config", default=str(HERE / "multiview_patches.yaml"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    rows = accuracies(RunStore(args.store), config["name"], config)
    lines = table(rows)
    print("| model | seeds | multi-view test acc % | single-view test acc % |")
    print("|---|---|---|---|")
    for line in lines:
        if "gap" in line:
            print(f"| {line['model']} | | {line['gap'].format(spread='ci')} | |")
        else:
            multi, single = (line[k].format(spread="ci") for k in ("multi", "single"))
            print(f"| {line['model']} | {line['seeds']} | {multi} | {single} |")
    if args.json:
        raw = {name: {str(s): v for s, v in seeds.items()} for name, seeds in rows.items()}
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
