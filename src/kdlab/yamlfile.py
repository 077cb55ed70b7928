"""Reading a config file: UTF-8 text of bounded size, parsed as YAML of bounded expansion.

Numbers with an exponent (``1e-3``, ``1e30``, ``1.0e30``) are floats, as in YAML 1.2 and in
command-line overrides; PyYAML's YAML 1.1 reads them as text unless written ``1.0e+30``.

A 526-byte YAML alias bomb (nested anchors, each list repeating the previous) expands to
billions of values; a 10 MB value makes every message that quotes it slow. Both are refused here,
before pydantic sees anything, with errors that name the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from kdlab.errors import ConfigError, shorten

#: Bounds on a config file: its size, and the values its YAML may expand to (aliases count
#: each time they are used) and how deeply they may nest. Real configs hold a few hundred values.
MAX_CONFIG_BYTES, MAX_YAML_NODES, MAX_YAML_DEPTH = 2 * 2**20, 20_000, 64


try:  # libyaml's parser (fast; it caps nesting itself) under Python's composer, to count nodes
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeLoader as _Parser  # type: ignore[assignment]


class _BoundedLoader(_Parser, Composer, SafeConstructor, Resolver):  # type: ignore[misc]
    """A safe loader refusing documents beyond the ``MAX_YAML_*`` bounds (with ConfigError)."""

    get_single_node = Composer.get_single_node  # not libyaml's, which composes out of reach

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.composed = self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed, self.depth = self.composed + 1, self.depth + 1
        if self.composed > MAX_YAML_NODES or self.depth > MAX_YAML_DEPTH:
            raise ConfigError(f"holds over {MAX_YAML_NODES} values or {MAX_YAML_DEPTH} levels")
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def construct_document(self, node: Any) -> Any:
        _measure(node)
        return super().construct_document(node)


# YAML 1.1 (PyYAML) reads 1e30, 1e-3, 1.0e30 and 1E5 as strings: its floats need a dot and a
# signed exponent. Read them as floats, as YAML 1.2 and kdlab's overrides do; a quoted one stays
# text. Only this loader changes, and only exponent forms (ints and other floats resolve first).
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _measure(root: Any) -> None:
    """Refuse a node graph whose expansion (every alias a copy) is too big, deep or infinite."""
    done: dict[int, tuple[int, int]] = {}  # id → (values, depth); (0, 0) while expanding
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        kids = node.value if isinstance(node, yaml.CollectionNode) else []
        kids = [n for pair in kids for n in pair] if isinstance(node, yaml.MappingNode) else kids
        if finished:
            size = 1 + sum(done[id(k)][0] for k in kids)
            done[id(node)] = (size, 1 + max((done[id(k)][1] for k in kids), default=0))
            if size > MAX_YAML_NODES or done[id(node)][1] > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"expands to over {MAX_YAML_NODES} values or {MAX_YAML_DEPTH} levels (an alias "
                    "*name copies its anchored part each time it is used); write values out plainly"
                )
        elif done.get(id(node)) == (0, 0):
            raise ConfigError("holds a recursive alias (an anchored part that contains itself)")
        elif id(node) not in done:
            done[id(node)] = (0, 0)
            stack += [(node, True), *((kid, False) for kid in kids)]


def parse_yaml(text: str, source: str = "config") -> Any:
    """The data of one YAML document, bounded in size (see ``MAX_YAML_NODES``); ConfigError."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as err:
        raise ConfigError(f"{source} is refused: its YAML {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {shorten(str(err), 1000)}") from None
    except (ValueError, OverflowError, TypeError, RecursionError) as err:  # e.g. 2024-13-01,
        raise ConfigError(  # which YAML reads as an impossible date
            f"{source} holds a value YAML cannot read ({shorten(str(err), 200)}); quote it "
            "if it is meant as text"
        ) from None
    finally:
        loader.dispose()


def read_text(path: Path, what: str = "config file") -> str:
    """The UTF-8 text of ``path`` (at most ``MAX_CONFIG_BYTES``), or a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    if (size := path.stat().st_size) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what} {path} is {size / 2**20:.1f} MiB, over the {MAX_CONFIG_BYTES >> 20} "
            "MiB a config may have; is this the right file?"
        )
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} on line "
            f"{raw.count(10, 0, err.start) + 1} cannot be decoded ({err.reason}); save it as UTF-8"
        ) from None


__all__ = ["MAX_CONFIG_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "parse_yaml", "read_text"]
