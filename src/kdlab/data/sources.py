"""The registry: every dataset ``load_dataset`` accepts, in the order they are listed.

Each reader module declares its own ``SOURCES`` next to its reader, so adding a dataset is one
reader file plus one line here. Besides these names, a source may be an import path
``package.module:function`` (:mod:`kdlab.data.function`): a function of yours returning the arrays.
"""

from __future__ import annotations

from kdlab.data import (
    cifar,
    digits,
    folder,
    idx,
    multiview,
    notmnist,
    npy,
    npz,
    patch_views,
    svhn,
)
from kdlab.data.function import function_source, is_import_path
from kdlab.data.source import Source
from kdlab.errors import ranked

_DECLARED: tuple[Source, ...] = (
    *digits.SOURCES,
    *multiview.SOURCES,
    *patch_views.SOURCES,  # multiview-patches
    *idx.SOURCES,  # mnist, fashion-mnist, kmnist
    *svhn.SOURCES,
    *notmnist.SOURCES,
    *cifar.SOURCES,  # cifar10, cifar100
    *folder.SOURCES,  # your own images: root/train/<class>/, root/test/<class>/
    *npz.SOURCES,  # your own arrays in an .npz file
    *npy.SOURCES,  # your own arrays as .npy files, memory-mapped (they may stream)
)
SOURCES: dict[str, Source] = {s.name: s for s in _DECLARED}
assert len(SOURCES) == len(_DECLARED), "two declared sources share a name"
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def available_sources() -> list[str]:
    """Names ``load_dataset`` accepts (whether or not their files are on this machine); import
    paths ``package.module:function`` besides."""
    return list(SOURCES)


def get_source(name: str) -> Source:
    """The source called ``name`` (case and ``_``/``-`` insensitive), or a ValueError.

    An import path ``package.module:function`` is imported here: a wrong one is a ConfigError.
    """
    if is_import_path(name):
        return function_source(name.strip())
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in SOURCES:
        return SOURCES[key]
    raise ValueError(
        f"unknown dataset {name!r}; valid names (closest first): {ranked(key, SOURCES)}; or "
        "'package.module:function', a function of yours returning the arrays"
    )


# Re-exported for callers that look these up through the registry.
__all__ = ["SOURCES", "available_sources", "get_source"]
