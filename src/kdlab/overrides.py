"""Command-line overrides of an experiment config: ``key.path=value``.

    kdlab run exp.yaml distill.loss.1.temperature=8 student.train.epochs=30 seeds=[0,1,2]

A path walks mappings by key and lists by index (``distill.loss.1`` is the second loss term);
the value is read as YAML (``8`` an int, ``0.5`` a float, ``true``, ``[0, 1]``, ``{name: sgd}``;
``inf``, ``-inf`` and ``nan`` are floats). The overridden config is validated like the file, and
it — not the file — is what the run store records. A key that is not in the config at that level
is an error with the closest known keys, unless the schema accepts it there (pydantic names it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kdlab.config import ExperimentConfig, parse_config
from kdlab.errors import ConfigError, did_you_mean, quote

NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
#: Values YAML reads as strings but a user means as floats (YAML's own spelling is ``.inf``).
FLOATS = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"a.b.1=8"`` → ``(["a", "b", "1"], 8)``; a ConfigError for a malformed one."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(
            f"override {quote(text)} is not key.path=value; write e.g. "
            "distill.loss.1.temperature=8 (lists by index)"
        )
    return parts, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """A YAML-typed value; ``inf``/``-inf``/``nan`` as floats."""
    if raw.lower() in FLOATS:
        return FLOATS[raw.lower()]
    if NUMBER.match(raw):  # YAML 1.1 reads 1e-3 and 1e30 as strings
        return int(raw) if raw.lstrip("+-").isdigit() else float(raw)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:  # PyYAML's own text spans lines with carets: one line here
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"value {quote(raw)} is not valid YAML ({problem}); check its brackets and quotes, "
            "or quote the whole value"
        ) from None
    return _numbers_inside(value) if isinstance(value, (list, dict)) else value


def _numbers_inside(value: Any) -> Any:
    """Lists and mappings with YAML 1.1's number-looking strings (``[1e-3, inf]``) as numbers.
    (Inside a list a quoted '1e-3' cannot be told apart and becomes a number too; no config key
    takes number-like texts in lists.)"""
    if isinstance(value, list):
        return [_numbers_inside(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers_inside(v) for k, v in value.items()}
    if isinstance(value, str) and (value.lower() in FLOATS or NUMBER.match(value)):
        return parse_value(value)
    return value


def set_path(data: dict[str, Any], parts: Sequence[str], value: Any, text: str) -> None:
    """Set ``data[parts[0]][parts[1]]... = value`` in place (lists by index)."""
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _index(part, len(node), where, text)
            if last:
                node[index] = value
            else:
                node = _descend(node, index)
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = _descend(node, part, create=True)
        else:
            raise ConfigError(
                f"override {quote(text)}: {'.'.join(parts[:depth])} is "
                f"{quote(node)}, not a mapping or list, so it has no {quote(part)}"
            )


def _index(part: str, size: int, where: str, text: str) -> int:
    if not part.lstrip("-").isdigit() or not -size <= int(part) < size:
        raise ConfigError(
            f"override {quote(text)}: {where} indexes a list of {size} item(s); use an index "
            f"from 0 to {size - 1} (or from the end, -1 to -{size})"
        )
    return int(part)


def _descend(node: Any, key: Any, create: bool = False) -> Any:
    if create and (key not in node or node[key] is None):
        node[key] = {}  # a section the file left out (e.g. distill.train)
    return node[key]


def apply_overrides(
    cfg: ExperimentConfig, assignments: Sequence[str], source: str = "config"
) -> ExperimentConfig:
    """``cfg`` with ``assignments`` applied, validated like a config file."""
    if not assignments:
        return cfg
    data = cfg.model_dump(mode="json")
    for text in assignments:
        parts, value = parse_assignment(text)
        check_known(data, parts, text)
        set_path(data, parts, value, text)
    try:
        return parse_config(data, f"{source} with overrides {', '.join(assignments)}")
    except ConfigError as err:
        raise ConfigError(str(err)) from None


def check_known(data: Mapping[str, Any], parts: Sequence[str], text: str) -> None:
    """A mistyped top-level or section key fails here with the closest known ones; deeper keys
    (a loss term's parameters, a model's arguments) are checked when the config is validated."""
    node: Any = data
    for depth, part in enumerate(parts[:2]):
        if not isinstance(node, Mapping) or (depth and node is None):
            return
        known = [k for k in node if isinstance(k, str)]
        if (part not in node and depth == 0) or (depth == 1 and part not in node and _closed(node)):
            raise ConfigError(
                f"override {quote(text)}: unknown key {quote('.'.join(parts[: depth + 1]))}"
                f"{did_you_mean(part, known)}; keys here: {', '.join(sorted(known))}"
            )
        node = node.get(part)


def _closed(section: Mapping[str, Any]) -> bool:
    """A section whose dump lists every key it accepts (so a key not in it is a typo)."""
    return "train" in section or "model" in section or "loss" in section


__all__ = ["apply_overrides", "parse_assignment", "parse_value", "set_path"]
