"""Synthetic "multi-view" data of seed 001 §9 (Allen-Zhu & Li 2020): why KD and ensembles help.

Two classes, four features: v1, v2 belong to the first class, v3, v4 to the second. Following the
seed's table, a first-class sample shows

    v1 = v2 = 1, v3 = v4 = 0.1   with probability 80 %   (multi-view)
    v1 = 1,      v3 = v4 = 0.1   with probability 10 %   (single view: first feature only)
    v2 = 1,      v3 = v4 = 0.1   with probability 10 %   (single view: second feature only)

and a second-class sample likewise with the roles of (v1, v2) and (v3, v4) swapped. The seed's
claim: a single model quickly picks up one feature per class and memorises the single-view
samples lacking it (100 % train, about 90 % test accuracy), while a student distilled from an
ensemble learns every feature. ``view_accuracy`` measures exactly that, per kind of sample.

Layout: an input is a ``[1, patches, width]`` image in [0, 1]. Feature k is a fixed pattern on the
k-th quarter of a patch's ``width`` coordinates; each feature a sample shows is written, scaled
by its strength, into its own randomly chosen patch, on top of uniform noise in [0, noise].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdlab.data.source import RawData, Source
from kdlab.errors import ConfigError

CLASS_NAMES = ["first class (v1, v2)", "second class (v3, v4)"]
VIEWS = ("multi", "first only", "second only")
VIEW_PROBS = (0.8, 0.1, 0.1)
WEAK = 0.1  # strength of the other class's features in every sample (the seed's 0.1)


@dataclass
class MultiViewData:
    x: np.ndarray  # float32 [n, 1, patches, width] in [0, 1]
    y: np.ndarray  # int64 [n]: 0 or 1
    view: np.ndarray  # int64 [n]: index into VIEWS
    strengths: np.ndarray  # float32 [n, 4]: the strengths of v1..v4 written into x


def feature_strengths(label: int, view: int) -> np.ndarray:
    """The seed's table: strengths of (v1, v2, v3, v4) for a class (0/1) and view (0/1/2)."""
    own = {0: (1.0, 1.0), 1: (1.0, 0.0), 2: (0.0, 1.0)}[view]
    return np.array((*own, WEAK, WEAK) if label == 0 else (WEAK, WEAK, *own), dtype=np.float32)


def make_multiview(
    n: int, seed: int, *, patches: int = 16, width: int = 16, noise: float = 0.6
) -> MultiViewData:
    """``n`` samples (classes balanced in expectation) drawn with ``seed``."""
    if n < 1 or patches < 4 or width < 4 or width % 4:
        raise ConfigError(
            f"multiview needs n ≥ 1, patches ≥ 4 (one patch per feature) and a width divisible "
            f"by 4 (one quarter per feature); got n={n}, patches={patches}, width={width}"
        )
    if not 0.0 <= noise < 1.0:
        raise ConfigError(f"multiview noise must be in [0, 1), got {noise}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    view = rng.choice(3, size=n, p=VIEW_PROBS)
    strengths = np.stack([feature_strengths(int(c), int(v)) for c, v in zip(y, view, strict=True)])
    x = rng.uniform(0.0, noise, size=(n, patches, width)).astype(np.float32)
    quarter = width // 4
    positions = np.argsort(rng.random((n, patches)), axis=1)[:, :4]  # 4 distinct patches
    for k in range(4):
        rows = np.arange(n)
        x[rows, positions[:, k], k * quarter : (k + 1) * quarter] += strengths[:, k : k + 1]
    np.clip(x, 0.0, 1.0, out=x)
    return MultiViewData(x[:, None], y.astype(np.int64), view.astype(np.int64), strengths)


@torch.no_grad()
def view_accuracy(
    model: nn.Module, data: MultiViewData, batch_size: int = 1000
) -> dict[str, float]:
    """Test accuracy separately on multi-view and on each kind of single-view sample."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(data.x)
        starts = range(0, len(x), batch_size)
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in starts])
    finally:
        model.train(was_training)
    correct = pred.numpy() == data.y
    return {name: float(correct[data.view == v].mean()) for v, name in enumerate(VIEWS)
            if (data.view == v).any()}  # fmt: skip


#: Sizes and generator seeds of the bundled data (fixed: every run sees the same data).
TRAIN_SET, TEST_SET = (2000, 1), (2000, 2)


def _read(directory: Path | None, strict: bool) -> RawData:
    train, test = (make_multiview(n, s) for n, s in (TRAIN_SET, TEST_SET))
    return RawData(train.x, train.y, test.x, test.y, CLASS_NAMES)


SOURCES = (Source("multiview", _read, None, "generated (seed 001 §9, kdlab.data.multiview)"),)

__all__ = ["CLASS_NAMES", "SOURCES", "VIEWS", "MultiViewData", "feature_strengths",
           "make_multiview", "view_accuracy"]  # fmt: skip
