"""Streaming from memory-mapped arrays (kdlab.data.stream): the batches and the trained weights
of an in-memory run, with a fraction of the memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.data.augment import parse_augment
from kdlab.data.base import ArrayDataset, TensorBatcher
from kdlab.data.stream import MappedDataset, StreamBatcher
from kdlab.engine import Engine
from kdlab.losses import build_objective
from kdlab.models import build_model
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings

AUGMENT = [{"random_crop": {"padding": 1}}, "hflip", {"normalize": {"mean": [0.4], "std": [0.3]}}]


def both(tmp_path: Path, n: int = 90) -> tuple[ArrayDataset, MappedDataset]:
    """The same split in memory and on disk: rows 5..5+n of a uint8 array, labels in RAM."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(n + 10, 1, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", array)
    rows = np.arange(5, 5 + n)[::-1].copy()  # not in file order: reads must reorder
    y = torch.from_numpy(rng.integers(0, 3, size=n))
    augment, normalize = parse_augment(AUGMENT)
    memory = ArrayDataset(torch.from_numpy(array[rows]), y, augment, normalize)
    return memory, MappedDataset(tmp_path / "x.npy", rows, y, augment, normalize)


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_batches_equal_in_memory_batches(tmp_path: Path, workers: int) -> None:
    memory, mapped = both(tmp_path)
    a = list(TensorBatcher(memory, 16, seed=3).epoch(1))
    b = list(StreamBatcher(mapped, 16, seed=3, workers=workers).epoch(1))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.index, y.index)
    assert torch.equal(memory.inputs(slice(3, 9)), mapped.inputs(slice(3, 9)))
    sub = torch.tensor([7, 2, 40])
    assert torch.equal(memory.subset(sub).inputs(), mapped.subset(sub).inputs())
    assert mapped.example_shape == (1, 6, 6) and len(mapped) == 90


def test_streamed_training_gives_the_in_memory_weights(tmp_path: Path) -> None:
    memory, mapped = both(tmp_path)
    settings = TrainSettings(epochs=2, batch_size=16, device="cpu",
                             optimizer={"name": "sgd", "lr": 0.1})  # fmt: skip
    val = memory.subset(torch.arange(10))
    weights = []
    for data in (memory, mapped):
        model = build_model({"type": "mlp", "hidden": [8]}, (1, 6, 6), 3, seed=1)
        history = Engine(settings, progress=False).fit(
            OfflineScheme(model, build_objective([{"type": "ce"}])), data, val
        )
        weights.append((model.state_dict(), history[-1]["val_accuracy"]))
    (a, acc_a), (b, acc_b) = weights
    assert acc_a == acc_b
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_mapped_split_is_not_read_whole_and_pickles_without_its_pages(tmp_path: Path) -> None:
    import pickle

    _, mapped = both(tmp_path)
    mapped.inputs(slice(0, 2))  # opens the memory map
    assert isinstance(mapped.array, np.memmap)
    assert len(pickle.dumps(mapped)) < 4000  # the worker gets a path, not the array
    assert torch.equal(mapped.in_memory().inputs(), mapped.inputs())


def npy_folder(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir()
    for split, n in (("train", 120), ("test", 40)):
        np.save(folder / f"x_{split}.npy", rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8))
        np.save(folder / f"y_{split}.npy", np.arange(n) % 3)
    (folder / "class_names.txt").write_text("a\nb\nc\n")
    return folder


@pytest.mark.filterwarnings("ignore::kdlab.health.TrainingWarning")  # random labels
def test_data_stream_in_a_config_chooses_the_path_and_trains_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdlab.config import parse_config
    from kdlab.experiment import run_experiment
    from kdlab.preflight import load_data

    monkeypatch.setenv("KDLAB_CACHE", str(tmp_path / "cache"))
    root = npy_folder(tmp_path / "mine")
    train = {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}}
    base = {"name": "s", "seeds": [0],
            "teacher": {"model": {"type": "mlp", "hidden": [8]}, "train": train},
            "student": {"model": {"type": "mlp", "hidden": [4]}, "train": train}}  # fmt: skip

    def config(**data: object):
        return parse_config({**base, "data": {"source": "npy", "root": str(root), **data}})

    kinds = {}
    for name, data in {"auto": {}, "tiny budget": {"memory_budget_gb": 1e-9},
                       "off": {"stream": False, "memory_budget_gb": 1e-9},
                       "on": {"stream": True}}.items():  # fmt: skip
        splits = load_data(config(**data), 0)
        kinds[name] = type(splits.train).__name__
        assert splits.class_names == ["a", "b", "c"] and splits.input_shape == (1, 6, 6)
    assert kinds == {"auto": "ArrayDataset", "tiny budget": "MappedDataset",
                     "off": "ArrayDataset", "on": "MappedDataset"}  # fmt: skip
    assert load_data(config(stream=True), 0).train.path == root / "x_train.npy"  # no copy made
    metrics = [{r.role: r.metrics for r in run_experiment(config(stream=s), progress=False).runs}
               for s in (False, True)]  # fmt: skip
    assert metrics[0] == metrics[1]  # the same numbers from disk as from memory
    digits = parse_config({**base, "data": {"source": "digits", "stream": True}})
    streamed = load_data(digits, 0).train
    assert isinstance(streamed, MappedDataset) and streamed.path.parent == tmp_path / "cache"
    assert "stream" not in parse_config({**base, "data": {"source": "digits"}}).model_dump()["data"]
