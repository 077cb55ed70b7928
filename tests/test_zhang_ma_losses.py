"""Zhang & Ma (2021) terms of seed 001 §3.2 beyond the attention masks: the attention-guided
feature loss and non-local (global relation) distillation.

References are written with explicit numpy loops from the formulas, in float64, never with the
code under test; the non-local block's convolutions are read out as matrices for that purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from feature_helpers import outputs, rand, toy_cnn_pair
from kdlab import checkpoint as ckpt
from kdlab.api import fit_model
from kdlab.errors import ConfigError
from kdlab.losses import AttentionFeature, GlobalRelation, Objective, build_term
from kdlab.losses.global_relation import NonLocalBlock
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch

B = 3


def prepared(term, s: torch.Tensor, t: torch.Tensor):
    so, to, batch = outputs(s, t)
    torch.manual_seed(0)
    term.prepare(so, to)
    term.double()
    return so, to, batch


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# -- attention-guided feature loss ----------------------------------------------------------------


def attention_feature_reference(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    total = 0.0
    for b in range(len(s)):
        c, h, w = t[b].shape
        gs = np.array([[(abs(s[b][:, i, j]).sum() + abs(t[b][:, i, j]).sum()) / c
                        for j in range(w)] for i in range(h)])  # fmt: skip
        gc = np.array([(abs(s[b][k]).sum() + abs(t[b][k]).sum()) / (h * w) for k in range(c)])
        ms = (h * w * softmax(gs.ravel() / tau)).reshape(h, w)
        mc = c * softmax(gc / tau)
        err = sum((t[b][k, i, j] - s[b][k, i, j]) ** 2 * ms[i, j] * mc[k]
                  for k in range(c) for i in range(h) for j in range(w))  # fmt: skip
        total += err / (c * h * w)
    return total / len(s)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_attention_feature_matches_the_formula(tau: float) -> None:
    s, t = rand(B, 4, 3, 5), rand(B, 4, 3, 5, seed=1)
    term = AttentionFeature(student="s", teacher="t", temperature=tau)
    so, to, batch = prepared(term, s, t)
    assert len(term.connector) == 0  # equal shapes: identity adapter
    ref = attention_feature_reference(s.numpy(), t.numpy(), tau)
    assert float(term(so, to, batch).detach()) == pytest.approx(ref, rel=1e-10)
    same = AttentionFeature(student="s", teacher="t")
    assert float(same(*prepared(same, t, t)).detach()) == 0.0


def test_attention_feature_masks_average_one_and_are_fixed_weights_when_detached() -> None:
    s, t = rand(B, 4, 3, 3), rand(B, 4, 3, 3, seed=1)
    term = AttentionFeature(student="s", teacher="t")
    m_spatial, m_channel = term.masks(s, t)
    np.testing.assert_allclose(m_spatial.mean((1, 2, 3)).numpy(), np.ones(B), rtol=1e-12)
    np.testing.assert_allclose(m_channel.mean((1, 2, 3)).numpy(), np.ones(B), rtol=1e-12)
    c, h, w = t.shape[1:]
    for detach in (True, False):
        x = s.clone().requires_grad_(True)
        term = AttentionFeature(student="s", teacher="t", detach_masks=detach)
        term(*prepared(term, x, t)).backward()
        # with fixed masks, d/ds of mean_b (1/CHW) Σ (t − s)² M is 2 (s − t) M / (B·CHW)
        closed = 2 * (s - t) * m_spatial * m_channel / (B * c * h * w)
        assert torch.allclose(x.grad, closed, rtol=1e-10) == detach


def test_attention_feature_adapts_channels_and_sends_gradients_to_student_and_adapter() -> None:
    s = rand(B, 2, 3, 3).requires_grad_(True)
    t = rand(B, 5, 3, 3, seed=1).requires_grad_(True)
    with pytest.raises(ConfigError, match=r"\(2, 3, 3\).*\(5, 3, 3\)"):
        prepared(AttentionFeature(student="s", teacher="t", adapter="none"), s, t)
    term = AttentionFeature(student="s", teacher="t")
    term(*prepared(term, s, t)).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        AttentionFeature(student="s", teacher="t", temperature=0)


# -- non-local (global relation) distillation -----------------------------------------------------


def conv_matrix(conv: torch.nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
    return conv.weight.detach()[:, :, 0, 0].numpy(), conv.bias.detach().numpy()


def relation_reference(block: NonLocalBlock, a: np.ndarray) -> np.ndarray:
    """r_ij = (1/WH) Σ_i'j' f(A_ij, A_i'j') g(A_i'j'), f(x, y) = θ(x)·φ(y), per sample."""
    (wt, bt), (wp, bp), (wg, bg) = map(conv_matrix, (block.theta, block.phi, block.g))
    h, w = a.shape[2:]
    out = np.zeros((a.shape[0], wg.shape[0], h, w))
    for b in range(a.shape[0]):
        for i in range(h):
            for j in range(w):
                theta = wt @ a[b, :, i, j] + bt
                for i2 in range(h):
                    for j2 in range(w):
                        x = a[b, :, i2, j2]
                        f = theta @ (wp @ x + bp)
                        out[b, :, i, j] += f * (wg @ x + bg) / (w * h)
    return out


def test_non_local_relation_matches_the_seed_formula() -> None:
    torch.manual_seed(0)
    block = NonLocalBlock(4, 3, residual=False).double()
    a = rand(2, 4, 3, 2)
    np.testing.assert_allclose(block(a).detach().numpy(), relation_reference(block, a.numpy()),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    residual = NonLocalBlock(4, 3).double()
    assert torch.equal(residual(a), a)  # W_z starts at zero: the identity
    with torch.no_grad():
        residual.out.weight.normal_()
    r = residual.relation(a)
    wz, bz = conv_matrix(residual.out)
    expected = a.numpy() + np.einsum("ok,bkhw->bohw", wz, r.detach().numpy()) + bz[:, None, None]
    np.testing.assert_allclose(residual(a).detach().numpy(), expected, rtol=1e-10)


def test_global_relation_starts_as_feature_matching_and_is_zero_for_equal_features() -> None:
    s, t = rand(B, 4, 3, 3), rand(B, 4, 3, 3, seed=1)
    term = GlobalRelation(student="s", teacher="t", inter_channels=2)
    value = float(term(*prepared(term, s, t)).detach())
    assert value == pytest.approx(float((s - t).pow(2).mean()), rel=1e-12)
    term = GlobalRelation(student="s", teacher="t", residual=False)
    term.prepare(*outputs(t, t)[:2])
    term.student_block.load_state_dict(term.teacher_block.state_dict())
    term.double()
    assert float(term(*outputs(t, t)).detach()) == 0.0
    assert term.student_block.g.out_channels == 2  # default: half the teacher's channels


@pytest.mark.parametrize("residual", [True, False])
def test_global_relation_gradients_reach_student_adapter_and_trainable_blocks(
    residual: bool,
) -> None:
    s = rand(B, 2, 3, 3).requires_grad_(True)
    t = rand(B, 4, 3, 3, seed=1).requires_grad_(True)
    term = GlobalRelation(student="s", teacher="t", residual=residual)
    so, to, batch = prepared(term, s, t)
    if residual:  # move W_z off zero so that every parameter is on the gradient path
        with torch.no_grad():
            for block in (term.student_block, term.teacher_block):
                block.out.weight.normal_()
    term(so, to, batch).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in term.connector.parameters())
    assert all(p.grad.abs().sum() > 0 for p in term.student_block.parameters())
    teacher_params = list(term.teacher_block.parameters())
    if residual:
        assert all(p.grad.abs().sum() > 0 for p in teacher_params)
    else:  # the seed's bare r: the teacher's block stays fixed, or both could shrink to zero
        assert all(not p.requires_grad and p.grad is None for p in teacher_params)


def test_global_relation_bad_input() -> None:
    with pytest.raises(ConfigError, match="inter_channels must be a positive integer"):
        GlobalRelation(student="s", teacher="t", inter_channels=0)
    term = GlobalRelation(student="s", teacher="t")
    with pytest.raises(ConfigError, match="prepare_terms"):
        term(*outputs(rand(B, 4, 3, 3), rand(B, 4, 3, 3)))
    with pytest.raises(ConfigError, match="rank 3"):
        prepared(GlobalRelation(student="s", teacher="t"), rand(B, 4), rand(B, 4))
    assert isinstance(build_term({"type": "global_relation", "student": "s", "teacher": "t"}),
                      GlobalRelation)  # fmt: skip


def test_global_relation_blocks_train_and_checkpoint_with_the_student_not_the_export(
    tmp_path: Path,
) -> None:
    data, teacher, student = toy_cnn_pair()
    x, y = data.train.x, data.train.y
    term = GlobalRelation(student="features.0", teacher="features.0")
    scheme = OfflineScheme(student, Objective([term]), teacher)
    scheme.prepare(Batch(x[:2], y[:2]))
    group = {id(p) for p in scheme.optimizer_groups()["student"]}
    assert all(id(p) in group for p in term.student_block.parameters())
    assert all(id(p) in group for p in term.teacher_block.parameters())
    before = term.student_block.out.weight.detach().clone()
    with RunStore(tmp_path / "store") as store:
        run = fit_model(student, data, [term], TrainSettings(epochs=1, batch_size=8, threads=1),
                        teacher=teacher, store=store, progress=False)  # fmt: skip
        record = store.get_run(run.run_id)
    assert not torch.equal(before, term.student_block.out.weight)  # trained
    assert ckpt.load_state_dict(record.artefacts["model"]).keys() == student.state_dict().keys()
    saved = ckpt.load_checkpoint(record.artefacts["checkpoint"])["models"]["objective"]
    assert torch.equal(saved["terms.0.student_block.out.weight"], term.student_block.out.weight)
