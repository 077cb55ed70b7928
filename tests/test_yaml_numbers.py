"""Numbers in config files (kdlab.yamlfile): exponent floats without a dot (1e-3, 1e30), which
PyYAML's YAML 1.1 reads as text, are floats, as in YAML 1.2 and in command-line overrides;
everything else reads as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdlab import cli
from kdlab.config import load_config
from kdlab.overrides import parse_value
from kdlab.yamlfile import parse_yaml

EXPONENT_FLOATS = ["1e30", "1e-3", "+1e3", "-1e3", "1E5", "1.0e30", "1.e3", ".5e3", "2e+2"]


@pytest.mark.parametrize("text", EXPONENT_FLOATS)
def test_exponent_numbers_are_floats_like_the_overrides(text: str) -> None:
    value = parse_yaml(f"v: {text}")["v"]
    assert type(value) is float and value == float(text) == parse_value(text)
    assert parse_yaml(f"v: [{text}]")["v"] == [float(text)]  # also in flow lists


@pytest.mark.parametrize("text", ["'1e30'", '"1e-3"', "!!str 1e30"])
def test_quoted_exponent_numbers_stay_text(text: str) -> None:
    assert parse_yaml(f"v: {text}")["v"] == yaml.safe_load(f"v: {text}")["v"]
    assert isinstance(parse_yaml(f"v: {text}")["v"], str)


@pytest.mark.parametrize(
    "text",
    ["100", "-7", "0x1f", "1_000", "3.14", "1.0e+30", ".inf", "-.inf", ".nan", "inf", "nan",
     "1e", "e5", "1e3.5", "1e30x", "true", "2024-01-02", "1:30", "~", "features.1"],
)  # fmt: skip
def test_everything_else_reads_as_pyyaml_reads_it(text: str) -> None:
    got, expected = parse_yaml(f"v: {text}")["v"], yaml.safe_load(f"v: {text}")["v"]
    assert type(got) is type(expected)
    assert got == expected or (got != got and expected != expected)  # NaN


def test_the_global_pyyaml_loader_is_unchanged() -> None:
    parse_yaml("v: 1e30")
    assert yaml.safe_load("v: 1e30")["v"] == "1e30"


def test_a_config_file_with_an_exponent_weight_validates(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: exponent\n"
        "student: {model: {type: mlp, hidden: [8]}, train: {epochs: 1, threads: 1}}\n"
        "teacher: {model: {type: mlp, hidden: [8]}, train: {epochs: 1, threads: 1}}\n"
        "distill:\n"
        "  loss:\n"
        "    - {type: ce}\n"
        "    - {type: soft_target, weight: 1e-3}\n"
    )
    assert load_config(path).distill.loss[1]["weight"] == 0.001
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
