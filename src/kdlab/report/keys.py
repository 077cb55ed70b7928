"""Config keys of recorded runs: flattened to dotted paths, short names resolved, values shown.

A run records its experiment config as nested JSON; ``distill.loss.1.alpha`` is the ``alpha`` of
the second loss term. ``kdlab report --by alpha`` names a key by its last part(s); it must match
exactly one path of the runs' configs, or the error lists the candidates (or the closest paths).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdlab.errors import ConfigError


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` → ``{"a.b.0": 1, "a.b.1": 2}``; empty containers are leaves."""
    if isinstance(config, Mapping) and config:
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, list) and config:
        items = enumerate(config)
    else:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def show_value(value: Any) -> str:
    """A config value as a table cell and figure label: 4.0 → ``4``, None → ``—``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers numerically, then text, then missing values last."""
    if value is None:
        return (2, 0.0, "")
    if is_number(value):
        return (0, float(value), "")
    return (1, 0.0, show_value(value))


def _varies(path: str, configs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether runs that record ``path`` differ in it (runs without it — a sweep's shared
    teacher records no loss keys — do not make it vary)."""
    return len({show_value(c[path]) for c in configs if path in c}) > 1


def _closest(name: str, paths: Sequence[str], n: int = 5) -> list[str]:
    """Paths most like ``name``, by the whole path or its last part (``temprature``)."""

    def score(path: str) -> float:
        tail = path.rsplit(".", 1)[-1]
        return max(difflib.SequenceMatcher(None, name, p).ratio() for p in (path, tail))

    return sorted(paths, key=lambda p: (-score(p), p))[:n]


def resolve_key(name: str, configs: Sequence[Mapping[str, Any]], option: str = "--by") -> str:
    """The one flattened path that is ``name`` or ends with ``.name``."""
    paths = sorted({p for c in configs for p in c})
    if name in paths:
        return name
    matches = [p for p in paths if p.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        varying = [p for p in matches if _varies(p, configs)]
        shown = ", ".join(p + (" (varies)" if p in varying else "") for p in matches)
        raise ConfigError(
            f"{option} {name!r} is ambiguous, it matches {shown}; give the full path, e.g. "
            f"{option} {(varying or matches)[0]}"
        )
    raise ConfigError(
        f"{option} {name!r} is no key of the recorded configs; closest keys: "
        f"{', '.join(_closest(name, paths))}"
    )


@dataclass(frozen=True)
class Baseline:
    """The baseline group: a role, key values (by --by index, as shown), or both."""

    role: str | None = None
    values: dict[int, str] = field(default_factory=dict)

    def matches(self, role: str, values: Sequence[Any]) -> bool:
        if self.role is not None and role != self.role:
            return False
        return all(show_value(values[i]) == text for i, text in self.values.items())

    def describe(self, names: Sequence[str]) -> str:
        parts = [f"role {self.role}"] if self.role else []
        parts += [f"{names[i]}={text}" for i, text in sorted(self.values.items())]
        return ", ".join(parts)


def parse_baseline(
    text: str, by: Sequence[str], configs: Sequence[Mapping[str, Any]], roles: Sequence[str]
) -> Baseline:
    """``student``, ``temperature=1`` or ``role=distilled,temperature=1`` → a Baseline; each
    key must resolve to one of the ``--by`` paths and each value must occur in the runs."""
    role: str | None = None
    values: dict[int, str] = {}
    for token in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key == "role":
            role = value if eq else key
            if role not in roles:
                raise ConfigError(
                    f"--baseline role {role!r} has no runs; roles: {', '.join(roles)}"
                )
            continue
        path = resolve_key(key, configs, "--baseline")
        if path not in by:
            raise ConfigError(
                f"--baseline key {key!r} ({path}) is not a --by key; group by it too: "
                f"--by {','.join([*by, path])}"
            )
        seen = sorted({show_value(c.get(path)) for c in configs})
        if value not in seen:
            raise ConfigError(f"--baseline {key}={value}: no run has it; values: {', '.join(seen)}")
        values[list(by).index(path)] = value
    if role is None and not values:
        raise ConfigError(f"--baseline {text!r} names no group; e.g. student or temperature=1")
    return Baseline(role, values)
