"""The scheme registry: names → schemes, with each built-in loaded on its first lookup.

A scheme is one file in this package that ends with ``SCHEME = SchemeSpec(...)``: its name, the
function that plans and runs one seed of an experiment, the pydantic model of its
``distill.options``, whether it needs a pre-trained teacher, and (for the preflight) how it
builds its models. The config validates against
the spec without importing the scheme's code until a config names it, so this module (and the
config that imports it) stays below the engine, the runs layer and every scheme.

Adding a built-in scheme: write ``kdlab/schemes/<name>.py`` and add one line to ``BUILTIN``.
A scheme of your own, outside kdlab: ``register_scheme(SchemeSpec(...))`` before the config
is parsed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdlab.errors import ConfigError, did_you_mean
from kdlab.settings import Strict


class NoOptions(Strict):
    """This scheme takes no options."""


@dataclass(frozen=True)
class SchemeSpec:
    """What the config and the experiment know of a scheme."""

    name: str
    #: ``run(ctx: kdlab.schemes.base.DistillContext) -> list[RunResult]``: one seed's runs.
    run: Callable[[Any], list[Any]]
    options: type[Strict] = NoOptions
    #: False for schemes that work without a pre-trained teacher (mutual, born-again).
    needs_teacher: bool = True
    summary: str = ""
    #: ``models(ctx) -> (learners, teachers)`` for the preflight: one seed's models built as
    #: ``run`` builds them and checked (errors name the config field), as the loss reads them —
    #: as students, and as teachers. None: the student learns from the teacher (offline).
    models: Callable[[Any], tuple[list[Any], list[Any]]] | None = None


#: Built-in schemes by name → the module that defines its ``SCHEME`` (the order of error lists).
BUILTIN: dict[str, str] = {
    "offline": "kdlab.schemes.offline",
    "adversarial": "kdlab.schemes.adversarial",
    "assistant": "kdlab.schemes.assistant",
    "born_again": "kdlab.schemes.born_again",
    "mutual": "kdlab.schemes.mutual",
}

REGISTERED: dict[str, SchemeSpec] = {}


def register_scheme(spec: SchemeSpec) -> SchemeSpec:
    """Make ``spec`` available to configs by its name (replacing any scheme of that name)."""
    REGISTERED[spec.name] = spec
    return spec


def scheme_names() -> list[str]:
    """Every scheme a config may name: the built-ins first, then registered ones."""
    return list(dict.fromkeys([*BUILTIN, *REGISTERED]))


def get_scheme(name: str) -> SchemeSpec:
    """The scheme called ``name``; a built-in's module is imported on its first lookup."""
    if name in REGISTERED:
        return REGISTERED[name]
    if name not in BUILTIN:
        names = scheme_names()
        raise ConfigError(
            f"unknown scheme {name!r}{did_you_mean(name, names)}; valid schemes: {', '.join(names)}"
        )
    spec = importlib.import_module(BUILTIN[name]).SCHEME
    return register_scheme(spec)


__all__ = [
    "BUILTIN",
    "REGISTERED",
    "NoOptions",
    "SchemeSpec",
    "get_scheme",
    "register_scheme",
    "scheme_names",
]
