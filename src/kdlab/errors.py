"""Exceptions kdlab raises. Every message names the problem and how to fix it."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

#: Longest quoted value an error message shows; longer ones are cut with their length.
QUOTE_LIMIT = 80
#: Words longer than this are cut before "did you mean" compares them (difflib is quadratic).
_MATCH_LIMIT = 200

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 4, 12, 12, 12, 12
_repr.maxstring = _repr.maxother = 2 * QUOTE_LIMIT


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


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` itself, or its first ``limit`` characters and ``… (N characters)``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters long.

    A long string is cut and says its length; a big or deeply nested container is abbreviated
    without walking all of it, so quoting stays cheap whatever a config holds.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters)"
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}…"


def closest(word: object, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` choices most like ``word`` (``cutoff`` 0: every choice, ranked)."""
    text = word if isinstance(word, str) else quote(word)
    return difflib.get_close_matches(text[:_MATCH_LIMIT], list(choices), n=n, cutoff=cutoff)


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
