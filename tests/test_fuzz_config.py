"""Property-based fuzzing of config parsing (hypothesis): whatever a config holds, the outcome is
a valid config or a ConfigError (through the CLI: exit status 0 or 2, no traceback), in well under
a second.

Inputs: the example configs, the quickstart config and the defaults with a value at a random path
replaced, a key removed or a key added (values of every JSON-ish kind: null, booleans, huge and
negative integers, NaN and infinities, long and unicode text, lists, mappings); random YAML text;
random bytes. ``KDLAB_FUZZ_EXAMPLES`` raises the number of examples per property (default 300).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from typer.testing import CliRunner

import kdlab.preflight  # noqa: F401  (imported here, not inside a timed example)
from kdlab import cli
from kdlab.config import ExperimentConfig, load_config, parse_config
from kdlab.errors import KdlabError

# Hypothesis keeps caches in ./.hypothesis by default; keep the working tree clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kdlab-hypothesis")
ROOT = Path(__file__).parents[1]
EXAMPLES = max(300, int(os.environ.get("KDLAB_FUZZ_EXAMPLES", "300")))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=1000,
    database=None,  # no .hypothesis folder in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _bases() -> list[dict[str, Any]]:
    texts = [p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))]
    texts.append(resources.files("kdlab").joinpath("configs/quickstart.yaml").read_text())
    return [yaml.safe_load(t) for t in texts] + [ExperimentConfig().model_dump(mode="json")]


BASES = _bases()
#: Words a config uses, so that mutations often hit real keys and names.
WORDS = sorted(
    {"type", "mlp", "cnn", "mps", "ce", "soft_target", "hint", "features.0", "student", "teacher",
     "hidden", "dropout", "num_classes", "weight", "temperature", "epochs", "lr", "seeds", "name",
     "mutual", "assistant", "adversarial", "born_again", "offline", "peers", "assistants",
     "ensemble", "checkpoint", "checkpoints", "stages", "loss", "train", "trainable", "all",
     "digits", "[/]", "[bold]", "~", "*", "&", "kdlab.models.mlp:MLP", ":x", ".x:y", "os:system"}
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, -(2**63), 2**64, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(WORDS),
    st.sampled_from(["x" * 5000, "é" * 300 + "\u202e", "\x00", "\n", "1e999", "nan"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (keys and indices) to a value inside ``obj``."""
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A real config with one to three values replaced, keys removed or keys added."""
    config = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(config))
        path = draw(st.sampled_from(paths)) if paths else ()
        parent = config
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if not path:
            config[draw(st.sampled_from(WORDS))] = draw(values)
        elif op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.sampled_from(WORDS))] = draw(values)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(values))
    return config


def _parsed(data: Any) -> None:
    """The property: a valid config (which survives a dump and a re-parse) or a ConfigError."""
    try:
        cfg = parse_config(data)
    except KdlabError:
        return
    again = parse_config(cfg.model_dump(mode="json"))
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")


@FUZZ
@given(mutated())
def test_mutated_configs_parse_or_fail_cleanly(data: dict[str, Any]) -> None:
    _parsed(data)


@FUZZ
@given(values)
def test_any_value_parses_or_fails_cleanly(data: Any) -> None:
    _parsed(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _yaml_texts() -> st.SearchStrategy[str]:
    """YAML from mutated configs, cut or spliced with random text, and random text itself."""
    dumped = mutated().map(lambda c: yaml.safe_dump(c, allow_unicode=True))
    spliced = st.tuples(dumped, st.integers(0, 2000), st.text(max_size=20)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    )
    syntax = st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#%@`? \n\ta1")), max_size=60)
    return st.one_of(dumped, spliced, syntax, st.text(max_size=200))


@FUZZ
@given(_yaml_texts())
def test_yaml_text_loads_or_fails_cleanly(folder: Path, text: str) -> None:
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(KdlabError):
        load_config(path)


@FUZZ
@given(st.binary(max_size=200))
def test_bytes_load_or_fail_cleanly(folder: Path, raw: bytes) -> None:
    path = folder / "fuzz.yaml"
    path.write_bytes(raw)
    with contextlib.suppress(KdlabError):
        load_config(path)


@FUZZ
@given(_yaml_texts())
def test_cli_validate_exits_0_or_2_without_traceback(folder: Path, text: str) -> None:
    path = folder / "cli.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.MonkeyPatch.context() as mp:  # the schema and YAML path; no data loading here
        mp.setattr("kdlab.preflight.preflight", lambda cfg: None)
        result = CliRunner().invoke(cli.app, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") and result.stdout == ""
