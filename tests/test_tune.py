"""``kdlab tune``: Optuna studies whose trials are ordinary runs in the store, pruning recorded,
and every bad ``--param`` a one-line error naming the fix."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.resume import config_fingerprint
from kdlab.store import RunStore
from kdlab.tune import ParamSpec, TuneOptions, best_lines, check_params, parse_param, run_study
from kdlab.tune_checks import ATTR_CONFIG, ATTR_PARAMS, identity

TINY = textwrap.dedent(
    """
    name: tiny
    seeds: [0]
    data: {source: digits}
    teacher:
      model: {type: mlp, hidden: [16]}
      train: {epochs: 2, threads: 1}
    student:
      model: {type: mlp, hidden: [8]}
      train: {epochs: 2, threads: 1}
    """
)
PARAMS = ["distill.loss.1.temperature=log:1:20", "distill.loss.0.weight=0:1",
          "student.train.optimizer.name=choice:sgd,adam"]  # fmt: skip


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns when not on a terminal; the tests read whole lines."""
    monkeypatch.setattr(terminal, "err_console", Console(stderr=True, width=200))


def tiny_config() -> object:
    import yaml

    return parse_config(yaml.safe_load(TINY), "tiny.yaml")


# -- param specs ----------------------------------------------------------------------------------


def test_param_specs_parse_with_yaml_typed_choices() -> None:
    assert parse_param("a.b=0:1") == ParamSpec("a.b", "float", 0.0, 1.0, text="a.b=0:1")
    assert parse_param("a=log:1e-4:0.1").kind == "log"
    spec = parse_param("student.train.epochs=int:2:30")
    assert (spec.kind, spec.low, spec.high) == ("int", 2, 30)
    assert parse_param("x=choice:sgd,adam").choices == ("sgd", "adam")
    assert parse_param("x=choice:1, 2.5, true, null").choices == (1, 2.5, True, None)
    assert parse_param("x=choice:[16],[32, 32]").choices == ([16], [32, 32])
    assert parse_param("x=choice:1,1.0,true").choices == (1, 1.0, True)  # three values, not one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("distill.loss.1.temperature", "is not key=low:high, key=log:low:high, key=int:low:high"),
        ("t=", "is not key=low:high"),
        ("t=1:abc", "write t=LOW:HIGH with two numbers"),
        ("t=1:2:3", "write t=LOW:HIGH with two numbers"),
        ("t=0:inf", "write t=LOW:HIGH with two numbers"),
        ("t=int:1.5:4", "write t=int:LOW:HIGH with two integers"),
        ("t=5:1", "low must be below high; write t=1.0:5.0"),
        ("t=int:3:3", "low equals high; set it with the override t=3"),
        ("t=log:0:20", "a log range needs 0 < low; write e.g. t=log:0.2:20, or the uniform range"),
        ("t=log:-1:20", "a log range needs 0 < low"),
        ("t=choice:", "choice needs values; write t=choice:a,b"),
        ("t=choice: , ", "choice needs values"),
        ("t=choice:1,2,1", "lists 1 twice; each value once"),
        ("t=choice:[8],[16],[8]", "lists [8] twice; each value once"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_param(text)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"--param '{text}'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("studnt.train.epochs=int:1:3", "unknown key 'studnt' (did you mean 'student'?)"),
        ("student.trian.epochs=int:1:3", "unknown key 'student.trian' (did you mean 'train'?)"),
        ("student.train.optimizer.name=choice:sgd,nope", "nope"),
        ("student.train.epochs=int:-2:3", "student.train.epochs"),
    ],
)
def test_an_unknown_key_or_invalid_value_fails_before_any_trial(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        check_params(tiny_config(), [parse_param(text)])
    assert str(err.value).startswith(f"--param '{text}': ")


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="names a key twice"):
        check_params(
            tiny_config(), [parse_param("seeds=choice:[0]"), parse_param("seeds=choice:[1]")]
        )


# -- studies --------------------------------------------------------------------------------------


def test_a_study_of_three_trials_lands_in_the_store(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import optuna

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    storage, store = f"sqlite:///{tmp_path / 'tune.db'}", tmp_path / "store"
    args = ["tune", str(config), "--trials", "3", "--storage", storage, "--store", str(store),
            *(a for p in PARAMS for a in ("--param", p))]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("trial ")] == [
        "trial 0", "trial 1", "trial 2"
    ]  # fmt: skip
    assert any(line.startswith("best: trial ") for line in lines)
    assert any(line.startswith(f"run it: kdlab run {config} distill.loss.1") for line in lines)
    assert lines[-1].endswith(f" --store {store}")  # reproduces the trial: into the same store

    study = optuna.load_study(study_name="tiny-tune", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    best = study.best_params
    assert 1 <= best["distill.loss.1.temperature"] <= 20
    assert 0 <= best["distill.loss.0.weight"] <= 1
    assert best["student.train.optimizer.name"] in ("sgd", "adam")
    assert len({t.params["distill.loss.0.weight"] for t in study.trials}) == 3  # really searched

    records = RunStore(store).list_runs(experiment="tiny-tune")
    distilled = [r for r in records if r.role == "distilled"]
    assert sorted(r.role for r in records) == ["distilled"] * 3 + ["teacher"]  # teacher once
    assert all(r.status == "finished" for r in records)
    for run in distilled:
        trial = study.trials[run.config["tune"]["trial"]]
        assert run.config["tune"]["params"] == trial.params
        assert (
            run.config["experiment"]["distill"]["loss"][0]["weight"]
            == trial.params["distill.loss.0.weight"]
        )
        assert run.id in trial.user_attrs["runs"]
        history = RunStore(store).history(run.id)
        assert trial.value == pytest.approx(history[-1]["val_accuracy"])  # validation, not test

    again = CliRunner().invoke(cli.app, [*args[:3], "4", *args[4:]])  # --trials 4: one more
    assert again.exit_code == 0, again.output
    assert "3 trial(s) done, 1 to run" in again.stdout
    assert len(optuna.load_study(study_name="tiny-tune", storage=storage).trials) == 4


class AlwaysPrune:
    """A pruner that stops every trial at its first report."""

    def prune(self, study: object, trial: object) -> bool:
        return True


def test_a_pruned_trial_is_recorded_as_failed_with_the_reason(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")

    class Always(AlwaysPrune, optuna.pruners.BasePruner):
        pass

    lines: list[str] = []
    options = TuneOptions(trials=1, storage=f"sqlite:///{tmp_path / 't.db'}", name="pruned",
                          progress=False, pruner=Always())  # fmt: skip
    store = RunStore(tmp_path / "store")
    study = run_study(tiny_config(), PARAMS[:1], store, options, lines.append)
    assert [t.state.name for t in study.trials] == ["PRUNED"]
    (run,) = store.list_runs(experiment="pruned", role="distilled")
    assert run.status == "failed"
    assert "TrialPruned: trial 0 pruned by Always at epoch 1/2 of distilled s0" in run.error
    assert len(store.history(run.id)) == 1  # the epoch it was judged on is kept
    assert any(line.startswith("trial 0: pruned after 1 validation(s)") for line in lines)
    assert lines[-1] == "no trial of study pruned completed (1 pruned)"


def test_tags_leave_the_experiment_fingerprint_unchanged(tmp_path: Path) -> None:
    from kdlab.experiment import run_experiment

    cfg = tiny_config()
    store = RunStore(tmp_path / "store")
    run_experiment(cfg, store, progress=False, tags={"tune": {"trial": 7}})
    for record in store.list_runs():
        assert record.config["tune"] == {"trial": 7}
        assert config_fingerprint(record.config["experiment"]) == config_fingerprint(
            cfg.model_dump(mode="json")
        )


def test_without_optuna_tune_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    result = CliRunner().invoke(cli.app, ["tune", str(config), "--param", PARAMS[0]])
    assert result.exit_code == 2
    assert result.output.strip() == "error: kdlab tune needs Optuna: pip install kdlab[tune]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "t=log:0:20"], "a log range needs 0 < low"),
        (["--param", "distill.los.1.temperature=1:2"], "unknown key 'distill.los'"),
        ([], "kdlab tune needs at least one --param"),
        (["--param", PARAMS[0], "--storage", "tune.db"], "is not a database URL"),
        (
            ["--param", PARAMS[0], "distill.loss.1.temperature=3"],
            "distill.loss.1.temperature is set twice (by the override "
            "'distill.loss.1.temperature=3' and by --param 'distill.loss.1.temperature=log:1:20'); "
            "set each key once",
        ),
        (  # the searched list would replace the overridden value inside it
            ["--param", "distill.loss=choice:[{type: ce}]", "distill.loss.0.weight=0.5"],
            "distill.loss.0.weight is set twice",
        ),
        (["--param", "seeds=choice:[0],[1]", "--seeds", "0"], "seeds is set twice (by --seeds 0"),
        (["--param", "distill.loss.0.weight=choice:0.5,0.5"], "lists 0.5 twice; each value once"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    pytest.importorskip("optuna")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    result = CliRunner().invoke(cli.app, ["tune", str(config), "--store", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    lines: list[str] = []
    options = TuneOptions(trials=2, storage=f"sqlite:///{tmp_path / 't.db'}", name="nan",
                          progress=False)  # fmt: skip
    store = RunStore(tmp_path / "store")
    study = run_study(tiny_config(), ["student.train.optimizer.lr=log:1e30:1e31"], store,
                      options, lines.append)  # fmt: skip
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # both ran: no abort
    assert [line.split(": ")[:2] for line in lines[1:3]] == [["trial 0", "failed"],
                                                              ["trial 1", "failed"]]  # fmt: skip
    assert "non-finite loss at epoch 1" in lines[1]
    assert lines[-1] == "no trial of study nan completed (2 failed)"
    assert {r.status for r in store.list_runs(role="distilled")} == {"failed"}


def test_help_texts_are_not_cut_by_rich_markup() -> None:
    result = CliRunner().invoke(cli.app, ["tune", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Study and experiment name (default: the config's name with -tune)." in result.output
    assert "Run store folder or postgresql:// URL (default: as kdlab run)." in result.output


def test_storage_in_the_run_store_file_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import sqlite3

    config, store = tmp_path / "tiny.yaml", tmp_path / "store"
    config.write_text(TINY)
    RunStore(store).close()
    url = f"sqlite:///{store / 'kdlab.sqlite'}"
    args = ["tune", str(config), "--store", str(store), "--param", PARAMS[0], "--storage", url]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (  # one line, wrapped by the terminal width
        f"error: --storage '{url}': that file is kdlab's run store; give the tuning study its own "
        "file, e.g. sqlite:///tune.db"
    )
    with sqlite3.connect(store / "kdlab.sqlite") as conn:  # Optuna added no table
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "studies" not in tables and "runs" in tables


def test_a_continued_study_keeps_its_params_and_config(tmp_path: Path) -> None:
    """The QA repro: a rerun with other --param or another config must not continue the study
    (and then recommend its best trial with this command's config)."""
    pytest.importorskip("optuna")
    config, store = tmp_path / "tiny.yaml", tmp_path / "store"
    config.write_text(TINY)
    base = ["tune", str(config), "--seeds", "0", "--store", str(store),
            "--storage", f"sqlite:///{tmp_path / 'tune.db'}", "--trials"]  # fmt: skip
    first = CliRunner().invoke(cli.app, [*base, "1", "--param", PARAMS[1]])
    assert first.exit_code == 0, first.output
    value = first.stdout.split("run it:")[1].split("weight=")[1].split()[0]
    assert first.stdout.splitlines()[-1] == (  # reproduces the trial: its seeds and store
        f"run it: kdlab run {config} distill.loss.0.weight={value} --seeds 0 --store {store}"
    )

    other_param = CliRunner().invoke(cli.app, [*base, "3", "--param", PARAMS[0]])
    assert other_param.exit_code == 2, other_param.output
    assert " ".join(other_param.output.split()) == (
        "error: study 'tiny-tune' in --storage searches distill.loss.0.weight=0.0:1.0, not "
        "distill.loss.1.temperature=log:1.0:20.0; give a new --name for a new search, or the "
        "study's --param again"
    )
    other_config = CliRunner().invoke(
        cli.app, [*base, "3", "--param", PARAMS[1], "student.model.hidden=[4]"]
    )
    assert other_config.exit_code == 2, other_config.output
    assert " ".join(other_config.output.split()) == (
        "error: study 'tiny-tune' in --storage was run on another config (it was started as "
        f"kdlab tune {config} --seeds 0 --store {store}); give a new --name for this config, or "
        "the study's config, overrides and --seeds again"
    )
    config.write_text(TINY.replace("hidden: [8]", "hidden: [6]"))
    edited = CliRunner().invoke(cli.app, [*base, "3", "--param", PARAMS[1]])
    assert edited.exit_code == 2 and "(its config file changed since)" in " ".join(
        edited.output.split()
    )
    assert [r.config["tune"]["trial"] for r in RunStore(store).list_runs(role="distilled")] == [0]

    config.write_text(TINY)
    same = CliRunner().invoke(cli.app, [*base, "2", "--param", "distill.loss.0.weight=0:1.0"])
    assert same.exit_code == 0, same.output  # the same range, spelt otherwise
    assert "1 trial(s) done, 1 to run" in same.stdout


def test_the_run_it_line_quotes_a_list_for_the_shell() -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    choice = optuna.distributions.CategoricalDistribution(["[16, 16]"])
    study.tell(study.ask({"student.model.hidden": choice}), 0.5)
    lines = best_lines(study, "exp.yaml", "--seeds 0")
    assert lines[-1] == "run it: kdlab run exp.yaml 'student.model.hidden=[16, 16]' --seeds 0"


def test_the_study_identity_ignores_the_name_and_the_searched_keys_values() -> None:
    cfg, specs = tiny_config(), [parse_param(PARAMS[0])]
    key = identity(cfg, specs, "")
    assert key[ATTR_PARAMS] == ["distill.loss.1.temperature=log:1.0:20.0"]
    renamed = apply(cfg, "name=other", "distill.loss.1.temperature=9")  # no trial sees them
    assert identity(renamed, specs, "")[ATTR_CONFIG] == key[ATTR_CONFIG]
    for change in ("student.model.hidden=[4]", "seeds=[1]", "distill.loss.0.weight=0.3"):
        assert identity(apply(cfg, change), specs, "")[ATTR_CONFIG] != key[ATTR_CONFIG], change


def apply(cfg: object, *overrides: str) -> object:
    from kdlab.overrides import apply_overrides

    return apply_overrides(cfg, list(overrides))


def test_a_study_from_before_kdlab_recorded_its_params_continues(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 't.db'}"
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    trial = old.ask({"distill.loss.0.weight": optuna.distributions.FloatDistribution(0, 1)})
    old.tell(trial, 0.5)
    lines: list[str] = []
    options = TuneOptions(trials=1, storage=storage, name="old", progress=False)
    study = run_study(tiny_config(), PARAMS[:1], None, options, lines.append)
    assert lines[0].startswith("study old: 1 trial(s) done, 0 to run")  # no refusal, no trial
    assert study.user_attrs[ATTR_PARAMS] == ["distill.loss.1.temperature=log:1.0:20.0"]  # now kept
