"""A sweep's plan: the command line's grids, zipped lists and seeds expanded into *cells*.

A cell is the base config with one value per grid key (every combination) and one position of
the zipped lists (all varied together), validated like a config file. Cells that share their
teacher (same data, teacher, metrics and strictness sections) share one trained teacher per seed:
:attr:`Cell.teacher` is that section's hash. Likewise cells with the same data, student, metrics
and strictness share one student-alone baseline per seed (:attr:`Cell.student`): a grid over the
loss trains the student alone once per seed, not once per cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kdlab.config import ExperimentConfig, parse_config
from kdlab.errors import ConfigError, quote
from kdlab.overrides import apply_overrides, parse_assignment, parse_value
from kdlab.preflight import preflight
from kdlab.resume import config_fingerprint

#: More cells or seeds than this is a typo (e.g. --seeds 0-1000000), not a sweep.
MAX_CELLS, MAX_SEEDS = 10_000, 10_000
#: Keys a grid may not vary: every cell is one experiment over the same seeds.
OWN_OPTIONS = {"name": "--name", "seeds": "--seeds"}
#: The config sections each shared run's training depends on: cells equal in these share it.
SHARED_SECTIONS = {
    "teacher": ("data", "teacher", "metrics", "strict"),
    "student": ("data", "student", "metrics", "strict"),  # the student alone: labels only
}


@dataclass(frozen=True)
class SweepOptions:
    """What the command line says besides the config file."""

    grid: list[str] = field(default_factory=list)
    zip: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    seeds: str | None = None
    name: str | None = None
    workers: int = 1


@dataclass(frozen=True)
class Axis:
    """One ``--grid``/``--zip`` argument: a key path and its values (as typed and as parsed)."""

    key: str
    raw: list[str]
    values: list[Any]


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: its assignments (key path → value) and its validated config."""

    index: int
    assignments: dict[str, Any]
    config: ExperimentConfig
    #: Hash of the config's teacher sections; None when the config has no teacher.
    teacher: str | None
    #: Hash of its student-alone sections; None when the config trains no student alone.
    student: str | None = None

    def shared(self, kind: str) -> str | None:
        """The key of the cell's shared ``teacher`` or ``student`` (alone) run, if it has one."""
        return self.teacher if kind == "teacher" else self.student

    @property
    def label(self) -> str:
        text = " ".join(f"{k}={format_value(v)}" for k, v in self.assignments.items())
        return text or "(the base config)"

    # Cached: the scheduler, the task locks and each run ask again for every seed; a frozen
    # cell's config never changes (cached_property writes __dict__, which frozen allows).
    @cached_property
    def run_config(self) -> ExperimentConfig:
        """What the cell itself runs: without the student alone, which is a shared run."""
        if self.student is None:
            return self.config
        student = self.config.student.model_copy(update={"baseline": False})
        return self.config.model_copy(update={"student": student})

    @cached_property
    def fingerprint(self) -> str:
        return config_fingerprint(self.run_config.model_dump(mode="json"))

    def for_seed(self, seed: int) -> ExperimentConfig:
        return self.run_config.model_copy(update={"seeds": [seed]})


@dataclass(frozen=True)
class SweepPlan:
    name: str
    seeds: list[int]
    cells: list[Cell]

    def shared_cell(self, kind: str, key: str) -> Cell:
        """The first cell with shared ``kind`` run ``key`` (its config describes that run)."""
        return next(c for c in self.cells if c.shared(kind) == key)

    def sharing(self, kind: str, key: str) -> int:
        return sum(c.shared(kind) == key for c in self.cells)

    def shared_label(self, kind: str, key: str) -> str:
        """The assignments inside shared run ``key``'s sections (the same in every cell sharing
        it): what tells apart two shared runs of one kind; empty when the sweep varies none."""
        assignments = self.shared_cell(kind, key).assignments.items()
        inside = [(k, v) for k, v in assignments if k.split(".")[0] in SHARED_SECTIONS[kind]]
        return " ".join(f"{k}={format_value(v)}" for k, v in inside)


def format_value(value: Any) -> str:
    """A value as a user would type it after ``key=``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan
    return value if isinstance(value, str) else json.dumps(value)


def split_values(raw: str) -> list[str]:
    """``"1,[2, 3],{a: 1}"`` → ``["1", "[2, 3]", "{a: 1}"]``: commas inside brackets or quotes
    belong to the value."""
    items, current, depth, quoting = [], "", 0, ""
    for char in raw:
        if quoting:
            quoting = "" if char == quoting else quoting
        elif char in "'\"":
            quoting = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth <= 0:
            items.append(current.strip())
            current = ""
            continue
        current += char
    items.append(current.strip())
    return [] if items == [""] else items


def parse_axis(text: str, flag: str) -> Axis:
    """``--grid key=v1,v2`` → an Axis; a ConfigError for a malformed or empty list, or a grid
    that repeats a value."""
    key, sep, raw = text.partition("=")
    example = f"{flag} distill.loss.1.temperature=1,2,4"
    if not sep:
        raise ConfigError(f"{flag} {quote(text)} is not key.path=v1,v2,...; write e.g. {example}")
    parse_assignment(f"{key}=0")  # the key path's own syntax errors
    key = key.strip()
    if key.split(".")[0] in OWN_OPTIONS:
        option = OWN_OPTIONS[key.split(".")[0]]
        raise ConfigError(f"{flag} {quote(text)}: a sweep cannot vary {key!r}; use {option}")
    items = split_values(raw)
    if not items:
        raise ConfigError(f"{flag} {key}= lists no values; give at least one, e.g. {example}")
    if "" in items:
        raise ConfigError(
            f"{flag} {quote(text)} has an empty value (a comma at the end or two in a row); "
            "remove it"
        )
    values = [parse_value(item) for item in items]
    for i, value in enumerate(values):
        if flag == "--grid" and value in values[:i]:  # zipped lists may repeat (cells differ)
            raise ConfigError(
                f"{flag} {quote(text)} lists {format_value(value)} twice; each value once"
            )
    return Axis(key, items, values)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → 0…4, ``"0,1,2"``, or both (``"0-2,7"``); a ConfigError otherwise."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ConfigError(
                f"--seeds {quote(text)}: {quote(part)} is not a seed or a range of seeds; write "
                "e.g. --seeds 0-4 or --seeds 0,1,2"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ConfigError(
                f"--seeds {text}: the range {part} is empty; write the lower seed first: "
                f"--seeds {high}-{low}"
            )
        if high - low >= MAX_SEEDS or len(seeds) + high - low >= MAX_SEEDS:
            raise ConfigError(f"--seeds {text} names more than {MAX_SEEDS} seeds; use fewer")
        seeds.extend(range(low, high + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text} names seed(s) {repeated} twice; each seed once")
    return seeds


def value_at(data: Any, key: str, default: Any) -> Any:
    """The value at ``key`` in a validated config's dump — as the config holds it, e.g. the float
    a settings field made of ``1e-3`` (which YAML reads as a string) — else ``default``."""
    for part in key.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif (
            isinstance(data, list)
            and part.lstrip("-").isdigit()
            and -len(data) <= int(part) < len(data)
        ):
            data = data[int(part)]
        else:
            return default
    return data


def shared_key(config_json: dict[str, Any], kind: str) -> str | None:
    """The hash of the sections shared run ``kind`` depends on; None when the config has none
    (no teacher; ``student.baseline: false``)."""
    if kind == "teacher" and config_json.get("teacher") is None:
        return None
    if kind == "student" and not config_json["student"].get("baseline", True):
        return None
    sections = {k: config_json.get(k) for k in SHARED_SECTIONS[kind]}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def shared_sections(cfg: ExperimentConfig, kind: str) -> dict[str, Any]:
    """What a shared run records as its experiment config."""
    data = cfg.model_dump(mode="json")
    return {"name": cfg.name, **{k: data.get(k) for k in SHARED_SECTIONS[kind]}}


def _axes(options: SweepOptions) -> tuple[list[Axis], list[Axis]]:
    if options.workers < 1:
        raise ConfigError(f"--workers is {options.workers}; give 1 or more processes")
    grids = [parse_axis(text, "--grid") for text in options.grid]
    zips = [parse_axis(text, "--zip") for text in options.zip]
    if len({len(z.values) for z in zips}) > 1:
        sizes = ", ".join(f"{z.key} has {len(z.values)}" for z in zips)
        raise ConfigError(
            f"--zip lists vary together, so they need the same number of values, but {sizes}; "
            "give each the same number (or use --grid for every combination)"
        )
    fixed = [parse_assignment(text)[0] for text in options.overrides]
    seen = {".".join(parts) for parts in fixed}
    for axis in (*grids, *zips):
        if axis.key in seen:
            raise ConfigError(
                f"{axis.key} is set twice (by an override or another --grid/--zip); "
                "set each key once"
            )
        seen.add(axis.key)
    return grids, zips


def _base(cfg: ExperimentConfig, source: str, options: SweepOptions) -> ExperimentConfig:
    """The config with the plain overrides, the sweep's name and seeds (set without a round trip
    through the config's JSON dump, which writes inf as null)."""
    cfg = apply_overrides(cfg, options.overrides, source)
    update: dict[str, Any] = {}
    if options.name is not None:
        update["name"] = options.name
    if options.seeds is not None:
        update["seeds"] = parse_seeds(options.seeds)
    if update:  # validated on their own: nothing else in a config depends on them
        checked = parse_config(update, "--name/--seeds")
        cfg = cfg.model_copy(update={k: getattr(checked, k) for k in update})
    return cfg


def plan_sweep(cfg: ExperimentConfig, source: str, options: SweepOptions) -> SweepPlan:
    """Expand and validate every cell (nothing is loaded or trained): a ConfigError naming
    the fix for any bad input."""
    grids, zips = _axes(options)
    base = _base(cfg, source, options)
    ranges = [range(len(g.values)) for g in grids] + [range(len(zips[0].values)) if zips else [0]]
    total = math.prod(len(r) for r in ranges)
    if total > MAX_CELLS:
        raise ConfigError(f"the sweep has {total} cells, more than {MAX_CELLS}; use fewer values")
    cells: list[Cell] = []
    fingerprints: dict[str, Cell] = {}
    for combo in itertools.product(*ranges):
        chosen = [(g, i) for g, i in zip(grids, combo, strict=False)]
        chosen += [(z, combo[-1]) for z in zips]
        texts = [f"{axis.key}={axis.raw[i]}" for axis, i in chosen]
        config = apply_overrides(base, texts, source)
        held = config.model_dump()  # Python values: the JSON dump writes inf as null
        assignments = {a.key: value_at(held, a.key, a.values[i]) for a, i in chosen}
        dump = config.model_dump(mode="json")
        cell = Cell(
            len(cells), assignments, config, *(shared_key(dump, k) for k in SHARED_SECTIONS)
        )
        twin = fingerprints.setdefault(cell.fingerprint, cell)
        if twin is not cell:
            raise ConfigError(
                f"cells {twin.label} and {cell.label} are the same config; drop one of the values"
            )
        cells.append(cell)
    return SweepPlan(base.name, list(base.seeds), cells)


def preflight_plan(plan: SweepPlan) -> None:
    """Every cell against its data (models, weights files, taps) before anything trains."""
    for cell in plan.cells:
        try:
            preflight(cell.config)
        except ConfigError as err:
            raise ConfigError(f"cell {cell.label}: {err}") from None


__all__ = [
    "Cell",
    "SweepOptions",
    "SweepPlan",
    "format_value",
    "parse_axis",
    "parse_seeds",
    "plan_sweep",
    "preflight_plan",
    "split_values",
]
