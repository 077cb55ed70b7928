"""Where a run store lives: a folder (one SQLite file in it) or a PostgreSQL URL.

A URL store keeps its rows in PostgreSQL but its artefacts (checkpoints, weights) in a folder
that every machine writing the store must see at the same path, since the store records
artefacts by path. It is given as ``?artefacts=/shared/path`` in the URL (kdlab removes it
before connecting) or as ``$KDLAB_ARTEFACTS``; without either, opening the store is an error
rather than a local folder that the other machines would not see.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from kdlab.errors import StoreError

ARTEFACTS_ENV = "KDLAB_ARTEFACTS"
ARTEFACTS_PARAM = "artefacts"
_POSTGRES = re.compile(r"(postgres(?:ql)?):(/*)(.*)", re.IGNORECASE | re.DOTALL)
_OTHER_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class PostgresLocation:
    """A PostgreSQL run store: ``conninfo`` for libpq, ``shown`` (no password) for messages."""

    conninfo: str
    shown: str
    artefacts: Path
    password: str


def parse_location(location: str | Path) -> Path | PostgresLocation:
    """A folder for an SQLite store, or the parts of a ``postgresql://`` URL."""
    text = str(location)
    match = _POSTGRES.match(text)
    if match is None:
        other = _OTHER_URL.match(text)
        if other is not None:
            raise StoreError(
                f"run store {redact(text)}: kdlab keeps runs in a folder (SQLite) or at a "
                f"postgresql:// URL, not at a {other.group(1)}:// URL"
            )
        return Path(location).expanduser()
    scheme, slashes, rest = match.groups()
    if isinstance(location, Path) and slashes == "/":
        slashes = "//"  # a Path (e.g. typer's --store) folds the URL's "//" into "/"
    url = f"{scheme}:{slashes}{rest}"
    conninfo, given = _without_artefacts(url)
    shown = redact(conninfo)
    return PostgresLocation(conninfo, shown, _artefact_root(given, shown), _password(url))


def redact(url: str) -> str:
    """The URL with its password (in the user part or as ``password=``) shown as ``***``."""
    url = re.sub(r"^([A-Za-z][\w+.-]*://[^:/?#@]*:)[^/?#]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def with_artefacts(url: str, folder: str | Path) -> str:
    """``url`` with ``artefacts=folder`` added to its query (the folder percent-encoded)."""
    return f"{url}{'&' if '?' in url else '?'}{ARTEFACTS_PARAM}={quote(str(folder), safe='/')}"


def _without_artefacts(url: str) -> tuple[str, str | None]:
    """The URL without ``artefacts=...`` (libpq refuses unknown parameters), and its value."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    kept, value = [], None
    for item in query.split("&"):
        key, _, raw = item.partition("=")
        if unquote(key) == ARTEFACTS_PARAM:
            value = unquote(raw)
        elif item:
            kept.append(item)
    return (f"{base}?{'&'.join(kept)}" if kept else base), value


def _artefact_root(given: str | None, shown: str) -> Path:
    value = given or os.environ.get(ARTEFACTS_ENV, "")
    if not value.strip():
        raise StoreError(
            f"run store {shown} keeps its rows in PostgreSQL, but checkpoints and weights need "
            f"a folder every machine sees: add ?{ARTEFACTS_PARAM}=/shared/kdlab-artefacts to "
            f"the URL or set {ARTEFACTS_ENV}=/shared/kdlab-artefacts"
        )
    root = Path(value).expanduser()
    if not root.is_absolute():
        raise StoreError(
            f"artefact folder {value!r} of run store {shown} is relative; give an absolute "
            "path, mounted at the same place on every machine (the store records artefacts "
            "by path)"
        )
    return root


def _password(url: str) -> str:
    """The URL's password, to hide wherever a driver message might echo it."""
    user = re.match(r"^[A-Za-z][\w+.-]*://[^:/?#@]*:([^/?#]*)@", url)
    query = re.search(r"[?&]password=([^&#]*)", url, flags=re.IGNORECASE)
    found = user or query
    return unquote(found.group(1)) if found else ""
