"""Checkpoint and weights files: written atomically, read without running code from the file.

Writes go to a temporary file beside the target, are fsync'ed, then renamed over it, so a crash
or a full disk mid-write never leaves a half-written checkpoint behind. Reads use
``torch.load(weights_only=True)``: tensors, dicts, lists, tuples and plain numbers load; any
other pickled object (a whole ``nn.Module``, a numpy array, a payload that runs code) is refused
with a :class:`~kdlab.errors.KdlabError` before any of it runs. ``.safetensors`` files are read
with the ``safetensors`` package.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from kdlab.errors import KdlabError

FORMAT = "kdlab-checkpoint"
VERSION = 1

_NO_SPACE = "no space left on the device"
_TOO_LARGE = "file too large (a file-size limit)"
_TORCH_WRITE_FAILED = ("enforce fail", "PytorchStreamWriter failed writing file")
_SAVE_WEIGHTS = (
    "save the weights instead: torch.save(model.state_dict(), path), or a .safetensors file "
    "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))"
)


# -- writing -----------------------------------------------------------------------------------


def on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in dicts, lists, tuples) on the CPU: a checkpoint written on a
    GPU loads anywhere, and resumes on another device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_atomic(
    obj: Any, path: str | Path, before_replace: Callable[[Path], None] | None = None
) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers see either the old file or the new
    one, never a partial write. A full disk or a file-size limit raises a ``KdlabError`` that
    says so; the temporary file is removed and the previous file at ``path`` is left untouched.
    ``before_replace`` gets the complete temporary file just before the rename (e.g. to record
    its hash while the old file is still in place).
    """
    return _write_atomic(path, lambda handle: torch.save(obj, handle), before_replace)


def save_model(
    state_dict: Mapping[str, torch.Tensor], directory: str | Path, epoch: int | None = None
) -> dict[str, Path]:
    """Write a run's final weights to ``directory`` as ``model.pt`` and ``model.safetensors``.

    ``model.pt`` is a kdlab model file (``{"format", "version", "epoch", "models": {"model":
    state_dict}}``, read by :func:`load_state_dict`); ``model.safetensors`` holds the same
    tensors (copied: safetensors refuses shared or non-contiguous ones) for other tools. Both
    are written atomically. Returns ``{"model": model.pt path, "safetensors": its path}``.
    """
    from safetensors.torch import save as safetensors_bytes

    directory = Path(directory)
    weights = dict(state_dict)
    problem = _state_dict_problem(weights)
    if problem:
        raise KdlabError(f"cannot save the weights to {directory}: the state_dict {problem}")
    state = {"format": FORMAT, "version": VERSION, "epoch": epoch,
             "models": {"model": on_cpu(weights)}}  # fmt: skip
    pt = save_atomic(state, directory / "model.pt")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    metadata = {"format": "kdlab-model", "version": str(VERSION)}
    if epoch is not None:
        metadata["epoch"] = str(epoch)
    data = safetensors_bytes(tensors, metadata=metadata)
    st = _write_atomic(directory / "model.safetensors", lambda handle: handle.write(data))
    return {"model": pt, "safetensors": st}


def sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(
    path: str | Path,
    write: Callable[[BinaryIO], Any],
    before_replace: Callable[[Path], None] | None = None,
) -> Path:
    """Call ``write`` on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    existed = path.exists()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        problem = _write_problem(err)
        if problem is None:
            raise
        kept = f"the previous file at {path} is intact" if existed else "no earlier file was there"
        raise KdlabError(
            f"cannot write {path}: {problem}. The temporary file was removed and {kept}; free "
            "some space or raise the limit (e.g. `ulimit -f`), then run again"
        ) from err
    return path


def _write_problem(err: BaseException) -> str | None:
    """A full disk or a file-size limit behind a failed write (None: some other failure)."""
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:  # torch wraps the OSError it got
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return _NO_SPACE
        if isinstance(cause, OSError) and cause.errno == getattr(errno, "EDQUOT", None):
            return f"{_NO_SPACE} (disk quota exceeded)"
        if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
            return _TOO_LARGE
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED):
        if _file_size_limited():
            return _TOO_LARGE
        return f"{_NO_SPACE}, or a file-size limit (torch: {str(err).splitlines()[0]})"
    return None


def _file_size_limited() -> bool:
    try:
        import resource
    except ImportError:  # Windows
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


# -- reading -----------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a kdlab checkpoint and check its format marker and its ``models`` entry.

    Loaded with ``weights_only=True``: a file holding anything but tensors and plain containers
    (a pickled object whose loading would run code) raises a ``KdlabError``, and nothing of it
    runs. Checkpoints written by kdlab before this (numpy random state inside) are refused so.
    """
    path = Path(path)
    if not path.exists():
        raise KdlabError(f"checkpoint {path} does not exist; check the path")
    if _is_safetensors(path):
        raise KdlabError(
            f"{path} is a safetensors weights file, not a kdlab checkpoint; load its weights "
            "with load_state_dict(path)"
        )
    state = _torch_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        held = "" if isinstance(state, dict) else f", it holds a {type(state).__name__}"
        raise KdlabError(
            f"{path} is not a kdlab checkpoint (no '{FORMAT}' marker{held}); to load plain "
            "weights use load_state_dict(path) instead"
        )
    _check_models(state, path)
    return state


def load_state_dict(path: str | Path, model_key: str = "model") -> dict[str, torch.Tensor]:
    """Weights of one model from a kdlab checkpoint or model file, a plain state_dict file
    (``torch.save(model.state_dict(), path)``) or a ``.safetensors`` file.

    A whole pickled ``nn.Module`` is refused (loading it would run code from the file).
    """
    path = Path(path)
    if not path.exists():
        raise KdlabError(f"weights file {path} does not exist; check the path")
    if _is_safetensors(path):
        return _load_safetensors(path)
    state = _torch_load(path, "weights file")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        models = _check_models(state, path)
        if model_key not in models:
            raise KdlabError(f"checkpoint {path} holds models {sorted(models)}, not {model_key!r}")
        return models[model_key]
    problem = _state_dict_problem(state)
    if problem:
        raise KdlabError(
            f"{path} holds neither a kdlab checkpoint nor a state_dict: it {problem}. To share "
            f"a model, {_SAVE_WEIGHTS}"
        )
    return state


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ...: a damaged or foreign file
        raise KdlabError(
            f"cannot read safetensors file {path}: {err}. Is it a complete .safetensors file?"
        ) from err


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a ``KdlabError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path, err)
        if unsafe:
            raise KdlabError(_refusal(path, what, unsafe)) from err
        raise KdlabError(f"cannot read {what} {path}: {_short(err)}") from err
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise KdlabError(
            f"cannot read {what} {path}: {_short(err)}. Is it a complete torch file?"
        ) from err


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The Python objects (``module.name``) in the file that ``weights_only`` refuses."""
    found = {name.rstrip(".") for name in re.findall(r"GLOBAL ([\w.]+)", str(err))}
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:  # torch >= 2.5: read from the pickle's opcodes, nothing runs
        with contextlib.suppress(Exception):  # not a zip file: the message named the first
            found.update(scan(str(path)))
    return sorted(found)


def _refusal(path: Path, what: str, unsafe: list[str]) -> str:
    names = ", ".join(unsafe[:4]) + (f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else "")
    if all(name.startswith("numpy") for name in unsafe):
        if what == "checkpoint":
            return (
                f"checkpoint {path} was written by an older kdlab (its random-number state "
                f"holds numpy objects: {names}) and cannot be resumed safely: kdlab no longer "
                "unpickles such objects, as unpickling can run code from the file. Start the run "
                f"again (delete {path})"
            )
        return (
            f"{what} {path} holds numpy objects ({names}), as training checkpoints of an older "
            "kdlab do; kdlab loads only tensors, so it cannot be read safely. Use the run's "
            "model.pt, a state_dict or a .safetensors file"
        )
    if any(name.startswith(("torch.nn.modules.", "kdlab.models.")) for name in unsafe):
        held = f"a whole pickled model (nn.Module: {names})"
    else:
        held = f"pickled Python objects ({names})"
    return (
        f"kdlab refuses to load {what} {path}: it holds {held}, which cannot be loaded without "
        f"running code from the file; kdlab loads only tensors. If it is a model, {_SAVE_WEIGHTS}"
    )


def _short(err: Exception) -> str:
    """The gist of a torch load error, without torch's advice to load with weights_only=False."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _check_models(state: dict[str, Any], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``state["models"]``, checked to be a dict of state_dicts by model name."""
    if "models" not in state:
        raise KdlabError(
            f"checkpoint {path} has no 'models' entry: it is damaged or was not written by kdlab"
        )
    models = state["models"]
    if not isinstance(models, dict):
        raise KdlabError(
            f"checkpoint {path}: 'models' is a {type(models).__name__}, not a dict of "
            "state_dicts by model name; the file is damaged or was not written by kdlab"
        )
    for key, weights in models.items():
        problem = _state_dict_problem(weights)
        if problem:
            raise KdlabError(f"checkpoint {path}: models[{key!r}] {problem}")
    return models


def _state_dict_problem(weights: Any) -> str | None:
    """Why ``weights`` is not a state_dict (a dict of tensors by name); None when it is one."""
    if not isinstance(weights, dict):
        return f"is a {type(weights).__name__}, not a state_dict (a dict of tensors)"
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            return f"is not a dict of tensors: entry {key!r} is a {type(value).__name__}"
    return None
