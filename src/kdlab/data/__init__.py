"""Datasets as in-memory tensors with deterministic, stratified train / validation / test splits.

``load_dataset(name)`` reads one of ``available_sources()`` from local files (nothing is
downloaded) and returns ``DataSplits``; ``TensorBatcher`` iterates over a split in mini-batches.
"""

from kdlab.data.base import ArrayDataset, DataSplits, TensorBatcher, split_indices
from kdlab.data.sources import SPLIT_SEED, available_sources, load_dataset

__all__ = [
    "SPLIT_SEED",
    "ArrayDataset",
    "DataSplits",
    "TensorBatcher",
    "available_sources",
    "load_dataset",
    "split_indices",
]
