"""Data that stays on disk: memory-mapped ``.npy`` arrays, read batch by batch.

``data.stream: true`` streams every split; unset (auto), a split whose source arrays are
memory-mapped (``source: npy``) streams when its images exceed ``data.memory_budget_gb``.
Arrays that a reader decoded into memory are written once to a ``.npy`` cache to stream
(``$KDLAB_CACHE`` or ``~/.kdlab/cache``, named by their content's hash).

A :class:`MappedDataset` is a split of an on-disk array (the rows of ``x_train.npy`` that form
it) with its labels in memory. :class:`StreamBatcher` reads each batch's rows in
``torch.utils.data.DataLoader`` workers (rows read in file order, pinned memory on CUDA, batches
prefetched), then moves it to the device, where the batch gets the same augmentation as in
memory. Its order, shards and augmentation draws are :class:`TensorBatcher`'s, so a streamed run
trains on exactly the batches of an in-memory one — only the memory it needs differs: the pages
of the batches in flight, not the data set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdlab.data.augment import Augmenter, Normalize
from kdlab.data.base import ArrayDataset, TensorBatcher, finish_inputs
from kdlab.distributed import World
from kdlab.types import Batch, Inputs

#: DataLoader workers per process when not given: a few, leaving a core for the training loop.
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class MappedDataset:
    """Rows ``rows`` of the ``.npy`` array at ``path`` (opened memory-mapped, on first use, in
    each process), with labels ``y``; the same interface as :class:`ArrayDataset`."""

    path: Path
    rows: np.ndarray
    y: Tensor
    augment: Augmenter | None = None
    normalize: Normalize | None = None
    #: Rows read as flat vectors (``data.flatten``).
    flatten: bool = False

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if len(self.rows) != len(self.y):
            raise ValueError(f"{len(self.rows)} rows but {len(self.y)} labels")
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers open the file themselves
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def example_shape(self) -> tuple[int, ...]:
        shape = tuple(self.array.shape[1:])
        return (int(np.prod(shape)),) if self.flatten else shape

    def subset(self, index: Tensor | np.ndarray) -> MappedDataset:
        index = np.asarray(torch.as_tensor(index, dtype=torch.long))
        return dataclasses.replace(self, rows=self.rows[index], y=self.y[index])

    def read(self, index: Tensor | slice | np.ndarray) -> Tensor:
        """The stored rows ``index`` of this split (uint8 or float), read in file order."""
        rows = self.rows[np.asarray(index) if isinstance(index, Tensor) else index]
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        block[order] = self.array[rows[order]]  # sorted rows: sequential reads of the file
        out = torch.from_numpy(block)
        return out.reshape(len(rows), -1) if self.flatten else out

    def inputs(self, index: Tensor | slice = slice(None)) -> Inputs:
        return self.finish(self.read(index))

    def finish(self, x: Inputs) -> Inputs:
        return finish_inputs(x, self.normalize)

    def on(self, device: torch.device, channels_last: bool = False) -> MappedDataset:
        return self  # stays on disk; each batch moves to the device when it is read

    def in_memory(self) -> ArrayDataset:
        """The split read whole into memory (for data that fits after all)."""
        return ArrayDataset(self.read(slice(None)), self.y, self.augment, self.normalize)


class _Steps(Dataset):
    """Item ``b``: the stored rows and indices of step ``b`` of one epoch (read in a worker)."""

    def __init__(self, data: MappedDataset, steps: list[Tensor]) -> None:
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        return self.data.read(self.steps[b]), self.steps[b]


class StreamBatcher(TensorBatcher):
    """:class:`TensorBatcher`'s batches of a :class:`MappedDataset`, read by DataLoader workers
    and moved to ``device``."""

    def __init__(
        self,
        data: MappedDataset,
        batch_size: int,
        *,
        seed: int = 0,
        world: World | None = None,
        device: torch.device | str = "cpu",
        workers: int | None = None,
    ) -> None:
        super().__init__(data, batch_size, seed=seed, world=world)  # type: ignore[arg-type]
        self.device = torch.device(device)
        self.workers = DEFAULT_WORKERS if workers is None else workers

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        plan = list(self.plan(epoch, torch.device("cpu")))
        loader = DataLoader(
            _Steps(self.data, [idx for _, idx, _ in plan]),  # type: ignore[arg-type]
            batch_size=None, shuffle=False, num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if self.workers else None,
        )  # fmt: skip
        for (step, _, used), (x, idx) in zip(plan, loader, strict=True):
            x = x.to(self.device, non_blocking=True)
            y = self.data.y[idx].to(self.device, non_blocking=True)
            yield self.finish(x, y, idx.to(self.device), (epoch, step, used))


@dataclass(frozen=True)
class DiskArray:
    """An ``.npy`` file standing in for an array a reader returned: its splits stream."""

    path: Path
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]


def mapped_file(x: Any) -> Path | None:
    """The ``.npy`` file behind ``x`` when ``x`` is a whole memory-mapped array, else None."""
    while isinstance(x, np.ndarray):
        if isinstance(x, np.memmap) and x.filename and x.offset is not None:
            whole = np.load(x.filename, mmap_mode="r") if str(x.filename).endswith(".npy") else None
            return Path(x.filename) if whole is not None and whole.shape == x.shape else None
        x = x.base
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("KDLAB_CACHE", Path.home() / ".kdlab" / "cache")).expanduser()


def to_disk(x: np.ndarray, name: str, path: Path | None = None) -> DiskArray:
    """``x`` as an ``.npy`` file: ``path``, its own file when it is memory-mapped, else a cached
    copy (written once, atomically, named by the content's hash)."""
    if path is None:
        digest = hashlib.sha256(np.ascontiguousarray(x).data).hexdigest()[:20]
        path = cache_dir() / f"{name}-{digest}.npy"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            with open(partial, "wb") as out:
                np.save(out, x)
            os.replace(partial, path)
    return DiskArray(path, tuple(x.shape))


def streamed_inputs(x: Any, stream: bool | None, budget_bytes: float, name: str) -> Any:
    """``x`` or the :class:`DiskArray` it streams from: always with ``stream`` true, never with
    false, and when unset only for memory-mapped arrays above the memory budget."""
    if x is None or isinstance(x, dict) or stream is False:
        return x  # keyword inputs (token ids) stay in memory: they are small
    path = mapped_file(x)
    if stream is None and (path is None or x.nbytes <= budget_bytes):
        return x
    return to_disk(x, name, path)


def make_batcher(
    data: ArrayDataset | MappedDataset,
    batch_size: int,
    seed: int,
    world: World | None,
    device: torch.device,
) -> TensorBatcher:
    """The batcher of a training split: in memory, or streamed from disk."""
    if isinstance(data, MappedDataset):
        return StreamBatcher(data, batch_size, seed=seed, world=world, device=device)
    return TensorBatcher(data, batch_size, seed=seed, world=world)


__all__ = [
    "DEFAULT_WORKERS",
    "DiskArray",
    "MappedDataset",
    "StreamBatcher",
    "make_batcher",
    "mapped_file",
    "streamed_inputs",
    "to_disk",
]
