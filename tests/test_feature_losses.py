"""Numerical tests of the feature-based terms and their adapters.

Terms: FitNets hint (kdlab.losses.fitnets), attention transfer and Zhang & Ma's spatial / channel
attention (kdlab.losses.attention), local structure preserving (kdlab.losses.lsp); adapters from
kdlab.losses.connectors. Every value is checked against an independent float64 reference written
with explicit loops in numpy from the papers' formulas (never with the code under test), and
every term is zero when the student's feature equals the teacher's, sends gradients only to the
student and its adapter, and rejects bad shapes with a message naming both shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from feature_helpers import assert_grad_only_to_student, outputs, rand, toy_cnn_pair, value
from kdlab import checkpoint as ckpt
from kdlab.api import fit_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.losses import (
    AttentionTransfer,
    ChannelAttention,
    Hint,
    LocalStructure,
    Objective,
    SpatialAttention,
    build_term,
)
from kdlab.losses.connectors import Resize, build_connector
from kdlab.models import SmallCNN
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch

B = 4


# ---------------------------------------------------------------------------------------------
# Connectors
# ---------------------------------------------------------------------------------------------


def test_auto_builds_the_least_adapter_each_loss_needs() -> None:
    lin = build_connector("auto", (5,), (7,), "all")
    assert [type(m) for m in lin] == [nn.Linear] and lin[0].in_features == 5
    conv = build_connector("auto", (4, 6, 6), (8, 3, 3), "all")
    assert [type(m) for m in conv] == [nn.Conv2d, Resize] and conv[0].kernel_size == (1, 1)
    assert conv(torch.randn(2, 4, 6, 6)).shape == (2, 8, 3, 3)
    assert len(build_connector("auto", (4, 6, 6), (8, 6, 6), "spatial")) == 0  # AT: no adapter
    assert [type(m) for m in build_connector("auto", (4, 6, 6), (4, 3, 3), "spatial")] == [Resize]
    assert [type(m) for m in build_connector("auto", (4, 6, 6), (8, 3, 3), "channels")] == [
        nn.Conv2d
    ]
    assert len(build_connector("auto", (4, 6, 6), (9,), "batch")) == 0  # relations: none
    bn = build_connector("conv", (4, 3, 3), (4, 3, 3), "all", batch_norm=True)
    assert [type(m) for m in bn] == [nn.Conv2d, nn.BatchNorm2d] and bn[0].bias is None


def test_resize_shrinks_by_area_and_grows_bilinearly() -> None:
    x = rand(1, 1, 4, 4)
    small = Resize((2, 2))(x)
    ref = x.numpy()[0, 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))  # mean of each 2×2 block
    np.testing.assert_allclose(small[0, 0].numpy(), ref, rtol=1e-12)
    assert Resize((6, 6))(x).shape == (1, 1, 6, 6)


@pytest.mark.parametrize(
    ("adapter", "s", "t", "match"),
    [
        ("none", (4, 6, 6), (8, 6, 6), "all"),
        ("none", (5,), (7,), "all"),
        ("none", (4, 6, 6), (4, 3, 3), "spatial"),
        ("auto", (4, 6, 6), (7,), "all"),  # a map cannot be adapted to a vector
        ("linear", (4, 6, 6), (8, 6, 6), "all"),
        ("conv", (5,), (7,), "all"),
    ],
)
def test_impossible_adapters_name_both_shapes(adapter, s, t, match) -> None:
    with pytest.raises(ConfigError) as err:
        build_connector(adapter, s, t, match)
    assert str(s) in str(err.value) and str(t) in str(err.value)


def test_adapter_option_is_validated() -> None:
    with pytest.raises(ConfigError, match="adapter must be one of none, auto, linear, conv"):
        build_term({"type": "hint", "student": "a", "teacher": "b", "adapter": "mlp"})
    with pytest.raises(ConfigError, match="needs the teacher's module path"):
        build_term({"type": "at", "student": "features.0"})


def test_hint_with_adapter_none_and_different_shapes_names_both_in_training() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    data = DataSplits("toy", *(ArrayDataset(x, y),) * 3, 3)
    teacher = SmallCNN(1, 3, channels=(6,), hidden=8, input_shape=(1, 8, 8))
    student = SmallCNN(1, 3, channels=(3,), hidden=8, input_shape=(1, 8, 8))
    term = Hint(student="features.0", teacher="features.0", adapter="none")
    with pytest.raises(ConfigError, match=r"student feature \(3, 4, 4\) and teacher feature "
                       r"\(6, 4, 4\).*adapter is 'none'"):  # fmt: skip
        fit_model(student, data, [term], TrainSettings(epochs=1, threads=1), teacher=teacher,
                  progress=False)  # fmt: skip


def test_a_trainable_adapter_must_be_prepared_before_the_optimizer() -> None:
    term = Hint(student="s", teacher="t")
    so, to, batch = outputs(rand(B, 5), rand(B, 7))
    with pytest.raises(ConfigError, match="must exist before the optimizer is built"):
        term(so, to, batch)
    same = Hint(student="s", teacher="t")  # equal shapes: identity, nothing to prepare
    so, to, batch = outputs(rand(B, 5), rand(B, 5, seed=1))
    assert float(same(so, to, batch)) > 0


def test_adapter_is_optimised_checkpointed_and_left_out_of_the_exported_student(
    tmp_path: Path,
) -> None:
    data, teacher, student = toy_cnn_pair()
    x, y = data.train.x, data.train.y
    term = Hint(student="features.0", teacher="features.0")
    scheme = OfflineScheme(student, Objective([term]), teacher)
    scheme.prepare(Batch(x[:2], y[:2]))
    group = {id(p) for p in scheme.optimizer_groups()["student"]}
    assert all(id(p) in group for p in term.connector.parameters())
    with RunStore(tmp_path / "store") as store:
        run = fit_model(student, data, [term], TrainSettings(epochs=1, batch_size=8, threads=1),
                        teacher=teacher, store=store, progress=False)  # fmt: skip
        record = store.get_run(run.run_id)
    exported = ckpt.load_state_dict(record.artefacts["model"])
    assert exported.keys() == student.state_dict().keys()  # a plain student, no adapter
    saved = ckpt.load_checkpoint(record.artefacts["checkpoint"])["models"]["objective"]
    assert torch.equal(saved["terms.0.connector.0.weight"], term.connector[0].weight)


# ---------------------------------------------------------------------------------------------
# FitNets hint: ½‖u_T − r(v_S)‖²
# ---------------------------------------------------------------------------------------------


def hint_reference(s: np.ndarray, t: np.ndarray, reduction: str) -> float:
    per_sample = [0.5 * sum(float(d) ** 2 for d in (t[b] - s[b]).ravel()) for b in range(len(s))]
    if reduction == "batchmean":
        return sum(per_sample) / len(s)
    return sum(per_sample) / t.size


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_hint_matches_reference_with_identity_adapter(reduction) -> None:
    s, t = rand(B, 3, 2, 2), rand(B, 3, 2, 2, seed=1)
    term = Hint(student="s", teacher="t", adapter="none", reduction=reduction)
    got = value(term, s, t)
    assert got == pytest.approx(hint_reference(s.numpy(), t.numpy(), reduction), rel=1e-12)
    assert value(Hint(student="s", teacher="t", reduction=reduction), t, t) == 0.0


def test_hint_regressor_is_a_1x1_conv_applied_per_position() -> None:
    s, t = rand(B, 2, 3, 3), rand(B, 5, 3, 3, seed=1)
    term = Hint(student="s", teacher="t")
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    conv = term.connector[0]
    w, bias = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
    r = np.einsum("oc,bchw->bohw", w, s.numpy()) + bias[None, :, None, None]
    assert float(term(so, to, batch).detach()) == pytest.approx(
        hint_reference(r, t.numpy(), "batchmean"), rel=1e-12
    )
    assert_grad_only_to_student(Hint(student="s", teacher="t"), s, t)


def test_hint_on_vectors_uses_a_linear_regressor() -> None:
    s, t = rand(B, 3), rand(B, 6, seed=1)
    term = Hint(student="s", teacher="t")
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    lin = term.connector[0]
    r = s.numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    assert float(term(so, to, batch).detach()) == pytest.approx(
        hint_reference(r, t.numpy(), "batchmean"), rel=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Attention transfer (Zagoruyko & Komodakis)
# ---------------------------------------------------------------------------------------------


def at_reference(s: np.ndarray, t: np.ndarray, p: float) -> float:
    def q(a: np.ndarray) -> np.ndarray:  # one sample [C, H, W] → normalised vec(Σ_c |A_c|^p)
        m = np.zeros(a.shape[1:])
        for c in range(a.shape[0]):
            m += np.abs(a[c]) ** p
        v = m.ravel()
        return v / math.sqrt(sum(x * x for x in v))

    sq = [float(d) ** 2 for b in range(len(s)) for d in q(s[b]) - q(t[b])]
    return sum(sq) / len(sq)  # mean over batch × positions


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_attention_transfer_matches_reference(p) -> None:
    s, t = rand(B, 3, 4, 5), rand(B, 6, 4, 5, seed=1)  # channel counts may differ
    term = AttentionTransfer(student="s", teacher="t", p=p)
    assert value(term, s, t) == pytest.approx(at_reference(s.numpy(), t.numpy(), p), rel=1e-10)
    assert len(term.connector) == 0  # Σ over channels: no adapter needed
    assert value(AttentionTransfer(student="s", teacher="t", p=p), t, t) == 0.0


def test_attention_transfer_is_scale_invariant_and_resizes_maps() -> None:
    s, t = rand(B, 3, 4, 4), rand(B, 6, 4, 4, seed=1)
    term = AttentionTransfer(student="s", teacher="t")
    assert value(term, 7.0 * s, t) == pytest.approx(value(term, s, t), rel=1e-10)
    big = rand(B, 3, 8, 8, seed=2)
    resized = Resize((4, 4))(big)
    assert value(AttentionTransfer(student="s", teacher="t"), big, t) == pytest.approx(
        at_reference(resized.numpy(), t.numpy(), 2.0), rel=1e-10
    )
    with pytest.raises(ConfigError, match=r"\(3, 8, 8\).*\(6, 4, 4\)"):
        value(AttentionTransfer(student="s", teacher="t", adapter="none"), big, t)
    with pytest.raises(ConfigError, match="rank 3"):
        value(AttentionTransfer(student="s", teacher="t"), rand(B, 5), rand(B, 5))
    assert_grad_only_to_student(AttentionTransfer(student="s", teacher="t"), s, t)


# ---------------------------------------------------------------------------------------------
# Spatial / channel attention (seed 001; Zhang & Ma 2021)
# ---------------------------------------------------------------------------------------------


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def sc_reference(s, t, axis: str, tau: float | None, distance: str) -> float:
    def g(a):  # one sample [C, H, W]
        c, h, w = a.shape
        if axis == "spatial":  # G^S = (1/C) Σ_c |A_c|, one value per position
            m = np.array([[sum(abs(a[k, i, j]) for k in range(c)) / c for j in range(w)]
                          for i in range(h)]).ravel()  # fmt: skip
        else:  # G^C = (1/HW) Σ_ij |A_·ij|, one value per channel
            m = np.array([abs(a[k]).sum() / (h * w) for k in range(c)])
        return m if tau is None else len(m) * softmax(m / tau)

    diffs = np.concatenate([g(s[b]) - g(t[b]) for b in range(len(s))])
    return float(np.abs(diffs).mean() if distance == "l1" else (diffs**2).mean())


@pytest.mark.parametrize("tau", [0.5, 2.0, None])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_spatial_attention_matches_reference(tau, distance) -> None:
    s, t = rand(B, 3, 3, 4), rand(B, 5, 3, 4, seed=1)
    term = SpatialAttention(student="s", teacher="t", temperature=tau, distance=distance)
    ref = sc_reference(s.numpy(), t.numpy(), "spatial", tau, distance)
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert value(SpatialAttention(student="s", teacher="t", temperature=tau), t, t) == 0.0


@pytest.mark.parametrize("tau", [0.5, None])
def test_channel_attention_matches_reference(tau) -> None:
    s, t = rand(B, 4, 3, 3), rand(B, 4, 2, 2, seed=1)  # spatial sizes may differ
    term = ChannelAttention(student="s", teacher="t", temperature=tau)
    ref = sc_reference(s.numpy(), t.numpy(), "channel", tau, "l1")
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert len(term.connector) == 0
    assert value(ChannelAttention(student="s", teacher="t", temperature=tau), t, t) == 0.0


def test_attention_masks_average_one_and_channel_mismatch_needs_an_adapter() -> None:
    a = rand(B, 3, 4, 4)
    for term in (SpatialAttention(student="s", teacher="t"),
                 ChannelAttention(student="s", teacher="t")):  # fmt: skip
        mask = term.attention(a)
        np.testing.assert_allclose(mask.mean(1).numpy(), np.ones(B), rtol=1e-12)
    s, t = rand(B, 3, 4, 4), rand(B, 6, 4, 4, seed=1)
    with pytest.raises(ConfigError, match=r"\(3, 4, 4\).*\(6, 4, 4\)"):
        value(ChannelAttention(student="s", teacher="t", adapter="none"), s, t)
    term = ChannelAttention(student="s", teacher="t")
    value(term, s, t)
    assert isinstance(term.connector[0], nn.Conv2d)
    assert_grad_only_to_student(ChannelAttention(student="s", teacher="t"), s, t)
    assert_grad_only_to_student(SpatialAttention(student="s", teacher="t"), s, t)


# ---------------------------------------------------------------------------------------------
# Local structure preserving (seed 001; Yang et al. 2020)
# ---------------------------------------------------------------------------------------------


def lsp_reference(s, t, k, kernel, tau, normalize=False) -> float:
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    if normalize:
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
    n = len(s)

    def sim(z, i, j):
        if kernel == "distance":  # a similarity: minus the squared distance (seed's sign fixed)
            return -sum((z[i] - z[j]) ** 2)
        return float(z[i] @ z[j])

    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: np.linalg.norm(t[i] - t[j]))
        hood = others if k is None else others[:k]
        ls_t = softmax(np.array([sim(t, i, j) / tau for j in hood]))
        ls_s = softmax(np.array([sim(s, i, j) / tau for j in hood]))
        total += sum(p * math.log(p / q) for p, q in zip(ls_t, ls_s, strict=True))
    return total / n


@pytest.mark.parametrize(
    ("k", "kernel", "tau", "normalize"),
    [
        (None, "distance", 4.0, False),
        (2, "distance", 3.0, False),
        (3, "linear", 2.0, False),
        (None, "distance", 0.5, True),
    ],
)
def test_local_structure_matches_reference(k, kernel, tau, normalize) -> None:
    s, t = rand(6, 2, 2, 2), rand(6, 5, seed=1)  # any feature sizes: B×B structures
    term = LocalStructure(student="s", teacher="t", neighbours=k, kernel=kernel,
                          temperature=tau, normalize=normalize)  # fmt: skip
    ref = lsp_reference(s.numpy(), t.numpy(), k, kernel, tau, normalize)
    assert value(term, s, t) == pytest.approx(ref, rel=1e-9)
    same = LocalStructure(student="s", teacher="t", neighbours=k, kernel=kernel, temperature=tau)
    assert value(same, t, t) == pytest.approx(0.0, abs=1e-15)


def test_local_structure_weighs_nearer_neighbours_more() -> None:
    # The seed's exp(+‖z_i − z_j‖²) would favour the farthest sample; kdlab uses a similarity.
    from kdlab.losses.lsp import local_structure, neighbourhood

    z = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    mask = neighbourhood(z, None)
    ls = local_structure(z, mask, "distance", 1.0).exp() * mask
    assert ls[0, 1] > ls[0, 2] and ls[2, 1] > ls[2, 0]
    assert ls[0, 0] == 0.0  # a sample is not its own neighbour


def test_local_structure_rejects_one_sample_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="needs at least 2 per batch, got 1"):
        value(LocalStructure(student="s", teacher="t"), rand(1, 3), rand(1, 3))
    with pytest.raises(ConfigError, match="neighbours must be an integer ≥ 1"):
        LocalStructure(student="s", teacher="t", neighbours=0)
    with pytest.raises(ConfigError, match="kernel must be one of distance, linear"):
        LocalStructure(student="s", teacher="t", kernel="rbf")
    assert_grad_only_to_student(LocalStructure(student="s", teacher="t", neighbours=2),
                                rand(5, 3), rand(5, 4, seed=1))  # fmt: skip
