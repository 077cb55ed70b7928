"""Tests of multi-stage training (kdlab.schemes.offline, kdlab.freeze) and the FitNets recipe on it.

FitNets (seed 004): stage 1 trains only the student's guided part (and the hint regressor) —
every other parameter *and buffer* (BatchNorm statistics) of the student must be bit-identical
afterwards — and stage 2 trains the whole student. Also: stage runs in the store, the exported
student without adapters, config validation of ``distill.stages``, the example configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kdlab import checkpoint as ckpt
from kdlab.config import load_config, parse_config
from kdlab.data import load_dataset
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.freeze import hold_frozen_in_eval, train_only
from kdlab.losses import CrossEntropy, Hint, SoftTarget, Term
from kdlab.models import SmallCNN
from kdlab.runs import Recorder, RunInfo
from kdlab.schemes.offline import Stage, fit_stages
from kdlab.schemes.registry import REGISTERED, SchemeSpec
from kdlab.settings import TrainSettings, merge_settings
from kdlab.store import RunStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def toy_data(n: int = 48) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    small = ArrayDataset(x[:12], y[:12])
    return DataSplits("toy", ArrayDataset(x, y), small, small, 3)


def models() -> tuple[SmallCNN, SmallCNN]:
    torch.manual_seed(0)
    teacher = SmallCNN(1, 3, channels=(8, 16), hidden=16, input_shape=(1, 8, 8)).eval()
    student = SmallCNN(1, 3, channels=(4, 8), hidden=8, input_shape=(1, 8, 8))
    return teacher, student


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


SETTINGS = TrainSettings(epochs=2, batch_size=16, threads=1)
QUIET = Recorder(progress=False)


def test_fitnets_stage1_trains_only_the_guided_part_then_stage2_trains_everything() -> None:
    teacher, student = models()
    data = toy_data()
    # Guided layer: the student's first block (4×4×4); hint: the teacher's second (16×2×2), so
    # the regressor is a 1×1 conv 4 → 16 plus a 4×4 → 2×2 resize.
    hint = Hint(student="features.0", teacher="features.1")
    regressor: dict[str, dict] = {}
    prepare = hint.prepare

    def spy(*args):
        prepare(*args)
        regressor["init"] = snapshot(hint.connector)

    hint.prepare = spy  # type: ignore[method-assign]
    start = snapshot(student)
    stage1 = Stage([hint], SETTINGS, ["features.0"], "hint")
    fit_stages(student, data, [stage1], teacher, recorder=QUIET)
    after1 = snapshot(student)
    guided = {k for k in start if k.startswith("features.0.")}
    assert changed(start, after1) == guided  # weights and BatchNorm statistics of the guided part
    assert any("running_mean" in k for k in guided)
    assert changed(regressor["init"], snapshot(hint.connector)) == {"0.weight", "0.bias"}
    assert all(p.requires_grad for p in student.parameters())  # unfrozen afterwards

    stage2 = Stage([CrossEntropy(weight=0.1), SoftTarget(weight=0.9, temperature=4.0)], SETTINGS)
    fit_stages(student, data, [stage2], teacher, recorder=QUIET)
    after2 = snapshot(student)
    trainable = {k for k, p in student.named_parameters()}
    assert trainable <= changed(after1, after2)  # every parameter of the whole student moved


def test_stages_are_runs_in_the_store_and_export_a_plain_student(tmp_path: Path) -> None:
    teacher, student = models()
    stages = [
        Stage([Hint(student="features.1", teacher="features.1")], SETTINGS,
              ["features.0", "features.1"], "hint"),
        Stage([CrossEntropy(weight=0.1), SoftTarget(weight=0.9, name="kd")],
              SETTINGS.model_copy(update={"epochs": 1}), "all", "kd"),
    ]  # fmt: skip
    with RunStore(tmp_path) as store:
        runs = fit_stages(student, toy_data(), stages, teacher, RunInfo("distilled", "fitnets s0"),
                          Recorder(store, progress=False))  # fmt: skip
        records = [store.get_run(r.run_id) for r in runs]
        histories = [store.history(r.run_id) for r in runs]
    assert [r.role for r in records] == ["distilled-stage1", "distilled"]
    assert [r.name for r in records] == ["fitnets s0 stage 1/2 (hint)", "fitnets s0 stage 2/2 (kd)"]
    assert [len(h) for h in histories] == [2, 1]  # each stage its own epochs and history
    assert "hint" in histories[0][0] and "kd" in histories[1][0]
    assert records[0].config["stage"] == {
        "index": 1, "of": 2, "name": "hint", "trainable": ["features.0", "features.1"]
    }  # fmt: skip
    for record in records:
        exported = ckpt.load_state_dict(record.artefacts["model"])
        assert exported.keys() == student.state_dict().keys()
    objective = ckpt.load_checkpoint(records[0].artefacts["checkpoint"])["models"]["objective"]
    assert "terms.0.connector.0.weight" in objective  # the regressor is saved with the stage
    assert torch.equal(exported["head.4.weight"], student.head[4].weight)


def test_trainable_parts_are_restored_even_when_a_stage_fails() -> None:
    class Boom(Term):
        kind = "boom_test"
        needs_teacher = False

        def forward(self, student, teacher, batch):
            raise RuntimeError("boom")

    _, student = models()
    with pytest.raises(RuntimeError, match="boom"):
        fit_stages(student, toy_data(), [Stage([Boom()], SETTINGS, ["head"])], recorder=QUIET)
    assert all(p.requires_grad for p in student.parameters())


def test_freezing_errors_and_frozen_parts_in_eval_mode() -> None:
    _, student = models()
    with (
        pytest.raises(ConfigError, match=r"has no module 'feature\.0'.*features\.0"),
        train_only(student, ["feature.0"]),
    ):
        pass
    with (
        pytest.raises(ConfigError, match="have no parameters"),
        train_only(student, ["features.0.2"]),  # a ReLU
    ):
        pass
    with train_only(student, ["head"]) as names:
        assert names and all(n.startswith("head.") for n in names)
        student.train()
        hold_frozen_in_eval(student)
        assert not student.features[0][1].training  # frozen BatchNorm: statistics stay put
        assert student.head.training and student.training
    assert all(p.requires_grad for p in student.parameters())


def test_stage_train_overrides_merge_into_the_base_settings() -> None:
    base = TrainSettings(epochs=10, batch_size=32, optimizer={"name": "sgd", "lr": 0.1})
    merged = merge_settings(base, {"epochs": 3, "optimizer": {"lr": 0.01}})
    assert (merged.epochs, merged.batch_size) == (3, 32)
    assert (merged.optimizer.name, merged.optimizer.lr) == ("sgd", 0.01)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        merge_settings(base, {"epochs": 2, "schedule": {"warmup_epochs": 2}})


STAGES = [
    {"name": "hint", "trainable": ["features.0"], "train": {"epochs": 1},
     "loss": [{"type": "hint", "student": "features.0", "teacher": "features.1"}]},
    {"name": "kd", "loss": [{"type": "ce", "weight": 0.1},
                            {"type": "soft_target", "weight": 0.9, "name": "kd"}]},
]  # fmt: skip


def error_of(distill: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({"distill": distill})
    return str(err.value)


def test_stages_config_validates_and_round_trips() -> None:
    cfg = parse_config({"distill": {"stages": STAGES}})
    assert cfg.distill.loss is None and len(cfg.distill.stages) == 2
    assert cfg.distill.stages[1].trainable == "all"
    again = parse_config(cfg.model_dump(mode="json"))
    assert again.model_dump() == cfg.model_dump()
    assert parse_config({}).distill.loss[1]["type"] == "soft_target"  # default unchanged


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"loss": [{"type": "ce"}], "stages": STAGES}, "distill.loss and distill.stages are "
         "mutually exclusive"),
        ({"stages": []}, "at distill.stages: List should have at least 1 item"),
        ({"stages": [{"loss": [{"type": "ce"}], "trainable": []}]},
         "at distill.stages.0.trainable: trainable must be 'all' or a non-empty list"),
        ({"stages": [{"loss": [{"type": "ce"}], "trainable": "head"}]}, "got 'head'"),
        ({"stages": [{"loss": [{"type": "ce"}], "train": {"epoch": 2}}]},
         "at distill.stages.0.train: unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"stages": [{"loss": [{"type": "hint", "student": "a", "teacher": "b", "adaptor": 1}]}]},
         "at distill.stages.0.loss: term 0: loss 'hint' has no parameter 'adaptor'"),
        ({"stages": [{"loss": [{"type": "at", "student": "a"}]}]},
         "needs the teacher's module path as `teacher:`"),
        ({"stages": [{"train": {"epochs": 1}}]}, "at distill.stages.0.loss: required key"),
        ({"stages": [{"loss": [{"type": "ce"}], "epochs": 3}]}, "unknown key 'epochs'"),
        ({"loss": None}, "distill.loss is null"),
    ],
)  # fmt: skip
def test_bad_stages_configs_name_the_problem(distill, message) -> None:
    assert message in error_of(distill)


def test_stages_need_the_offline_scheme(monkeypatch) -> None:
    monkeypatch.setitem(REGISTERED, "other_test", SchemeSpec("other_test", lambda ctx: []))
    assert "implemented by scheme 'offline' only" in error_of(
        {"scheme": "other_test", "stages": STAGES}
    )


def experiment(distill: dict, **student_train) -> dict:
    tiny = {"epochs": 1, "batch_size": 64, "threads": 1}
    cnn = {"type": "cnn", "channels": [8, 16], "hidden": 16}
    return {
        "name": "stages-test",
        "data": {"source": "digits", "test_size": 100},
        "teacher": {"model": cnn, "train": tiny},
        "student": {"model": {**cnn, "channels": [4, 8]}, "train": {**tiny, **student_train},
                    "baseline": False},
        "distill": distill,
    }  # fmt: skip


def test_experiment_runs_stages_through_the_offline_runner() -> None:
    result = run_experiment(parse_config(experiment({"stages": STAGES})), progress=False)
    assert [r.role for r in result.runs] == ["teacher", "distilled-stage1", "distilled"]
    assert [len(r.history) for r in result.runs[1:]] == [1, 1]
    assert "hint" in result.runs[1].history[0] and "kd" in result.runs[2].history[0]


def test_relation_loss_with_a_last_batch_of_one_fails_before_distilling() -> None:
    n = len(load_dataset("digits", seed=0, val_fraction=0.1, test_size=100).train)
    bad = next(b for b in range(60, 200) if n % b == 1)
    rkd = {"type": "rkd_distance", "student": "features.1", "teacher": "features.1"}
    cfg = parse_config(experiment({"loss": [rkd]}, batch_size=bad))
    with pytest.raises(ConfigError, match=r"last batch of every epoch holds 1"):
        run_experiment(cfg, progress=False)


EXAMPLE_METHODS = ["fitnets", "at", "attention", "global_relation", "lsp", "rkd", "sp", "pkt",
                   "relation"]  # fmt: skip
METHODS = {"hint", "at", "spatial_attention", "channel_attention", "attention_feature",
           "global_relation", "lsp", "rkd_distance", "rkd_angle", "sp", "pkt",
           "relation"}  # fmt: skip


def test_example_configs_validate_and_cover_every_method() -> None:
    files = [EXAMPLES / f"fashion_mnist_{m}.yaml" for m in EXAMPLE_METHODS]
    kinds = set()
    for path in files:
        cfg = load_config(path)
        assert cfg.data.source == "fashion-mnist"
        assert cfg.teacher.model["type"] == cfg.student.model["type"] == "cnn"
        raw = yaml.safe_load(path.read_text())["distill"]
        for loss in [raw.get("loss") or []] + [s["loss"] for s in raw.get("stages", [])]:
            kinds |= {term["type"] for term in loss}
    assert kinds >= METHODS
