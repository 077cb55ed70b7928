"""Batched data augmentation on the batch's device: ``data.augment`` in a config.

    data:
      augment: [{random_crop: {padding: 4}}, hflip, {cutout: {size: 16}},
                {normalize: {mean: [0.507, 0.487, 0.441], std: [0.267, 0.256, 0.276]}}]

Each op draws its parameters per sample from a generator that the batcher seeds with the run's
seed, the epoch and the step (:class:`kdlab.data.base.TensorBatcher`): a resumed run, a streamed
run and a run on several processes see the augmentations of one uninterrupted process (the draws
are made for the whole global batch; each rank uses its rows). Teacher and student get the same
augmented batch. Ops act on uint8 images as on float ones (crop, flip and erasing move or zero
pixels), so compact images are converted to float only after them.

Ops (images [N, C, H, W]):

* ``random_crop: {padding: 4, fill: 0, mode: constant|reflect}`` — pad each side, then cut an
  H×W window at a uniform offset in [0, 2·padding]² (the CIFAR recipe).
* ``hflip: {p: 0.5}`` — mirror left-right with probability p.
* ``cutout: {size: 16, p: 1.0}`` — DeVries & Taylor 2017: zero a size×size square centred at a
  uniform pixel (clipped at the border).
* ``random_erasing: {p: 0.5, scale: [0.02, 0.33], ratio: [0.3, 3.3], value: 0}`` — Zhong et al.
  2020: zero a rectangle of area fraction s ~ U(scale) and aspect r (log-uniform in ratio) at a
  uniform position; one draw per sample (a rectangle that does not fit erases nothing).
* ``normalize: {mean: [...], std: [...]}`` — per channel, (x − mean) / std on every split (not
  random: evaluation inputs are normalised too). It must come last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError, did_you_mean

Draw = tuple[torch.Generator, int, int]  # (generator, rows before this rank's, global batch)


def _uniform(draw: Draw, n: int, *shape: int) -> Tensor:
    """U[0, 1) for the whole global batch; this rank's ``n`` rows."""
    gen, offset, total = draw
    values = torch.rand((total, *shape), generator=gen, device=gen.device)
    return values[offset : offset + n]


@dataclass(frozen=True)
class RandomCrop:
    padding: int = 4
    fill: float = 0.0
    mode: str = "constant"

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"random_crop: padding must be an integer ≥ 0, got {self.padding!r}")
        if self.mode not in ("constant", "reflect"):
            raise ConfigError(f"random_crop: mode must be constant or reflect, got {self.mode!r}")

    def __call__(self, x: Tensor, draw: Draw) -> Tensor:
        p = self.padding
        n, _, h, w = x.shape
        offsets = (_uniform(draw, n, 2) * (2 * p + 1)).long().clamp_(max=2 * p)
        if p == 0:
            return x
        if self.mode == "reflect":
            padded = F.pad(x.float(), (p, p, p, p), mode="reflect").to(x.dtype)
        else:
            padded = F.pad(x, (p, p, p, p), value=self.fill)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [N, H]
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [N, W]
        sample = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indices around the channel slice: the result is [N, H, W, C].
        out = padded[sample, :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous(memory_format=_format(x))


@dataclass(frozen=True)
class HFlip:
    p: float = 0.5

    def __post_init__(self) -> None:
        _probability("hflip", self.p)

    def __call__(self, x: Tensor, draw: Draw) -> Tensor:
        flip = _uniform(draw, len(x)) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class Cutout:
    size: int = 16
    p: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"cutout: size must be an integer ≥ 1, got {self.size!r}")
        _probability("cutout", self.p)

    def __call__(self, x: Tensor, draw: Draw) -> Tensor:
        n, _, h, w = x.shape
        u = _uniform(draw, n, 3)
        cy, cx = (u[:, 0] * h).floor(), (u[:, 1] * w).floor()
        top, left = cy - self.size // 2, cx - self.size // 2
        box = (top, top + self.size, left, left + self.size)
        return _erase(x, box, u[:, 2] < self.p, 0.0)


@dataclass(frozen=True)
class RandomErasing:
    p: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float = 0.0

    def __post_init__(self) -> None:
        _probability("random_erasing", self.p)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"random_erasing: scale must be 0 < low ≤ high ≤ 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"random_erasing: ratio must be 0 < low ≤ high, got {self.ratio}")

    def __call__(self, x: Tensor, draw: Draw) -> Tensor:
        n, _, h, w = x.shape
        u = _uniform(draw, n, 5)
        area = h * w * (self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0]))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
        eh, ew = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
        fits = (eh < h) & (ew < w) & (u[:, 4] < self.p)
        top = (u[:, 2] * (h - eh + 1)).floor()
        left = (u[:, 3] * (w - ew + 1)).floor()
        return _erase(x, (top, top + eh, left, left + ew), fits, self.value)


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(
                f"normalize: mean and std need one value per channel each, got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"normalize: every std must be > 0, got {list(self.std)}")

    def check(self, channels: int, where: str) -> None:
        if len(self.mean) != channels:
            raise ConfigError(
                f"{where}: normalize has {len(self.mean)} mean/std values, but the images have "
                f"{channels} channel(s); give one value per channel"
            )

    def __call__(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std


def _probability(op: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ConfigError(f"{op}: p must be a probability in [0, 1], got {p!r}")


def _format(x: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not (x.is_contiguous())
        else torch.contiguous_format
    )


def _erase(x: Tensor, box: tuple[Tensor, ...], active: Tensor, value: float) -> Tensor:
    """``x`` with rows [top, bottom) × columns [left, right) set to ``value`` where ``active``."""
    top, bottom, left, right = box
    h, w = x.shape[-2:]
    r = torch.arange(h, device=x.device, dtype=top.dtype)
    c = torch.arange(w, device=x.device, dtype=top.dtype)
    inside_r = (r >= top[:, None]) & (r < bottom[:, None])  # [N, H]
    inside_c = (c >= left[:, None]) & (c < right[:, None])  # [N, W]
    mask = inside_r[:, :, None] & inside_c[:, None, :] & active[:, None, None]
    return x.masked_fill(mask[:, None], value)


RANDOM_OPS: dict[str, Callable[..., Any]] = {
    "random_crop": RandomCrop, "hflip": HFlip, "cutout": Cutout, "random_erasing": RandomErasing,
}  # fmt: skip
OPS = [*RANDOM_OPS, "normalize"]


@dataclass(frozen=True)
class Augmenter:
    """The random ops of ``data.augment`` in order (``normalize`` is kept apart: every split)."""

    ops: tuple[Callable[[Tensor, Draw], Tensor], ...]

    def __call__(self, x: Tensor, draw: Draw) -> Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"data.augment works on images [N, C, H, W], but the inputs have shape "
                f"{tuple(x.shape)}; drop data.augment (or data.flatten) for this data"
            )
        for op in self.ops:
            x = op(x, draw)
        return x


def parse_augment(
    specs: Sequence[str | Mapping[str, Any]] | None,
) -> tuple[Augmenter | None, Normalize | None]:
    """``data.augment`` as (random ops or None, normalisation or None); a ConfigError names a
    wrong op or argument and the valid ones."""
    ops: list[Any] = []
    normalize: Normalize | None = None
    for i, spec in enumerate(specs or []):
        where = f"data.augment.{i}"
        name, args = _split(spec, where)
        if normalize is not None:
            raise ConfigError(
                f"{where}: {name} comes after normalize, which must be last (it applies to "
                "every split, after the random ops); move normalize to the end"
            )
        if name == "normalize":
            normalize = _build(Normalize, name, args, where, tuples=("mean", "std"))
        else:
            ops.append(_build(RANDOM_OPS[name], name, args, where, tuples=("scale", "ratio")))
    return (Augmenter(tuple(ops)) if ops else None), normalize


def _split(spec: str | Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        name, args = spec, {}
    elif isinstance(spec, Mapping) and len(spec) == 1:
        name, args = next(iter(spec.items()))
        args = {} if args is None else args
        if not isinstance(args, Mapping):
            raise ConfigError(
                f"{where}: the arguments of {name!r} must be a mapping like {{padding: 4}}, "
                f"got {args!r}"
            )
    else:
        raise ConfigError(
            f"{where}: an op is a name (hflip) or a one-key mapping ({{random_crop: "
            f"{{padding: 4}}}}), got {spec!r}"
        )
    if name not in OPS:
        raise ConfigError(
            f"{where}: unknown augmentation {name!r}{did_you_mean(str(name), OPS)}; valid: "
            f"{', '.join(OPS)}"
        )
    return str(name), dict(args)


def _build(cls: Any, name: str, args: dict[str, Any], where: str, tuples: Sequence[str]) -> Any:
    fields = list(cls.__dataclass_fields__)
    for key in args:
        if key not in fields:
            raise ConfigError(
                f"{where}: {name} has no argument {key!r}{did_you_mean(key, fields)}; its "
                f"arguments: {', '.join(fields)}"
            )
    try:
        values = {k: tuple(v) if k in tuples and isinstance(v, (list, tuple)) else v
                  for k, v in args.items()}  # fmt: skip
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{where}: {name}: {err}") from None


__all__ = [
    "OPS",
    "Augmenter",
    "Cutout",
    "Draw",
    "HFlip",
    "Normalize",
    "RandomCrop",
    "RandomErasing",
    "parse_augment",
]
