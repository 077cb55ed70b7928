"""In-memory datasets, deterministic splits and fast tensor batching.

Small image datasets fit in memory, so a batch is one fancy-index of a tensor with a slice of a
permutation — many times faster on a CPU than a per-sample ``DataLoader`` with a collate step.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdlab.data.augment import Augmenter, Draw, Normalize
from kdlab.distributed import World, shard
from kdlab.types import Batch, Inputs


@dataclass
class ArrayDataset:
    """Examples in memory: inputs ``x`` and int64 labels ``y``.

    ``x`` is float32 ([N, C, H, W] or [N, D]), uint8 images (kept compact — a quarter of the
    memory — and scaled to [0, 1] per batch, on the batch's device), or a dict of tensors with N
    rows each (a model's keyword arguments, e.g. token ids and an attention mask). ``augment``
    (random ops, training batches only, applied by :class:`TensorBatcher`) and ``normalize``
    (every split) come from ``data.augment`` (:mod:`kdlab.data.augment`).
    """

    x: Inputs
    y: Tensor
    augment: Augmenter | None = None
    normalize: Normalize | None = None

    def __post_init__(self) -> None:
        sizes = {k: int(v.shape[0]) for k, v in _parts(self.x).items()}
        if any(n != self.y.shape[0] for n in sizes.values()):
            raise ValueError(
                f"inputs and labels differ in length: inputs {sizes}, {self.y.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor | np.ndarray) -> ArrayDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return dataclasses.replace(self, x=take(self.x, index), y=self.y[index])

    def inputs(self, index: Tensor | slice = slice(None)) -> Inputs:
        """The model inputs of examples ``index``: as floats, normalised (never augmented)."""
        return self.finish(take(self.x, index))

    def finish(self, x: Inputs) -> Inputs:
        """Stored inputs → model inputs: uint8 scaled to [0, 1], then ``normalize``."""
        return finish_inputs(x, self.normalize)

    def on(self, device: torch.device, channels_last: bool = False) -> ArrayDataset:
        """This split on ``device`` (itself when it is there already); images channels-last
        when asked."""
        y = self.y.to(device)
        if isinstance(self.x, dict):
            x: Inputs = {k: v.to(device) for k, v in self.x.items()}
            same = all(x[k] is v for k, v in self.x.items())
        else:
            x = self.x.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            same = x is self.x
        return self if same and y is self.y else dataclasses.replace(self, x=x, y=y)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one input (of the first keyword input, for dict inputs)."""
        first = next(iter(_parts(self.x).values()))
        return tuple(first.shape[1:])


def finish_inputs(x: Inputs, normalize: Normalize | None) -> Inputs:
    """Stored inputs → model inputs: uint8 scaled to [0, 1], then ``normalize``."""
    if isinstance(x, dict):
        return x
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return normalize(x) if normalize is not None else x


def _parts(x: Inputs) -> dict[str, Tensor]:
    return x if isinstance(x, dict) else {"x": x}


def take(x: Inputs, index: Tensor | slice) -> Inputs:
    """Rows ``index`` of a tensor, or of every tensor of a dict."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return x[index]


@dataclass
class DataSplits:
    """Train / validation / test splits of one source, with what models need to know about it."""

    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return self.train.example_shape

    @property
    def in_features(self) -> int:
        return int(np.prod(self.input_shape))

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
            f"input {self.input_shape}, {self.num_classes} classes"
        )


class TensorBatcher:
    """Iterates over an ``ArrayDataset`` in mini-batches by indexing with a permutation.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same batches
    as an uninterrupted one. With a ``world`` of several processes, ``batch_size`` is the global
    batch and each rank gets its equal, disjoint slice of every batch
    (:func:`kdlab.distributed.shard`).
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        world: World | None = None,
        augment: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError("cannot batch an empty dataset; check the split sizes and subsets")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.world = world or World(0, 1, 0)
        #: Apply the data's augmentation (training); False: the stored examples as they are.
        self.augment = augment

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        if self.drop_last and n >= b:
            return n // b
        # A last, short batch that cannot give every rank an example is left out.
        return n // b + (n % b >= self.world.size)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        device = self.data.y.device  # the data may live on a GPU: index it there
        for step, idx, used in self.plan(epoch, device):
            yield self.finish(take(self.data.x, idx), self.data.y[idx], idx, (epoch, step, used))

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def plan(self, epoch: int, device: torch.device) -> Iterator[tuple[int, Tensor, int]]:
        """``(step, this rank's indices, rows the ranks train on)`` of each step of ``epoch``;
        the order depends only on ``(seed, epoch)``."""
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        order = order.to(device)
        for b in range(len(self)):
            whole = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield b, shard(whole, self.world), len(whole) - len(whole) % self.world.size

    def finish(self, x: Inputs, y: Tensor, idx: Tensor, where: tuple[int, int, int]) -> Batch:
        """The batch of stored rows ``x``: augmented (training) with the draws of ``where`` =
        (epoch, step, rows of the global batch), then scaled and normalised."""
        if self.augment and self.data.augment is not None:
            assert isinstance(x, Tensor)  # augmentation is refused for keyword inputs
            x = self.data.augment(x, self._draw(*where, device=y.device))
        return Batch(self.data.finish(x), y, idx)

    def _draw(self, epoch: int, step: int, total: int, device: torch.device) -> Draw:
        """The augmentation draws of one step: seeded by (seed, epoch, step), made for the
        whole global batch (``total`` rows), of which this rank uses its own."""
        gen = torch.Generator(device=device)
        gen.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + step)
        share = total // self.world.size
        return gen, self.world.rank * share, total


def on_device(data: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``data`` moved to ``device`` once (the same object when it is there already, or when it
    streams from disk); images in channels-last memory format when asked."""
    return None if data is None else data.on(device, channels_last)


def split_indices(
    labels: np.ndarray, sizes: list[int], seed: int, *, stratify: bool = True
) -> list[np.ndarray]:
    """Partition ``range(len(labels))`` into parts of given sizes, deterministically by ``seed``.

    With ``stratify`` each part keeps the class proportions as closely as integer counts allow
    (useful for tiny labelled subsets such as 60 images over 10 classes).
    """
    n = len(labels)
    if sum(sizes) > n or any(s < 0 for s in sizes):
        raise ValueError(f"cannot split {n} samples into parts of sizes {sizes}")
    rng = np.random.default_rng(seed)
    if not stratify:
        perm = rng.permutation(n)
        bounds = np.cumsum([0, *sizes])
        return [np.sort(perm[a:b]) for a, b in itertools.pairwise(bounds)]
    # Stratified: shuffle within each class, interleave classes round-robin, then cut in order.
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    ranks = np.concatenate([np.arange(len(ix)) / max(len(ix), 1) for ix in by_class])
    pool = np.concatenate(by_class)
    jitter = rng.random(len(pool)) * 1e-9  # break ties between classes randomly
    order = pool[np.argsort(ranks + jitter, kind="stable")]
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]
