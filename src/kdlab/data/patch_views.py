"""Allen-Zhu & Li's own multi-view data (2020, "Towards Understanding Ensemble, Knowledge
Distillation and Self-Distillation in Deep Learning"; seed 001 §9), with patches.

Each class j has two features v_{j,1}, v_{j,2}: 2k orthonormal vectors of R^d, fixed for the
whole dataset (drawn from ``FEATURE_SEED``, so every split shares them). An input is P patches
x_1 … x_P ∈ R^d:

- multi-view sample of class y (probability 1 − μ): v_{y,1} and v_{y,2} each planted, with
  strength 1, in a patch of its own;
- single-view sample (probability μ): one of them (chosen at random) with strength 1, the
  other with the small strength ρ;
- feature noise: ``noise_patches`` further patches each carry a feature of another class with
  strength γ (the paper's "other features with small weights");
- every patch: Gaussian noise ξ_p ~ N(0, σ²/d · I_d).

The paper's claim: a single network trained from random init learns one of the two features of
(most) classes — whichever its initialisation favours — and memorises the single-view training
samples that lack it through their noise, so it errs on single-view *test* samples; an ensemble
of independently initialised networks covers both, and a student distilled from the ensemble
learns both. :func:`view_accuracy` (kdlab.data.multiview) splits accuracy by kind of sample.

Differences from the paper, for a laptop budget: the paper's asymptotic sizes (k → ∞, d ≫ k,
μ = 1/poly(k)) become k = 10, d = 64, P = 16, μ = 0.05, and a feature occupies one patch
instead of a set of patches whose weights sum to about 1. The bundled test set over-samples
single-view samples (half of it) so that both kinds' accuracies are measured on ~2000 samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlab.data.multiview import MultiViewData
from kdlab.data.source import RawData, Source
from kdlab.errors import ConfigError

FEATURE_SEED = 1234  # the feature dictionary: the same for every split and every run


@dataclass(frozen=True)
class PatchViews:
    """Sizes and strengths of the construction (the paper's symbols in comments)."""

    classes: int = 10  # k
    dim: int = 64  # d
    patches: int = 16  # P
    single_view: float = 0.05  # μ: fraction of single-view samples
    weak: float = 0.1  # ρ: strength of the missing feature in a single-view sample
    feature_noise: float = 0.3  # γ: strength of other classes' features
    noise_patches: int = 2  # how many patches carry another class's feature
    noise: float = 1.0  # σ: patch noise N(0, σ²/d · I)

    def check(self) -> None:
        if self.classes < 2 or 2 * self.classes > self.dim:
            raise ConfigError(
                f"patch-view data needs ≥ 2 classes and dim ≥ 2·classes (orthonormal features), "
                f"got classes={self.classes}, dim={self.dim}"
            )
        if self.patches < 2 + self.noise_patches:
            raise ConfigError(
                f"patch-view data needs patches ≥ 2 + noise_patches = {2 + self.noise_patches}, "
                f"got {self.patches}"
            )
        if not 0.0 <= self.single_view <= 1.0:
            raise ConfigError(f"single_view must be in [0, 1], got {self.single_view}")


def feature_dictionary(spec: PatchViews) -> np.ndarray:
    """The features v_{j,l} as a [classes, 2, dim] array of orthonormal rows."""
    rng = np.random.default_rng(FEATURE_SEED)
    q, _ = np.linalg.qr(rng.standard_normal((spec.dim, 2 * spec.classes)))
    return q.T.reshape(spec.classes, 2, spec.dim).astype(np.float32)


def make_patch_views(
    n: int, seed: int, spec: PatchViews = PatchViews(), single_view: float | None = None
) -> MultiViewData:
    """``n`` samples drawn with ``seed``; ``single_view`` overrides μ (e.g. for a test set).

    ``x`` is float32 [n, 1, patches, dim]; ``view`` is 0 (multi-view), 1 (only v_{y,1} strong)
    or 2 (only v_{y,2} strong), as in :data:`kdlab.data.multiview.VIEWS`; ``strengths`` holds
    the strengths of (v_{y,1}, v_{y,2}).
    """
    spec.check()
    mu = spec.single_view if single_view is None else single_view
    rng = np.random.default_rng(seed)
    features = feature_dictionary(spec)
    y = rng.integers(0, spec.classes, n)
    single = rng.random(n) < mu
    view = np.where(single, 1 + rng.integers(0, 2, n), 0)
    strengths = np.ones((n, 2), dtype=np.float32)
    strengths[view == 1, 1] = spec.weak
    strengths[view == 2, 0] = spec.weak
    x = rng.standard_normal((n, spec.patches, spec.dim)).astype(np.float32)
    x *= spec.noise / np.sqrt(spec.dim)
    where = np.argsort(rng.random((n, spec.patches)), axis=1)  # distinct patches per sample
    rows = np.arange(n)
    for which in range(2):
        x[rows, where[:, which]] += strengths[:, which : which + 1] * features[y, which]
    for j in range(spec.noise_patches):
        other = (y + rng.integers(1, spec.classes, n)) % spec.classes  # any class but y
        x[rows, where[:, 2 + j]] += spec.feature_noise * features[other, rng.integers(0, 2, n)]
    return MultiViewData(x[:, None], y.astype(np.int64), view.astype(np.int64), strengths)


#: The bundled splits: (size, generator seed, single-view fraction; None = the spec's μ).
TRAIN_SET, TEST_SET = (1000, 11, None), (4000, 12, 0.5)


def bundled_test_set(spec: PatchViews = PatchViews()) -> MultiViewData:
    """The test split of source ``multiview-patches``, with each sample's kind of view."""
    n, seed, mu = TEST_SET
    return make_patch_views(n, seed, spec, mu)


def _read(directory: object, strict: bool) -> RawData:
    n, seed, mu = TRAIN_SET
    train, test = make_patch_views(n, seed, single_view=mu), bundled_test_set()
    names = [f"class {j}" for j in range(PatchViews().classes)]
    return RawData(train.x, train.y, test.x, test.y, names)


SOURCES = (
    Source(
        "multiview-patches", _read, None,
        "generated (Allen-Zhu & Li 2020's construction, kdlab.data.patch_views)",
    ),
)  # fmt: skip

__all__ = ["SOURCES", "PatchViews", "bundled_test_set", "feature_dictionary", "make_patch_views"]
