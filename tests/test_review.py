"""ReviewKD (Chen et al. 2021): attention-based fusion (ABF) of the student's levels from the
deepest down, compared with the teacher's levels by the hierarchical context loss (HCL).

References are written with explicit numpy loops from the formulas, in float64, never with the
code under test; the ABF blocks' convolutions and batch norms are read out as arrays for that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from feature_helpers import rand, toy_cnn_pair
from kdlab import checkpoint as ckpt
from kdlab import cli
from kdlab.api import fit_model
from kdlab.errors import ConfigError
from kdlab.losses import Objective, build_term
from kdlab.losses.review import ReviewKD, hcl_loss
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.types import Batch, ModelOutput

B = 3
PATHS = ["l0", "l1", "l2", "l3"]
#: Student and teacher levels shallow → deep: maps of shrinking size and a pooled vector.
STUDENT = [(B, 3, 6, 6), (B, 4, 4, 4), (B, 5, 2, 2), (B, 6)]
TEACHER = [(B, 5, 6, 6), (B, 7, 3, 3), (B, 4, 2, 2), (B, 9)]


def level_outputs(s: list[torch.Tensor], t: list[torch.Tensor]):
    feats = (dict(zip(PATHS, x, strict=False)) for x in (s, t))
    so, to = (ModelOutput(torch.zeros(B, 3, dtype=torch.float64), f) for f in feats)
    return so, to, Batch(torch.zeros(B, 1), torch.zeros(B, dtype=torch.long))


def features(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    s = [rand(*shape, seed=seed + i) for i, shape in enumerate(STUDENT)]
    t = [rand(*shape, seed=seed + 10 + i) for i, shape in enumerate(TEACHER)]
    return s, t


def prepared(s: list[torch.Tensor], t: list[torch.Tensor], **kw) -> ReviewKD:
    term = ReviewKD(student=PATHS[: len(s)], teacher=PATHS[: len(t)], **kw)
    torch.manual_seed(0)
    term.prepare(*level_outputs(s, t)[:2])
    return term.double()


# ---------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------


def pool(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Adaptive average pooling of [B, C, H, W] to oh × ow: bin i spans ⌊iH/oh⌋ … ⌈(i+1)H/oh⌉."""
    h, w = x.shape[2:]
    out = np.zeros((*x.shape[:2], oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def hcl_reference(s_maps: list[np.ndarray], t_maps: list[np.ndarray], pyramid=(4, 2, 1)) -> float:
    total = 0.0
    for s, t in zip(s_maps, t_maps, strict=True):
        h, w = s.shape[2:]
        level, weight, weights = float(((s - t) ** 2).mean()), 1.0, 1.0
        for k in pyramid:
            if k >= max(h, w):  # the authors skip sizes not smaller than the map
                continue
            weight /= 2
            ps, pt = pool(s, min(k, h), min(k, w)), pool(t, min(k, h), min(k, w))
            level += weight * float(((ps - pt) ** 2).mean())
            weights += weight
        total += level / weights
    return total


def nearest(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    h, w = x.shape[2:]
    rows = [min(h - 1, (i * h) // oh) for i in range(oh)]
    cols = [min(w - 1, (j * w) // ow) for j in range(ow)]
    return x[:, :, rows][:, :, :, cols]


def conv_bn(seq: torch.nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Convolution (stride 1, 'same' padding, no bias) then batch norm with batch statistics."""
    weight = seq[0].weight.detach().numpy()
    k = weight.shape[-1]
    pad = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    h, w = x.shape[2:]
    y = np.zeros((x.shape[0], weight.shape[0], h, w))
    for di in range(k):
        for dj in range(k):
            window = pad[:, :, di : di + h, dj : dj + w]
            y += np.einsum("oc,bchw->bohw", weight[:, :, di, dj], window)
    bn = seq[1]
    mean, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = (p.detach().numpy()[None, :, None, None] for p in (bn.weight, bn.bias))
    return (y - mean) / np.sqrt(var + bn.eps) * gamma + beta


def review_reference(term: ReviewKD, s: list[np.ndarray], t: list[np.ndarray]) -> float:
    outputs: list[np.ndarray] = [np.zeros(0)] * len(s)
    residual = None
    for i in reversed(range(len(s))):
        block = term.fusions[i]
        x = conv_bn(block.reduce, s[i])
        if residual is not None:
            r = nearest(residual, *x.shape[2:])
            conv = block.attention[0]
            w, b = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
            z = np.einsum("oc,bchw->bohw", w, np.concatenate([x, r], 1)) + b[None, :, None, None]
            a = 1 / (1 + np.exp(-z))
            x = x * a[:, :1] + r * a[:, 1:]
        residual = nearest(x, *t[i].shape[2:])
        outputs[i] = conv_bn(block.output, residual)
    return hcl_reference(outputs, t)


def as_maps(xs: list[torch.Tensor]) -> list[np.ndarray]:
    return [(x if x.dim() == 4 else x[:, :, None, None]).numpy() for x in xs]


# ---------------------------------------------------------------------------------------------
# HCL
# ---------------------------------------------------------------------------------------------


def test_hcl_matches_the_float64_reference_over_levels_and_pyramid_sizes() -> None:
    shapes = [(B, 3, 9, 9), (B, 2, 4, 4), (B, 2, 5, 3), (B, 4, 1, 1)]
    s = [rand(*shape, seed=i) for i, shape in enumerate(shapes)]
    t = [rand(*shape, seed=20 + i) for i, shape in enumerate(shapes)]
    got = float(hcl_loss(s, t))
    assert got == pytest.approx(hcl_reference(as_maps(s), as_maps(t)), rel=1e-10)
    # the pooled sizes matter: another pyramid gives another value, also matched
    other = float(hcl_loss(s, t, pyramid=(3,)))
    assert other == pytest.approx(hcl_reference(as_maps(s), as_maps(t), (3,)), rel=1e-10)
    assert not math.isclose(got, other)


def test_hcl_is_zero_for_identical_maps_and_reads_vectors_as_1x1_maps() -> None:
    s, _ = features()
    assert float(hcl_loss(s, [x.clone() for x in s])) == 0.0
    assert float(hcl_loss(s, [x + 0.1 for x in s])) > 0.0
    v, u = rand(B, 6, seed=1), rand(B, 6, seed=2)
    as_1x1 = float(hcl_loss([v[..., None, None]], [u[..., None, None]]))
    assert float(hcl_loss([v], [u])) == pytest.approx(as_1x1)


def test_hcl_rejects_mismatched_levels() -> None:
    s, t = features()
    with pytest.raises(ConfigError, match="one pair per level"):
        hcl_loss(s, t[:2])
    with pytest.raises(ConfigError, match="map the student to the teacher's shape"):
        hcl_loss(s, t)


# ---------------------------------------------------------------------------------------------
# The term: ABF + HCL
# ---------------------------------------------------------------------------------------------


def test_review_matches_the_float64_reference_of_fusion_and_hcl() -> None:
    s, t = features()
    term = prepared(s, t)
    got = float(term(*level_outputs(s, t)).detach())
    assert got == pytest.approx(review_reference(term, as_maps(s), as_maps(t)), rel=1e-9)


def test_abf_outputs_have_the_teachers_shapes_and_default_mid_channels() -> None:
    s, t = features()
    term = prepared(s, t)
    captured: list[torch.Size] = []
    for block in term.fusions:
        block.register_forward_hook(lambda m, args, out: captured.append(out[0].shape))
    term(*level_outputs(s, t))
    assert captured[::-1] == [x.shape if x.dim() == 4 else (*x.shape, 1, 1) for x in t]
    assert all(b.reduce[0].out_channels == 6 for b in term.fusions)  # min(512, deepest student)
    assert prepared(s, t, mid_channels=5).fusions[0].reduce[0].out_channels == 5


@pytest.mark.parametrize(("deepest", "mid"), [(600, 512), (512, 512), (300, 300)])
def test_default_mid_channels_are_the_deepest_student_channels_capped_at_512(
    deepest: int, mid: int
) -> None:
    """The authors' min(512, C_deepest): wider deepest levels are capped, narrower ones kept."""
    s = [rand(B, 4, 2, 2, seed=0), rand(B, deepest, seed=1)]  # small maps: only widths matter
    t = [rand(B, 5, 2, 2, seed=2), rand(B, 7, seed=3)]
    term = prepared(s, t)
    assert [b.reduce[0].out_channels for b in term.fusions] == [mid, mid]
    assert [b.output[0].in_channels for b in term.fusions] == [mid, mid]
    assert term.fusions[0].attention[0].in_channels == 2 * mid  # [x_i, up(r_{i+1})]
    outputs: list[torch.Size] = []
    for block in term.fusions:
        block.register_forward_hook(lambda m, args, out: outputs.append(out[1].shape))
    assert math.isfinite(float(term(*level_outputs(s, t)).detach()))
    assert outputs == [(B, mid, 1, 1), (B, mid, 2, 2)]  # the residuals, deepest first


def test_attention_weights_lie_in_0_1_and_the_deepest_level_has_no_residual() -> None:
    s, t = features()
    term = prepared(s, t)
    assert term.fusions[-1].attention is None
    assert all(b.attention is not None for b in term.fusions[:-1])
    weights: list[torch.Tensor] = []
    for block in term.fusions[:-1]:
        block.attention.register_forward_hook(lambda m, args, out: weights.append(out))
    term(*level_outputs(s, t))
    assert len(weights) == len(PATHS) - 1
    assert all(w.shape[1] == 2 and bool(((w > 0) & (w < 1)).all()) for w in weights)
    with pytest.raises(RuntimeError, match="no residual"):
        term.fusions[-1](s[-1][..., None, None], s[-1][..., None, None], (1, 1))


def test_gradients_reach_the_student_and_every_abf_parameter_never_the_teacher() -> None:
    s, t = features()
    term = prepared(s, t)
    s = [x.clone().requires_grad_(True) for x in s]
    t = [x.clone().requires_grad_(True) for x in t]
    term(*level_outputs(s, t)).backward()
    assert all(x.grad is not None and float(x.grad.abs().sum()) > 0 for x in s)
    assert all(x.grad is None for x in t)
    for name, p in term.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_a_single_sample_at_a_1x1_level_uses_running_statistics() -> None:
    s, t = features()
    term = prepared(s, t).train()
    one = level_outputs([x[:1] for x in s], [x[:1] for x in t])
    assert math.isfinite(float(term(*one).detach()))


def test_warmup_scales_the_loss_by_epoch_over_warmup_epochs() -> None:
    s, t = features()
    term = prepared(s, t, warmup_epochs=4)
    so, to, batch = level_outputs(s, t)
    full = float(term(so, to, batch).detach())  # epochs unknown (0): no warm-up
    for epoch, factor in ((0, 0.0), (2, 0.5), (7, 1.0)):
        batch.epoch, batch.epochs = epoch, 10
        assert float(term(so, to, batch).detach()) == pytest.approx(factor * full)


def test_warmup_the_run_outlasts_is_refused_in_prepare() -> None:
    s, t = features()

    def prepare(warmup_epochs: float, epochs: int) -> None:
        so, to, batch = level_outputs(s, t)
        batch.epochs = epochs
        ReviewKD(student=PATHS, teacher=PATHS, warmup_epochs=warmup_epochs).prepare(so, to, batch)

    # min(1, epoch / W) over 0-based epochs 0..E−1 reaches 1 only if W ≤ E − 1
    with pytest.raises(
        ConfigError,
        match=r"warmup_epochs is 10 but training runs only 10 epoch"
        r".*never reaches full weight; set warmup_epochs ≤ 9 .* or 0 for no",
    ):
        prepare(10, 10)
    with pytest.raises(ConfigError, match=r"only 1 epoch.*set warmup_epochs 0 for no warm-up$"):
        prepare(1, 1)
    prepare(9, 10)  # full weight in the last epoch
    prepare(0, 1)  # no warm-up
    prepare(50, 0)  # unknown length: nothing to check


def test_validate_refuses_a_warmup_longer_than_training(tmp_path) -> None:
    levels = "[features.1, features.2]"
    path = tmp_path / "review.yaml"
    path.write_text(
        "student: {model: {type: cnn, channels: [4, 8, 8], hidden: 8}, "
        "train: {epochs: 1, batch_size: 64, threads: 1}}\n"
        "teacher: {model: {type: cnn, channels: [4, 8, 8], hidden: 8}, train: {epochs: 1}}\n"
        f"distill: {{loss: [{{type: ce}}, {{type: review, warmup_epochs: 50, student: {levels}, "
        f"teacher: {levels}}}]}}\n"
    )
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    message = " ".join(result.stderr.split())  # one line, whatever the terminal's wrapping
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message.startswith("error: distill.train: loss term 'review' (review,")
    assert "warmup_epochs is 50 but training runs only 1 epoch(s)" in message
    assert message.endswith("never reaches full weight; set warmup_epochs 0 for no warm-up")
    path.write_text(path.read_text().replace("warmup_epochs: 50", "warmup_epochs: 0"))
    assert CliRunner().invoke(cli.app, ["validate", str(path)]).exit_code == 0


def test_bad_input_names_the_fix() -> None:
    s, t = features()
    cases = [
        (dict(student="l0", teacher=["l0"]), "as a list `student:`"),
        (dict(student=[], teacher=[]), "as a list `student:`"),
        (dict(student=["l0", "l1"], teacher=["l0"]), "one teacher module per student module"),
        (dict(student=["l0"], teacher=["l0"], mid_channels=0), "positive integer or null"),
        (dict(student=["l0"], teacher=["l0"], warmup_epochs=-1), "finite number ≥ 0"),
    ]
    for params, match in cases:
        with pytest.raises(ConfigError, match=match):
            build_term({"type": "review", **params})
    reversed_order = ReviewKD(student=PATHS[:2], teacher=PATHS[:2])
    with pytest.raises(ConfigError, match="shallow → deep, so that map sizes shrink"):
        reversed_order.prepare(*level_outputs(s[1::-1], t[1::-1])[:2])
    rank2 = [rand(B, 3, 6, seed=0)]
    with pytest.raises(ConfigError, match="needs \\[channels, height, width\\] maps or"):
        ReviewKD(student=["l0"], teacher=["l0"]).prepare(*level_outputs(rank2, t[:1])[:2])
    with pytest.raises(ConfigError, match=r"call kdlab\.losses\.feature\.prepare_terms"):
        ReviewKD(student=PATHS, teacher=PATHS)(*level_outputs(s, t))
    with pytest.raises(ConfigError, match="inputs of one run must all have the same size"):
        other = [x[:, :, :1] if x.dim() == 4 else x for x in t]  # teacher maps of another size
        prepared(s, t)(*level_outputs(s, other))


def test_abf_blocks_train_and_checkpoint_with_the_student_not_the_export(tmp_path) -> None:
    data, teacher, student = toy_cnn_pair()
    x, y = data.train.x, data.train.y
    term = ReviewKD(student=["features.0", "head.2"], teacher=["features.0", "head.2"])
    scheme = OfflineScheme(student, Objective([term]), teacher)
    scheme.prepare(Batch(x[:2], y[:2]))
    group = {id(p) for p in scheme.optimizer_groups()["student"]}
    assert all(id(p) in group for p in term.fusions.parameters())
    before = term.fusions[0].attention[0].weight.detach().clone()
    with RunStore(tmp_path / "store") as store:
        run = fit_model(student, data, [term], TrainSettings(epochs=1, batch_size=8, threads=1),
                        teacher=teacher, store=store, progress=False)  # fmt: skip
        record = store.get_run(run.run_id)
    assert not torch.equal(before, term.fusions[0].attention[0].weight)  # trained
    exported = ckpt.load_state_dict(record.artefacts["model"])
    assert exported.keys() == student.state_dict().keys()  # a plain student, no ABF
    saved = ckpt.load_checkpoint(record.artefacts["checkpoint"])["models"]["objective"]
    key = "terms.0.fusions.0.attention.0.weight"
    assert torch.equal(saved[key], term.fusions[0].attention[0].weight)
