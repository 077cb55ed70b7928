"""Command-line overrides ``key.path=value`` (kdlab.overrides): types, list indices, unknown keys,
and the effective config recorded by the store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.overrides import apply_overrides, parse_assignment

BASE = {
    "name": "ov", "seeds": [0], "data": {"source": "digits"},
    "teacher": {"model": {"type": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
    "student": {"model": {"type": "mlp", "hidden": [4]}, "train": {"epochs": 1}},
    "distill": {"loss": [{"type": "ce", "weight": 0.1},
                         {"type": "soft_target", "weight": 0.9, "temperature": 4.0}]},
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "value"),
    [("a=8", 8), ("a=0.5", 0.5), ("a=true", True), ("a=[0, 1]", [0, 1]), ("a=inf", math.inf),
     ("a=-inf", -math.inf), ("a=sgd", "sgd"), ("a={name: adam}", {"name": "adam"}), ("a=", ""),
     ("a=1e-3", 1e-3), ("a=1e30", 1e30), ("a=-2", -2), ("a=007", 7)],
)  # fmt: skip
def test_values_are_read_as_yaml(text: str, value: object) -> None:
    assert parse_assignment(text) == (["a"], value)


def test_overrides_reach_nested_keys_list_items_and_absent_sections() -> None:
    cfg = parse_config(BASE)
    new = apply_overrides(cfg, [
        "distill.loss.1.temperature=8", "student.train.epochs=3", "seeds=[0,1]",
        "distill.train.batch_size=32", "distill.loss.0.weight=0.2",
    ])  # fmt: skip
    assert new.distill.loss[1]["temperature"] == 8 and new.distill.loss[0]["weight"] == 0.2
    assert new.student.train.epochs == 3 and new.seeds == [0, 1]
    assert new.distill.train is not None and new.distill.train.batch_size == 32
    assert cfg.student.train.epochs == 1  # the original is untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("studnet.train.epochs=3", r"unknown key 'studnet'.*did you mean 'student'"),
        ("student.trian.epochs=3", r"unknown key 'student\.trian'.*did you mean 'train'"),
        ("student.train.epoch=3", r"epoch"),  # the schema names it
        ("distill.loss.5.temperature=2", r"distill\.loss\.5 indexes a list of 2 item"),
        ("distill.loss.-3.temperature=2", r"from 0 to 1 \(or from the end, -1 to -2\)"),
        ("distill.loss.1.temprature=2", r"temprature"),
        ("student.train.epochs=-1", r"epochs"),
        ("seeds", r"is not key\.path=value"),
        ("seeds.0.x=1", r"seeds\.0 is 0, not a mapping or list"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_fix(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(parse_config(BASE), [override])


@pytest.mark.parametrize(
    ("value", "problem"),
    [("[1,2", "expected ',' or ']'"), ("*a", "found undefined alias 'a'"), ("{a: 1", "'}'")],
)
def test_a_value_that_is_not_yaml_is_one_line(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        apply_overrides(parse_config(BASE), [f"distill.loss.1.temperature={value}"])
    assert problem in str(info.value) and "quote the whole value" in str(info.value)
    assert "\n" not in str(info.value)  # PyYAML's own errors span lines with carets


def test_the_store_records_the_overridden_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from kdlab.store import RunStore

    for module in (cli, terminal):
        monkeypatch.setattr(module, "console", Console(width=200))
        monkeypatch.setattr(module, "err_console", Console(stderr=True, width=200))
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(BASE))
    runner = CliRunner()
    done = runner.invoke(cli.app, ["run", str(config), "distill.loss.1.temperature=2",
                                   "student.train.epochs=2", "--store", str(tmp_path / "s"),
                                   "--no-progress"])  # fmt: skip
    assert done.exit_code == 0, done.output
    with RunStore(tmp_path / "s") as store:
        distilled = next(r for r in store.list_runs() if r.role == "distilled")
    recorded = distilled.config["experiment"]
    assert recorded["distill"]["loss"][1]["temperature"] == 2
    assert recorded["student"]["train"]["epochs"] == 2
    bad = runner.invoke(cli.app, ["validate", str(config), "studnet.train.epochs=2"])
    assert bad.exit_code == 2 and "did you mean 'student'" in bad.output


def test_numbers_inside_lists_and_mappings_are_numbers_as_at_the_top() -> None:
    """YAML 1.1 reads 1e-3 as a text; an override means the number wherever it stands."""
    from kdlab.overrides import parse_value

    assert parse_value("[1e-3, 2, inf, adam]") == [0.001, 2, float("inf"), "adam"]
    assert parse_value("{lr: 1e-3, betas: [0.5, 9e-1]}") == {"lr": 0.001, "betas": [0.5, 0.9]}
    assert parse_value("'1e-3'") == "1e-3"  # a quoted scalar stays a text
    assert parse_value("[]") == [] and parse_value("{}") == {}
