"""Atomic checkpoint files: a crash mid-write never leaves a half-written checkpoint behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlab.errors import KdlabError

FORMAT = "kdlab-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers see either the old file or the new
    one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a kdlab checkpoint (trusted local file) and check its format marker."""
    path = Path(path)
    if not path.exists():
        raise KdlabError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise KdlabError(
            f"cannot read checkpoint {path}: {err}. Is it a complete torch file?"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise KdlabError(
            f"{path} is not a kdlab checkpoint (no '{FORMAT}' marker); to load plain weights use "
            "load_state_dict(path) instead"
        )
    return state


def load_state_dict(path: str | Path, model_key: str = "model") -> dict[str, torch.Tensor]:
    """Weights of one model from a kdlab checkpoint or model file, or a plain state_dict file."""
    path = Path(path)
    if not path.exists():
        raise KdlabError(f"weights file {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise KdlabError(f"cannot read weights file {path}: {err}") from err
    if isinstance(state, dict) and state.get("format") == FORMAT:
        models = state["models"]
        if model_key not in models:
            raise KdlabError(f"checkpoint {path} holds models {sorted(models)}, not {model_key!r}")
        return models[model_key]
    if isinstance(state, torch.nn.Module):
        return state.state_dict()
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise KdlabError(f"{path} holds neither a kdlab checkpoint nor a state_dict")
