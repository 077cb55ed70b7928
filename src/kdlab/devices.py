"""Where a run computes, and in which precision.

``device``: ``auto`` (CUDA if present, else Apple MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``
or ``mps``; an unavailable one is an error naming those that are. ``precision``: ``fp32``, or
mixed precision through :func:`torch.autocast` — ``bf16`` (CUDA and CPU) or ``fp16`` (CUDA, with
a :class:`torch.amp.GradScaler`, since fp16 gradients underflow). Loss terms upcast to fp32
themselves (``at_least_float32``), so divergences are never computed in half precision.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from kdlab.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
PRECISIONS = ("fp32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if mps_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    """The torch device for a settings name; a ConfigError naming the available ones."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(
            f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}; on this machine: "
            f"{', '.join(available_devices())}"
        )
    if name == "auto":
        return torch.device(
            "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
        )
    device = torch.device(name)
    usable = (
        device.type == "cpu"
        or (device.type == "mps" and mps_available())
        or (
            device.type == "cuda"
            and torch.cuda.is_available()
            and (device.index or 0) < torch.cuda.device_count()
        )
    )
    if not usable:
        raise ConfigError(
            f"device {name!r} is not available on this machine; available: "
            f"{', '.join(available_devices())} (or device: auto)"
        )
    return device


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run (fp16 training needs CUDA's GradScaler)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 trains on CUDA only (its gradient scaler), but the device is "
            f"{device}; use precision: bf16 (also on CPU) or fp32"
        )


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the forward passes (nothing for fp32)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_HALF[precision]):
        yield


def gradient_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (None otherwise): it scales the loss so fp16 gradients do not
    underflow, and skips the steps whose gradients overflowed."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for one with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


__all__ = [
    "PRECISIONS",
    "autocast",
    "available_devices",
    "check_precision",
    "gradient_scaler",
    "module_device",
    "resolve_device",
]
