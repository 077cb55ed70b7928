"""The CIFAR-100 recipes of ``examples/cifar100`` (the CRD / RepDistiller protocol).

Every file must state the protocol exactly (a typo in a learning rate or a milestone fails here),
quote the published figures (CRD's tables; DKD's for DKD; the ReviewKD and DIST papers for the
two resnet32x4 → resnet8x4 extras), and run: on a tiny ``cifar-100-python/`` written in
the real pickle format (CI has no CIFAR-100 and nothing downloads), shrunk to one short epoch,
through ``run_experiment`` with a run store. Each pair's ``_kd`` recipe runs whole — its teacher
trained by its own teacher section, the student alone, the distilled student; the other files
distil from the teacher that run trained, passed in (``run_experiment(teachers=...)``), which
keeps the file fast on a CPU while every loss term, tap and adapter still runs.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdlab.config import ExperimentConfig, load_config, parse_config
from kdlab.experiment import run_experiment
from kdlab.health import TrainingNotice
from kdlab.models import build_model
from kdlab.store import RunStore

FOLDER = Path(__file__).resolve().parents[1] / "examples" / "cifar100"
RECIPES = sorted(FOLDER.glob("*.yaml"))

METHODS = ("kd", "fitnet", "at", "sp", "rkd", "pkt")
#: CRD's Tables 1 and 2, test accuracy % as the RepDistiller README prints them: the teacher,
#: the student alone, then the student with each of METHODS.
FIGURES = {
    ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33, 73.50, 73.44, 72.94, 71.90, 73.64),
    ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92, 73.58, 74.08, 73.83, 73.35, 74.54),
    ("resnet56", "resnet20"): (72.34, 69.06, 70.66, 69.21, 70.55, 69.67, 69.61, 70.34),
    ("resnet110", "resnet32"): (74.31, 71.14, 73.08, 71.06, 72.31, 72.69, 71.82, 72.61),
    ("vgg13", "vgg8"): (74.64, 70.36, 72.98, 71.02, 71.43, 72.68, 71.48, 72.88),
    ("resnet32x4", "shufflenetv2"): (79.42, 71.82, 74.45, 73.54, 72.73, 74.56, 73.21, 74.69),
    ("vgg13", "mobilenetv2"): (74.64, 64.60, 67.37, 64.14, 59.40, 66.30, 64.52, 67.13),
}
PAIRS = list(FIGURES)
#: CRD's own row of Tables 1 and 2 (RepDistiller README).
CRD = {
    ("resnet32x4", "resnet8x4"): 75.51,
    ("wrn_40_2", "wrn_16_2"): 75.48,
    ("resnet56", "resnet20"): 71.16,
    ("resnet110", "resnet32"): 73.48,
    ("vgg13", "vgg8"): 73.94,
    ("resnet32x4", "shufflenetv2"): 75.65,
    ("vgg13", "mobilenetv2"): 69.73,
}
#: DKD (Zhao et al. CVPR 2022) Tables 1 and 2, and the pair's β in mdistiller's
#: configs/cifar100/dkd/*.yaml (8, the default of mdistiller/engine/cfg.py, where none is set).
DKD = {
    ("resnet32x4", "resnet8x4"): (76.32, 8),
    ("wrn_40_2", "wrn_16_2"): (76.24, 6),  # mdistiller's README prints 76.23
    ("resnet56", "resnet20"): (71.97, 2),
    ("resnet110", "resnet32"): (74.11, 2),
    ("vgg13", "vgg8"): (74.68, 6),
    ("resnet32x4", "shufflenetv2"): (77.07, 8),
    ("vgg13", "mobilenetv2"): (69.71, 6),
}
#: Methods of every pair: METHODS, then those kdlab gained later.
PAIR_METHODS = (*METHODS, "crd", "dkd")
#: resnet32x4 → resnet8x4 only: method → (source quoted in the header, published figure).
EXTRA_PAIR = ("resnet32x4", "resnet8x4")
EXTRA = {"review": ("ReviewKD paper", 75.63), "dist": ("DIST paper", 76.31)}
#: RepDistiller's students with learning rate 0.01 (and Table 2, different architectures).
SMALL_LR = ("mobilenetv2", "shufflenetv2")
LABELS = {"kd": "KD", "fitnet": "FitNet", "at": "AT", "sp": "SP", "rkd": "RKD", "pkt": "PKT",
          "crd": "CRD", "dkd": "DKD", "review": "ReviewKD", "dist": "DIST"}  # fmt: skip

#: RepDistiller's features by model family (models/*.py, ``is_feat=True``) as zoo tap paths:
#: feat[1:-1] (AT), feat[2] (FitNet's hint), feat[-2] (SP); feat[-1] is ``pool`` everywhere.
TAPS = {
    "resnet": (["layer1", "layer2", "layer3"], "layer2", "layer3"),
    "wrn": (["layer1", "layer2", "layer3"], "layer2", "layer3"),
    "vgg": (["layer2", "layer3", "layer4", "layer5"], "layer3", "layer5"),
    "mobilenetv2": (["layer2", "layer3", "layer5", "layer7"], "layer3", "layer7"),
    "shufflenetv2": (["layer1", "layer2", "layer3"], "layer2", "layer3"),
}
AUGMENT = [
    {"random_crop": {"padding": 4}},
    "hflip",
    {"normalize": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}},
]
#: The tiny CIFAR-100: few images of a few classes (every one in both splits), 100 class names.
TRAIN, TEST, CLASSES, TEST_SIZE = 16, 24, 8, 16
BATCH = 8  # two steps per epoch; RKD's angle needs 3 samples per batch
#: With data.augment the teacher must see each augmented batch: kdlab turns its logit cache off.
CACHE_OFF = "teacher-logit cache is off"


def parts(path: Path) -> tuple[str, str, str]:
    teacher, student = next(pair for pair in PAIRS if path.stem.startswith("_".join(pair) + "_"))
    return teacher, student, path.stem.removeprefix(f"{teacher}_{student}_")


def family(model: str) -> str:
    return next(key for key in TAPS if model.startswith(key))


def write_cifar100(root: Path) -> None:
    """``root/cifar-100-python/{train,test,meta}`` as the published archive holds them: pickled
    dicts with bytes keys, ``data`` uint8 [N, 3072] (red, green, blue planes), ``fine_labels``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", TRAIN), ("test", TEST)):
        batch = {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": [i % CLASSES for i in range(n)],
            b"coarse_labels": [i % CLASSES // 4 for i in range(n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}  # fmt: skip
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar100(root)
    return root


@pytest.fixture(scope="module")
def teachers() -> dict[str, object]:
    """The teacher of each architecture that a ``_kd`` recipe trained, for the other files."""
    return {}


def shrunk(path: Path, root: Path) -> dict:
    """The recipe as it is, on the tiny files, for one epoch of two batches."""
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(root=str(root), test_size=TEST_SIZE)
    for section in (raw["teacher"]["train"], raw["student"]["train"]):
        section.update(epochs=1, batch_size=BATCH)
    for term in raw["distill"]["loss"]:
        if term["type"] == "crd":  # CRD needs fewer negatives than training images: 16 here
            term["negatives"] = 8
        if term["type"] == "dkd":  # a warm-up longer than the run is refused: 1 epoch here
            term["warmup"] = 1
        if term["type"] == "review":  # its weight is 0 in epoch 0 of a warm-up: none here
            term["warmup_epochs"] = 0
    return raw


def test_one_recipe_per_pair_and_method() -> None:
    expected = {f"{t}_{s}_{m}" for t, s in PAIRS for m in PAIR_METHODS}
    expected |= {"_".join((*EXTRA_PAIR, m)) for m in EXTRA}
    assert {p.stem for p in RECIPES} == expected
    readme = (FOLDER / "README.md").read_text()
    for (t, s), figures in FIGURES.items():
        row = (*figures, CRD[(t, s)], DKD[(t, s)][0])
        line = f"| {t} → {s} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
        assert line in readme, line
    assert "Table 1" in readme and "Table 2" in readme
    for method, (_, figure) in EXTRA.items():
        assert f"{LABELS[method]} {figure:.2f}" in readme, method


def published(teacher: str, student: str, method: str) -> tuple[str, float]:
    """(the source the header names, the published figure) of one file."""
    pair, table = (teacher, student), 2 if student in SMALL_LR else 1
    if method in EXTRA:
        assert pair == EXTRA_PAIR
        return EXTRA[method]
    if method == "dkd":
        return f"DKD Table {table}", DKD[pair][0]
    if method == "crd":
        return f"CRD Table {table}", CRD[pair]
    return f"CRD Table {table}", FIGURES[pair][2 + METHODS.index(method)]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_states_the_protocol(path: Path) -> None:
    cfg = load_config(path)
    teacher, student, method = parts(path)
    small = student in SMALL_LR
    lr = 0.01 if small else 0.05
    teacher_acc, student_acc, *_ = FIGURES[(teacher, student)]
    source, figure = published(teacher, student, method)
    assert cfg.name == f"cifar100-{teacher}-{student}-{method}".replace("_", "-")
    assert cfg.data.source == "cifar100" and cfg.data.root == "data"
    assert cfg.data.val_fraction == 0.0 and cfg.data.test_size is None
    assert cfg.data.augment == AUGMENT
    assert cfg.teacher is not None and cfg.teacher.checkpoint is None
    assert cfg.teacher.model == {"type": teacher} and cfg.student.model == {"type": student}
    assert cfg.student.train_subset is None and cfg.student.baseline
    for train, rate in ((cfg.teacher.train, 0.05), (cfg.student.train, lr)):
        assert (train.epochs, train.batch_size) == (240, 64)
        opt, sched = train.optimizer, train.schedule
        assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", rate, 0.9, 5e-4)
        assert not opt.nesterov and not train.optimizers
        assert (sched.name, sched.milestones, sched.gamma) == ("multistep", [150, 180, 210], 0.1)
        assert sched.warmup_epochs == 0 and train.precision == "fp32" and not train.keep_best
    assert cfg.distill.scheme == "offline" and cfg.distill.train is None
    assert cfg.distill.stages is None
    assert loss_spec(cfg) == expected_loss(method, teacher, student)
    # the header quotes the published figures of this file's row
    header = path.read_text()
    quoted = (
        f"Published ({source}): teacher {teacher_acc:.2f}, student alone "
        f"{student_acc:.2f}, {LABELS[method]} {figure:.2f} (% test accuracy)."
    )
    assert quoted in header
    assert re.search(rf"^  # checkpoint: path/to/{teacher}/model\.pt$", header, re.M)


def loss_spec(cfg: ExperimentConfig) -> list[tuple]:
    """The loss terms as (type, weight, student tap, teacher tap, other options)."""
    terms = []
    for term in cfg.distill.loss or []:
        rest = {k: v for k, v in term.items() if k not in ("type", "weight", "student", "teacher")}
        rest.pop("name", None)
        terms.append((term["type"], term["weight"], term.get("student"), term.get("teacher"), rest))
    return terms


def expected_loss(method: str, teacher: str, student: str) -> list[tuple]:
    """RepDistiller's scripts/run_cifar_distill.sh (the DKD, ReviewKD and DIST authors' settings
    for those methods), in kdlab's terms (see the README)."""
    (t_at, t_hint, t_sp), (s_at, s_hint, s_sp) = TAPS[family(teacher)], TAPS[family(student)]
    if method == "kd":  # -r 0.1 -a 0.9 -b 0, T = 4
        soft = {"temperature": 4, "divergence": "kl"}
        return [("ce", 0.1, None, None, {}), ("soft_target", 0.9, None, None, soft)]
    ce = [("ce", 1.0, None, None, {})]
    if method == "fitnet":  # -b 100 on MSE = 200 on kdlab's ½·mean
        opts = {"reduction": "mean", "adapter": "conv", "adapter_bn": True}
        return [*ce, ("hint", 200, s_hint, t_hint, opts)]
    if method == "at":  # -b 1000 on each of feat[1:-1]
        return [*ce, *(("at", 1000, s, t, {"p": 2}) for s, t in zip(s_at, t_at, strict=True))]
    if method == "sp":  # -b 3000 on feat[-2]
        return [*ce, ("sp", 3000, s_sp, t_sp, {})]
    if method == "crd":  # -a 0 -b 0.8 on feat[-1]: d 128, N 16384, τ 0.07, momentum 0.5
        opts = {"embedding_dim": 128, "negatives": 16384, "temperature": 0.07, "momentum": 0.5}
        return [*ce, ("crd", 0.8, "pool", "pool", opts)]
    if method == "dkd":  # mdistiller: CE_WEIGHT 1, ALPHA 1, BETA per pair, T 4, WARMUP 20
        opts = {"alpha": 1.0, "beta": DKD[(teacher, student)][1], "temperature": 4, "warmup": 20}
        return [*ce, ("dkd", 1.0, None, None, opts)]
    if method == "review":  # reviewKD.sh --kd-loss-weight 5, --kd-warm-up 20, on feat[1:]
        levels = ([*s_at, "pool"], [*t_at, "pool"])
        return [*ce, ("review", 5, *levels, {"warmup_epochs": 20})]
    if method == "dist":  # DIST's CIFAR-100 setting: β = γ = 2, τ = 4, no KL term
        return [*ce, ("dist", 1.0, None, None, {"beta": 2, "gamma": 2, "temperature": 4})]
    if method == "rkd":  # -b 1, w_d 25, w_a 50 on feat[-1]
        return [*ce, ("rkd_distance", 25, "pool", "pool", {}),
                ("rkd_angle", 50, "pool", "pool", {})]  # fmt: skip
    assert method == "pkt"  # -b 30000 over b² entries = 30000 / 64 over kdlab's anchors
    return [*ce, ("pkt", 30000 / 64, "pool", "pool", {})]


def check_runs(result, store: RunStore, raw: dict, roles: list[str]) -> None:
    assert [run.role for run in result.runs] == roles
    stored = {r.id: r for r in store.list_runs(experiment=raw["name"])}
    for run in result.runs:
        assert stored[run.run_id].status == "finished" and stored[run.run_id].role == run.role
        assert 0.0 <= run.metrics["accuracy"] <= 1.0
        assert all(math.isfinite(v) for v in run.metrics.values()), run.role
        assert run.history and all(math.isfinite(v) for row in run.history for v in row.values())
    logged = result.runs[-1].history[-1]  # every loss term of the recipe ran and was logged
    for term in raw["distill"]["loss"]:
        key = term.get("name", term["type"])
        assert any(k == key or k.endswith(f".{key}") for k in logged), (key, logged)


@pytest.mark.parametrize("pair", list(PAIRS), ids=["_".join(p) for p in PAIRS])
def test_kd_recipe_trains_teacher_student_and_distilled(
    pair: tuple[str, str], data_root: Path, teachers: dict, tmp_path: Path
) -> None:
    path = FOLDER / f"{pair[0]}_{pair[1]}_kd.yaml"
    raw = shrunk(path, data_root)
    with RunStore(tmp_path / "store") as store, pytest.warns(TrainingNotice, match=CACHE_OFF):
        result = run_experiment(parse_config(raw, str(path)), store, progress=False)
        check_runs(result, store, raw, ["teacher", "student", "distilled"])
    teachers.setdefault(pair[0], result.teachers[0])


@pytest.mark.parametrize("path", [p for p in RECIPES if parts(p)[2] != "kd"], ids=lambda p: p.stem)
def test_feature_recipe_distills(
    path: Path, data_root: Path, teachers: dict, tmp_path: Path
) -> None:
    teacher_name, _, _ = parts(path)
    raw = shrunk(path, data_root)
    raw["student"]["baseline"] = False  # the student alone ran with the pair's _kd recipe
    teacher = teachers.get(teacher_name)
    if teacher is None:  # this test alone (pytest -k): the teacher untrained
        teacher = build_model({"type": teacher_name}, (3, 32, 32), 100, seed=0).eval()
        teachers[teacher_name] = teacher
    with RunStore(tmp_path / "store") as store, pytest.warns(TrainingNotice, match=CACHE_OFF):
        result = run_experiment(
            parse_config(raw, str(path)), store, progress=False, teachers={0: teacher}
        )
        check_runs(result, store, raw, ["distilled"])
