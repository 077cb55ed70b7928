"""Any model's outputs and inputs: logits read from a tensor, tuple, list, dict, dataclass or
namedtuple output (``output_index`` / ``output_key`` or :func:`kdlab.models.select_output` where
the default does not fit), keyword (dict) inputs, feature taps on such models, factory functions
as ``model.type``, and a one-line ConfigError for each output kdlab cannot read.

The models of tests/model_helpers.py compute the same logits in every output form, so training
one of them must give exactly the numbers of its plain-tensor twin built from the same seed: any
mistake in reading the logits (a feature taken for them, a wrong position) changes the numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

import kdlab
from kdlab import cli, terminal
from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.inference import forward_with_taps, model_output, predict_logits
from kdlab.losses import CrossEntropy, Hint, hinton_loss
from kdlab.models import build_model, check_model_spec, select_output
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runs import Recorder, check_num_classes
from kdlab.schemes.cache import TeacherCache
from kdlab.schemes.mutual import mutual_learning
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch
from model_helpers import FORMS, AuxOutputMLP, OutputMLP, TokenBag, same_metrics, token_splits

FAST = TrainSettings(epochs=3, optimizer={"name": "adam", "lr": 0.003}, threads=1)
HELPERS = "model_helpers"


def mlp(form: str, seed: int = 0, hidden: int = 32, **kw) -> OutputMLP:
    torch.manual_seed(seed)
    return OutputMLP(64, 10, hidden=hidden, form=form, **kw)


def trained(model: torch.nn.Module, data) -> dict[str, float]:
    return kdlab.train(model, data, settings=FAST, progress=False).metrics


# -- reading logits --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_every_output_form_gives_the_plain_models_logits(form: str) -> None:
    x = torch.rand(5, 64)
    plain, other = mlp("tensor"), mlp(form)
    out = model_output(other, other(x), "student")
    assert torch.equal(out.logits, plain(x)) and out.logits.shape == (5, 10)


@pytest.mark.parametrize(
    ("form", "built", "selection"),
    [
        ("tuple", {"logits_at": 1}, {"index": 1}),
        ("list", {"logits_at": 2}, {"index": 2}),
        ("dict", {"key": "scores"}, {"key": "scores"}),
        ("dict", {"key": "scores"}, {"index": 1}),  # a dict's values in order, as HF's to_tuple
        ("dataclass", {}, {"index": 0}),
        ("namedtuple", {}, {"key": "logits"}),
    ],
)
def test_a_selection_picks_the_logits(form: str, built: dict, selection: dict) -> None:
    x = torch.rand(4, 64)
    model = select_output(mlp(form, **built), **selection)
    assert torch.equal(model_output(model, model(x)).logits, mlp("tensor")(x))


def test_a_namedtuple_is_read_by_its_logits_field_not_its_first_element() -> None:
    model = mlp("namedtuple")  # Pair(hidden, logits): position 0 holds the features
    assert model_output(model, model(torch.rand(3, 64))).logits.shape == (3, 10)


def test_the_selection_is_kept_by_copies_and_leaves_the_state_dict_alone() -> None:
    model = select_output(mlp("tuple", logits_at=1), index=1)
    copied = copy.deepcopy(model)
    x = torch.rand(3, 64)
    assert torch.equal(model_output(copied, copied(x)).logits, mlp("tensor")(x))
    assert list(model.state_dict()) == list(mlp("tensor").state_dict())
    assert [n for n, _ in model.named_modules()] == [n for n, _ in mlp("tensor").named_modules()]
    select_output(model)  # neither: back to the default (element 0: the features)
    assert model_output(model, model(x)).logits.shape == (3, 32)


# -- through the Python API: the same numbers as the plain-tensor twin -----------------------------


@pytest.mark.parametrize("form", [f for f in FORMS if f != "tensor"])
def test_training_any_output_form_matches_the_plain_model(digits, form: str) -> None:
    plain = trained(mlp("tensor"), digits)
    assert plain["accuracy"] > 0.5
    assert same_metrics(trained(mlp(form), digits), plain)


@pytest.mark.parametrize(
    ("teacher_form", "student_form", "cache"),
    [("tuple", "dict", True), ("dataclass", "list", False), ("namedtuple", "dataclass", True)],
)
def test_distilling_between_output_forms_matches_plain_models(
    digits, teacher_form: str, student_form: str, cache: bool
) -> None:
    settings = FAST.model_copy(update={"cache_teacher": cache, "epochs": 8})
    teachers = {form: mlp(form, seed=1, hidden=64) for form in ("tensor", teacher_form)}
    for teacher in teachers.values():  # both learn the same weights from the same start
        kdlab.train(teacher, digits, settings=FAST, progress=False)
    results = [
        kdlab.distill(teachers[t], mlp(s, seed=2, hidden=8), digits, settings=settings,
                      loss=hinton_loss(4.0, 0.9), progress=False).metrics
        for t, s in (("tensor", "tensor"), (teacher_form, student_form))
    ]  # fmt: skip
    assert results[0]["agreement"] > 0.5
    assert same_metrics(results[1], results[0])


def test_output_selection_from_a_spec_and_from_python_match_the_plain_model(digits) -> None:
    plain = trained(mlp("tensor"), digits)
    spec = {"type": f"{HELPERS}:output_mlp", "form": "tuple", "logits_at": 1, "output_index": 1}
    torch.manual_seed(0)
    from_spec = build_model(spec, digits.input_shape, digits.num_classes)
    assert same_metrics(trained(from_spec, digits), plain)
    by_key = select_output(mlp("dict", key="scores"), key="scores")
    assert same_metrics(trained(by_key, digits), plain)


def test_a_model_returning_a_tuple_in_training_and_a_tensor_in_eval(digits) -> None:
    torch.manual_seed(0)
    model = select_output(AuxOutputMLP(64, 10), index=0)
    assert same_metrics(trained(model, digits), trained(mlp("tensor"), digits))


def test_an_output_kdlab_cannot_read_says_what_a_model_must_return() -> None:
    with pytest.raises(ConfigError, match=r"the teacher returns an int; a model must return"):
        model_output(mlp("tensor"), 3, "teacher")
    with pytest.raises(ConfigError, match=r"the student's output 0 is None, not a logits tensor"):
        model_output(mlp("tensor"), (None, torch.zeros(2, 3)), "student")


# -- dict (keyword) inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens():
    return token_splits(n_train=384, n_test=192)


def token_bag(seed: int, form: str = "dict", size: int = 32) -> TokenBag:
    torch.manual_seed(seed)
    return TokenBag(50, 2, dim=size // 2, hidden=size, form=form)


def test_keyword_input_models_train_and_distill(tokens) -> None:
    settings = TrainSettings(epochs=15, optimizer={"name": "adam", "lr": 0.01}, threads=1)
    teacher = kdlab.train(token_bag(0), tokens, settings=settings, progress=False)
    assert teacher.metrics["accuracy"] > 0.75  # chance: about 0.53
    distilled = [
        kdlab.distill(teacher.model, token_bag(1, "dataclass", 8), tokens, progress=False,
                      settings=settings.model_copy(update={"cache_teacher": cache})).metrics
        for cache in (True, False)
    ]  # fmt: skip
    assert distilled[0]["accuracy"] > 0.7 and distilled[0]["agreement"] > 0.75
    assert same_metrics(distilled[0], distilled[1])  # the cache reads dict inputs right


def test_the_teacher_cache_fills_rows_of_dict_inputs(tokens) -> None:
    teacher = token_bag(0, "tuple").eval()
    cache = TeacherCache(teacher)
    inputs = tokens.train.inputs(slice(0, 8))
    first = cache(Batch(tokens.train.inputs(slice(0, 4)), tokens.train.y[:4], torch.arange(4)))
    both = cache(Batch(inputs, tokens.train.y[:8], torch.arange(8)))  # rows 4..7 computed now
    expected = teacher(**inputs)[0]
    assert torch.allclose(both, expected) and torch.allclose(first, expected[:4])


def test_feature_taps_work_on_dict_inputs_and_non_tensor_outputs(tokens) -> None:
    model = token_bag(0, "dataclass")
    out = forward_with_taps(model, tokens.train.inputs(slice(0, 6)), ["embed", "features.1"])
    assert out.logits.shape == (6, 2)
    assert out.features["embed"].shape == (6, 12, 16) and out.features["features.1"].shape == (
        6,
        32,
    )


def test_an_ensemble_of_keyword_input_members_with_different_outputs(tokens) -> None:
    members = [token_bag(0, "dict"), token_bag(1, "tuple"), token_bag(2, "dataclass")]
    logits = predict_logits(EnsembleTeacher(members), tokens.test)
    inputs = tokens.test.inputs()
    with torch.no_grad():
        probs = [torch.softmax(model_output(m, m(**inputs)).logits, -1) for m in members]
    assert torch.allclose(logits.exp(), torch.stack(probs).mean(0), atol=1e-6)


def test_mutual_learning_of_keyword_input_peers_with_different_outputs(tokens) -> None:
    settings = TrainSettings(epochs=10, optimizer={"name": "adam", "lr": 0.01}, threads=1)
    peers = [token_bag(0, "dict"), token_bag(1, "namedtuple", 16)]
    runs = mutual_learning(peers, tokens, settings=settings, recorder=Recorder(progress=False))
    assert all(run.metrics["accuracy"] > 0.7 for run in runs)  # chance: about 0.53


def test_predict_logits_takes_a_dict_of_keyword_inputs(tokens) -> None:
    model = token_bag(0, "tuple")
    whole = predict_logits(model, tokens.test)
    assert torch.equal(predict_logits(model, tokens.test.inputs(), batch_size=50), whole)


@pytest.mark.parametrize("inputs", ["images", "tokens"])
def test_a_hint_term_learns_through_taps_of_such_models(digits, tokens, inputs: str) -> None:
    if inputs == "images":
        data, teacher, student = digits, mlp("tuple", 1, 64), mlp("dict", 2, 16)
    else:
        data, teacher, student = tokens, token_bag(1, "tuple", 64), token_bag(2, "dataclass", 16)
    settings = TrainSettings(epochs=8, optimizer={"name": "adam", "lr": 0.003}, threads=1)
    loss = [CrossEntropy(weight=0.0), Hint(student="features.1", teacher="features.1")]
    result = kdlab.distill(teacher, student, data, loss=loss, settings=settings, progress=False)
    hint = [row["hint"] for row in result.history]
    assert hint[-1] < 0.5 * hint[0]  # the student's features move to the teacher's


# -- YAML: factory functions as model.type ---------------------------------------------------------


def config(student: dict, teacher: dict | None = None, epochs: int = 3) -> dict:
    train = {"epochs": epochs, "optimizer": {"name": "adam", "lr": 0.003}, "threads": 1}
    return {
        "name": "outputs", "seeds": [0], "data": {"source": "digits"},
        "teacher": {"model": teacher or {"type": "mlp", "hidden": [32]}, "train": train},
        "student": {"model": student, "train": train},
    }  # fmt: skip


def test_a_yaml_experiment_with_factory_functions_and_selected_outputs(tmp_path: Path) -> None:
    teacher = {"type": f"{HELPERS}:output_mlp", "hidden": 64, "form": "dict", "key": "scores",
               "output_key": "scores"}  # fmt: skip
    student = {"type": f"{HELPERS}:output_mlp_any", "hidden": 16, "form": "tuple",
               "logits_at": 1, "output_index": 1}  # fmt: skip
    store = RunStore(tmp_path / "store")
    result = run_experiment(parse_config(config(student, teacher, 8)), store, progress=False)
    (t,), (d,) = result.by_role("teacher"), result.by_role("distilled")
    assert t.metrics["accuracy"] > 0.85 and d.metrics["agreement"] > 0.7
    assert {r.status for r in store.list_runs(experiment="outputs")} == {"finished"}


def test_factory_arguments_are_checked_unless_it_takes_any_keyword() -> None:
    with pytest.raises(ConfigError, match="has no argument 'hiden'; valid arguments: in_features"):
        check_model_spec({"type": f"{HELPERS}:output_mlp", "hiden": 8})
    check_model_spec({"type": f"{HELPERS}:output_mlp_any", "anything": 8})  # **kwargs: no check
    model = build_model({"type": f"{HELPERS}:output_mlp"}, (64,), 7)
    assert model.head.out_features == 7 and model.features[0].in_features == 64  # filled in


# -- bad input: one line naming the fix, nothing in the store --------------------------------------


BAD = [
    ({"form": "dict", "output_key": "scores"},
     "student.model: the student produces no output 'scores'; it produces 'hidden', 'logits': set "
     "output_key"),
    ({"form": "tuple", "output_index": 3},
     "output_index 3 is out of range: the student returns a tuple of 2; set output_index to 0…1"),
    ({"form": "dict", "key": "scores"},
     "the student returns a dict without 'logits' (it has 'hidden', 'scores'); set output_key"),
    ({"form": "tuple", "num_classes": 5},
     "the student outputs (2, 5) for a batch of 2, but digits has 10 classes"),
    ({"form": "tuple", "logits_at": 1},  # the default (element 0) holds the features
     "outputs (2, 32) for a batch of 2, but digits has 10 classes: its logits must have shape "
     "[batch, 10] (set its num_classes to 10, or select its logits with output_index"),
    ({"type": f"{HELPERS}:not_a_model"},
     "model 'model_helpers:not_a_model' returned 'an MLP of 64 inputs' (str), not an nn.Module"),
]  # fmt: skip


@pytest.mark.parametrize(("student", "message"), BAD)
def test_bad_outputs_are_one_line_errors_and_nothing_is_stored(
    tmp_path: Path, student: dict, message: str
) -> None:
    spec = {"type": f"{HELPERS}:output_mlp", **student}
    store = RunStore(tmp_path / "store")
    with pytest.raises(ConfigError) as info:
        run_experiment(parse_config(config(spec)), store, progress=False)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list_runs() == []


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"output_index": -1}, "output_index must be an integer ≥ 0"),
        ({"output_index": True}, "output_index must be an integer ≥ 0"),
        ({"output_key": ""}, "output_key must be a non-empty string"),
        ({"output_index": 0, "output_key": "logits"}, "set output_index or output_key, not both"),
    ],
)
def test_bad_selections_are_refused_when_the_config_is_read(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config({"type": "mlp", **keys}))
    with pytest.raises(ConfigError, match=message):
        select_output(mlp("tuple"), key=keys.get("output_key"), index=keys.get("output_index"))


def test_the_cli_prints_a_bad_output_key_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (cli, terminal):  # rich wraps at 80 columns off a terminal; read whole lines
        monkeypatch.setattr(module, "console", Console(width=300))
        monkeypatch.setattr(module, "err_console", Console(stderr=True, width=300))
    path = tmp_path / "bad.yaml"
    spec = {"type": f"{HELPERS}:output_mlp", "form": "dict", "output_key": "probs"}
    path.write_text(yaml.safe_dump(config(spec)))
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "no output 'probs'; it produces 'hidden', 'logits'" in lines[0]


def test_the_class_count_check_reads_logits_as_training_does(digits) -> None:
    check_num_classes(mlp("namedtuple"), digits, "teacher")  # the logits field, not element 0
    with pytest.raises(ConfigError, match=r"the teacher outputs \(2, 5\) for"):
        check_num_classes(OutputMLP(64, 5, form="dataclass"), digits, "teacher")
