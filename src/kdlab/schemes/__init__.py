"""Distillation schemes: who learns from whom. One file per scheme, each ending in its
``SCHEME = SchemeSpec(...)``; :mod:`kdlab.schemes.registry` finds them by name.

This package's init imports only the registry, so that the config (which validates
``distill.scheme`` and its options) does not load the engine or any scheme's code. Import a
scheme's classes from its own module, e.g. ``from kdlab.schemes.offline import OfflineScheme``.
"""

from kdlab.schemes.registry import SchemeSpec, get_scheme, register_scheme, scheme_names

__all__ = ["SchemeSpec", "get_scheme", "register_scheme", "scheme_names"]
