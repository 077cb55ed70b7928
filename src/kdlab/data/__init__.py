"""Datasets as in-memory tensors with deterministic, stratified train / validation / test splits.

``load_dataset(name)`` reads one of ``available_sources()`` from local files (nothing is
downloaded) and returns ``DataSplits``; ``TensorBatcher`` iterates over a split in mini-batches.
"""

from kdlab.data.base import ArrayDataset, DataSplits, TensorBatcher, split_indices
from kdlab.data.load import SPLIT_SEED, load_dataset, with_augmentation
from kdlab.data.source import locate
from kdlab.data.sources import SOURCES, available_sources, get_source

__all__ = [
    "SOURCES",
    "SPLIT_SEED",
    "ArrayDataset",
    "DataSplits",
    "TensorBatcher",
    "available_sources",
    "get_source",
    "load_dataset",
    "locate",
    "split_indices",
    "with_augmentation",
]
