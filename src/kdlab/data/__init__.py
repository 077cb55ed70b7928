"""Datasets as in-memory tensors with deterministic, stratified train / validation / test splits.

``load_dataset(name)`` reads one of ``available_sources()`` from local files (nothing is
downloaded) and returns ``DataSplits``; ``TensorBatcher`` iterates over a split in mini-batches.
Your own data: sources ``folder`` (image folders), ``npz`` and ``package.module:function``
(options in a ``SourceSpec``), or PyTorch datasets through ``as_splits``.
"""

from kdlab.data.base import ArrayDataset, DataSplits, TensorBatcher, split_indices
from kdlab.data.in_memory import as_splits
from kdlab.data.load import SPLIT_SEED, load_dataset, with_augmentation
from kdlab.data.source import SourceSpec, locate
from kdlab.data.sources import SOURCES, available_sources, get_source

__all__ = [
    "SOURCES",
    "SPLIT_SEED",
    "ArrayDataset",
    "DataSplits",
    "SourceSpec",
    "TensorBatcher",
    "as_splits",
    "available_sources",
    "get_source",
    "load_dataset",
    "locate",
    "split_indices",
    "with_augmentation",
]
