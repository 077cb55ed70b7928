"""Exceptions kdlab raises. Every message names the problem and how to fix it."""

from __future__ import annotations


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
