"""The study configs and scripts of ``examples/studies`` (shrunk to seconds on digits)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdlab.config import load_config, parse_config
from kdlab.data.multiview import view_accuracy
from kdlab.data.patch_views import bundled_test_set
from kdlab.experiment import run_experiment
from kdlab.store import RunStore

STUDIES = Path(__file__).resolve().parents[1] / "examples" / "studies"
EXAMPLES = STUDIES.parent


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_config_is_valid(path: Path) -> None:
    assert load_config(path).name


def test_compare_methods_shares_one_teacher_and_pairs_gains_by_seed(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    files = [EXAMPLES / f"digits_adversarial_{m}.yaml" for m in ("kd", "gan")]
    command = [sys.executable, str(STUDIES / "compare_methods.py"), "--store", str(store),
               "--seeds", "2", "--epochs", "1", "--workdir", str(tmp_path / "configs"),
               "--files", *map(str, files)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = RunStore(store).list_runs()
    by_experiment: dict[str, set[str]] = {}
    for run in runs:
        assert run.status == "finished"
        by_experiment.setdefault(run.experiment, set()).add(run.role)
    kd, gan = "study-digits-adversarial-kd", "study-digits-adversarial-gan"
    trained = [r for r in runs if r.experiment == "study-teacher" and r.role == "teacher"]
    assert [r.seed for r in trained] == [0] and RunStore(store).history(trained[0].id)
    assert by_experiment[kd] == {"teacher", "student", "distilled"}
    assert by_experiment[gan] == {"teacher", "distilled"}  # no second student alone
    loaded = [r for r in runs if r.experiment in (kd, gan) and r.role == "teacher"]
    assert len(loaded) == 4 and all(not RunStore(store).history(r.id) for r in loaded)
    assert {r.metrics["accuracy"] for r in loaded} == {trained[0].metrics["accuracy"]}
    alone = {r.seed: r.metrics["accuracy"] for r in runs if r.role == "student"}
    gan_acc = {r.seed: r.metrics["accuracy"] for r in runs
               if r.experiment == gan and r.role == "distilled"}  # fmt: skip
    gain = np.mean([100 * (gan_acc[s] - alone[s]) for s in (0, 1)])
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {gan} "))
    assert row.split("|")[3].strip().startswith(f"{gain:.2f}".replace("-0.00", "0.00"))


@pytest.mark.filterwarnings("ignore:.*chance level")  # 3 epochs of gradient descent: expected
def test_multiview_views_splits_each_models_accuracy_by_kind_of_sample(tmp_path: Path) -> None:
    raw = yaml.safe_load((STUDIES / "multiview_patches.yaml").read_text())
    raw["seeds"] = [0]
    for section in (raw["teacher"]["train"], raw["student"]["train"]):
        section["epochs"] = 3
    raw["teacher"]["ensemble"] = 2
    store = RunStore(tmp_path / "runs.db")
    run_experiment(parse_config(raw), store=store)
    views = script("multiview_views")
    rows = views.accuracies(store, raw["name"], raw)
    assert set(rows) == {"single", "single (ensemble members)", "ensemble", "distilled"}
    test = bundled_test_set()
    members = [views.network(raw["teacher"]["model"], r.artefacts["model"])
               for r in store.list_runs(role="teacher_member")]  # fmt: skip
    x = torch.from_numpy(test.x)
    with torch.no_grad():
        mean_probs = sum(torch.softmax(m(x), 1) for m in members) / 2
    correct = mean_probs.argmax(1).numpy() == test.y
    assert rows["ensemble"][0]["multi"] == pytest.approx(correct[test.view == 0].mean())
    assert rows["ensemble"][0]["single"] == pytest.approx(correct[test.view > 0].mean())
    by_kind = view_accuracy(members[0], test)
    assert set(by_kind) == {"multi", "first only", "second only"}
    lines = views.table(rows)
    assert [line["model"] for line in lines][-2:] == [
        "distilled − single (multi-view), paired",
        "distilled − single (single-view), paired",
    ]
