"""What ``kdlab tune`` checks before a trial runs: the ``--param`` specs, keys set twice, a
``--storage`` that is not kdlab's run store, and that a continued study keeps its search space
and config (recorded in the Optuna study's user attrs when it is created)."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config import ExperimentConfig
from kdlab.errors import ConfigError, quote, shorten
from kdlab.overrides import apply_overrides, parse_assignment, parse_value

DEFAULT_STORAGE = "sqlite:///kdlab-tune.db"
SYNTAX = "key=low:high, key=log:low:high, key=int:low:high or key=choice:a,b,c"
#: Study user attrs: the searched params, the base config's fingerprint, the command's arguments.
ATTR_PARAMS, ATTR_CONFIG, ATTR_SOURCE = "kdlab.params", "kdlab.config", "kdlab.source"


@dataclass(frozen=True)
class ParamSpec:
    """One searched key: ``kind`` float (uniform), log (float, log-uniform), int or choice."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()
    text: str = ""

    def examples(self) -> list[Any]:
        """Values checked against the schema before the study starts."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def canonical(self) -> str:
        """The spec in one spelling (``1:8`` and ``1.0:8`` alike), as a study records it."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(json.dumps(c) for c in self.choices)}"
        prefix = "" if self.kind == "float" else f"{self.kind}:"
        number = int if self.kind == "int" else float
        return f"{self.key}={prefix}{number(self.low)!r}:{number(self.high)!r}"

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":  # Optuna stores scalars; lists etc. go by their YAML text
            stored = [c if _scalar(c) else json.dumps(c) for c in self.choices]
            return self.choices[stored.index(trial.suggest_categorical(self.key, stored))]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def parse_param(text: str) -> ParamSpec:
    """``key=low:high`` | ``key=log:low:high`` | ``key=int:low:high`` | ``key=choice:a,b,c``."""
    key, sep, spec = (part.strip() for part in text.partition("="))
    if not sep or not key or not spec:
        raise ConfigError(f"--param {quote(text)} is not {SYNTAX}")
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        choices = tuple(parse_value(c.strip()) for c in _split_choices(rest))
        if not choices:
            raise ConfigError(f"--param {quote(text)}: choice needs values; write {key}=choice:a,b")
        # JSON tells 1, 1.0 and true apart, which == does not.
        seen = [json.dumps(c, sort_keys=True) for c in choices]
        for i, value in enumerate(seen):
            if value in seen[:i]:
                raise ConfigError(f"--param {quote(text)} lists {value} twice; each value once")
        return ParamSpec(key, "choice", choices=choices, text=text)
    if kind not in ("log", "int"):
        kind, rest = "float", spec
    low, high = _bounds(text, key, kind, rest)
    return ParamSpec(key, kind, low, high, text=text)


def _bounds(text: str, key: str, kind: str, rest: str) -> tuple[float, float]:
    """The checked ``low:high`` of a range; each mistake is one line that shows the fix."""
    where, prefix = f"--param {quote(text)}", "" if kind == "float" else f"{kind}:"
    number = int if kind == "int" else float
    try:
        low, high = (number(b) for b in rest.split(":"))
    except ValueError:  # not two parts, or not numbers
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high)):
        what = "integers" if kind == "int" else "numbers"
        raise ConfigError(f"{where}: write {key}={prefix}LOW:HIGH with two {what} ({SYNTAX})")
    if low > high:
        raise ConfigError(f"{where}: low must be below high; write {key}={prefix}{high}:{low}")
    if low == high:
        raise ConfigError(f"{where}: low equals high; set it with the override {key}={low}")
    if kind == "log" and low <= 0:
        raise ConfigError(
            f"{where}: a log range needs 0 < low; write e.g. {key}=log:{high / 100:g}:{high:g}, "
            f"or the uniform range {key}={low:g}:{high:g}"
        )
    return low, high


def _split_choices(text: str) -> list[str]:
    """Split on commas outside brackets, so ``choice:[16],[32,32]`` has two choices."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def override(key: str, value: Any) -> str:
    """``key=value`` for :func:`kdlab.overrides.apply_overrides` (JSON is YAML: typed exactly)."""
    return f"{key}={json.dumps(value)}"


def check_params(cfg: ExperimentConfig, specs: Sequence[ParamSpec]) -> None:
    """Each searched key exists and each bound or choice is a valid value, checked like an
    override before any trial runs (not after the first has trained)."""
    keys = [s.key for s in specs]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"--param names a key twice: {', '.join(keys)}; give each key once")
    for spec in specs:
        for value in spec.examples():
            try:
                apply_overrides(cfg, [override(spec.key, value)])
            except ConfigError as err:
                raise ConfigError(f"--param {quote(spec.text)}: {err}") from None


def check_set_once(
    overrides: Sequence[str], specs: Sequence[ParamSpec], seeds: str | None = None
) -> None:
    """A key searched by ``--param`` is not also fixed by an override (or ``--seeds``): the
    trial's value would win and the override be silently lost, as in ``kdlab sweep``."""
    fixed = [
        (".".join(parse_assignment(text)[0]), f"the override {quote(text)}") for text in overrides
    ]
    if seeds is not None:
        fixed.append(("seeds", f"--seeds {seeds}"))
    for spec in specs:
        for key, where in fixed:
            if key == spec.key or key.startswith(spec.key + "."):
                raise ConfigError(
                    f"{key} is set twice (by {where} and by --param {quote(spec.text)}); "
                    "set each key once"
                )


def check_storage(url: str) -> None:
    """``url`` is a database URL, and not the SQLite file of a kdlab run store (Optuna would
    add its tables to it)."""
    if "://" not in url:
        raise ConfigError(
            f"--storage {quote(url)} is not a database URL; write e.g. "
            f"{DEFAULT_STORAGE} or postgresql://user@host/db"
        )
    scheme, _, rest = url.partition("://")
    path = rest[1:].split("?")[0].removeprefix("file:")  # sqlite:///a.db → a.db
    if scheme.split("+")[0] != "sqlite" or not rest.startswith("/") or path in ("", ":memory:"):
        return
    if _is_run_store(Path(path)):
        raise ConfigError(
            f"--storage {quote(url, 200)}: that file is kdlab's run store; give the tuning study "
            "its own file, e.g. sqlite:///tune.db"
        )


def _is_run_store(path: Path) -> bool:
    """Whether ``path`` holds kdlab's schema: a ``runs`` table and a ``user_version``."""
    if not path.is_file():
        return False
    try:  # read only: a file that is not ours is left exactly as it was
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            runs = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not a database, or unreadable: Optuna's own error says so
        return False
    return version > 0 and runs is not None


def identity(cfg: ExperimentConfig, specs: Sequence[ParamSpec], source: str) -> dict[str, Any]:
    """What defines a study: its searched params and the fingerprint of its base config, the
    searched keys set to one value (their value in the YAML does not reach any trial)."""
    with suppress(ConfigError):  # the low bounds together invalid: the config as given
        cfg = apply_overrides(cfg, [override(s.key, s.examples()[0]) for s in specs])
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "name"}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    params = sorted(s.canonical() for s in specs)
    return {ATTR_PARAMS: params, ATTR_CONFIG: digest, ATTR_SOURCE: source}


def check_same_study(study: Any, wanted: dict[str, Any]) -> None:
    """Record ``wanted`` in a new study (or one with no trial yet); refuse to continue one made
    with other params or another config, whose best trial would otherwise be recommended with
    this command's config. A study from before kdlab recorded them continues (and records them
    now)."""
    stored, name = study.user_attrs, study.study_name
    if ATTR_PARAMS in stored and study.trials:
        if stored[ATTR_PARAMS] != wanted[ATTR_PARAMS]:
            raise ConfigError(
                f"study {name!r} in --storage searches {', '.join(stored[ATTR_PARAMS])}, not "
                f"{', '.join(wanted[ATTR_PARAMS])}; give a new --name for a new search, or the "
                "study's --param again"
            )
        if stored.get(ATTR_CONFIG) != wanted[ATTR_CONFIG]:
            was = shorten(str(stored.get(ATTR_SOURCE, "")), 240)
            same = was == wanted[ATTR_SOURCE]
            how = "its config file changed since" if same else f"it was started as kdlab tune {was}"
            raise ConfigError(
                f"study {name!r} in --storage was run on another config ({how}); give a new "
                "--name for this config, or the study's config, overrides and --seeds again"
            )
        return
    for key, value in wanted.items():
        study.set_user_attr(key, value)
