"""Exceptions kdlab raises. Every message names the problem and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdlabError(Exception):
    """Base class of every error kdlab raises on purpose."""


class ConfigError(KdlabError, ValueError):
    """An experiment configuration (YAML or Python) is invalid."""


class DataError(KdlabError):
    """A dataset is missing, truncated or in an unexpected format."""


class NonFiniteLossError(KdlabError, FloatingPointError):
    """Training produced a NaN/inf loss; the run stopped and kept its last good checkpoint."""


class StoreError(KdlabError):
    """The run store cannot be opened or does not hold the requested run."""


def closest(word: object, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` choices most like ``word`` (``cutoff`` 0: every choice, ranked)."""
    return difflib.get_close_matches(str(word), list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: object, choices: Iterable[str], n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the closest choices, or ``""`` when none is close."""
    close = closest(word, choices, n)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def ranked(word: object, choices: Iterable[str], limit: int | None = None) -> str:
    """Every choice, closest to ``word`` first (at most ``limit``, saying how many more)."""
    names = list(choices)
    order = closest(word, names, n=len(names), cutoff=0.0)
    shown = order if limit is None else order[:limit]
    more = f" (and {len(names) - len(shown)} more)" if len(shown) < len(names) else ""
    return ", ".join(shown) + more
