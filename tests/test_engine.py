"""Tests of the training loop (kdlab.engine), the offline scheme and atomic checkpoints.

Everything runs on a tiny synthetic 3-class problem with one intra-op thread: each fit takes
milliseconds, so the tests can afford to compare whole runs parameter by parameter.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab import engine as engine_module
from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.errors import NonFiniteLossError
from kdlab.losses import CrossEntropy, Objective, SoftTarget, Term
from kdlab.optim import make_scheduler
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import ScheduleSettings, TrainSettings
from kdlab.types import Batch, ModelOutput

N_TRAIN, BATCH = 96, 16
STEPS = N_TRAIN // BATCH  # 6 steps per epoch


def blobs(n: int, seed: int, noise: float = 1.0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 1.5
    y = torch.randint(0, 3, (n,), generator=g)
    return ArrayDataset(centers[y] + noise * torch.randn(n, 8, generator=g), y)


TRAIN, VAL = blobs(N_TRAIN, 0), blobs(60, 1)


def mlp(seed: int = 1, dropout: float = 0.3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def settings(**kw) -> TrainSettings:
    base = {"epochs": 6, "batch_size": BATCH, "threads": 1, "checkpoint_seconds": 0}
    return TrainSettings(**{**base, **kw})


def ce() -> Objective:
    return Objective([CrossEntropy()])


def params_equal(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupt(Exception):
    pass


# -- resume ----------------------------------------------------------------------------------------


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    s = settings(
        epochs=6,
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
        schedule={"name": "cosine", "warmup_epochs": 1},
    )
    straight = mlp()
    h_straight = Engine(s, seed=3, checkpoint_path=tmp_path / "a.pt", progress=False).fit(
        OfflineScheme(straight, ce()), TRAIN, VAL
    )

    def stop_after_half(row: dict) -> None:
        if row["epoch"] == 4:  # raised before epoch 4 is checkpointed: the file holds epoch 3
            raise Interrupt

    path = tmp_path / "b.pt"
    first = mlp()
    with pytest.raises(Interrupt):
        Engine(s, seed=3, checkpoint_path=path, progress=False, callbacks=[stop_after_half]).fit(
            OfflineScheme(first, ce()), TRAIN, VAL
        )
    assert ckpt.load_checkpoint(path)["epoch"] == 3
    assert not params_equal(first, straight)

    resumed = mlp(seed=99)  # different initial weights: the checkpoint must overwrite them
    h_resumed = Engine(s, seed=3, checkpoint_path=path, progress=False).fit(
        OfflineScheme(resumed, ce()), TRAIN, VAL, resume=True
    )
    assert params_equal(resumed, straight)
    assert [r["epoch"] for r in h_resumed] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "ce", "acc", "lr", "val_accuracy", "val_nll"):
        assert [r[key] for r in h_resumed] == [r[key] for r in h_straight], key
    assert ckpt.load_checkpoint(path)["epoch"] == 6


def test_resume_rejects_checkpoint_of_another_scheme(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    Engine(settings(epochs=1), checkpoint_path=path, progress=False).fit(
        OfflineScheme(mlp(), ce()), TRAIN
    )
    ckpt.save_atomic({**ckpt.load_checkpoint(path), "models": {"other": {}}}, path)
    with pytest.raises(ValueError, match="resume only the run that wrote it"):
        Engine(settings(epochs=2), checkpoint_path=path, progress=False).fit(
            OfflineScheme(mlp(), ce()), TRAIN, resume=True
        )


# -- non-finite guard ------------------------------------------------------------------------------


class NaNAtCall(Term):
    """A zero-valued term that returns NaN on its ``bad_call``-th call (1-based)."""

    kind = "nan_at_call"
    needs_teacher = False

    def __init__(self, bad_call: int, watch: nn.Module, weight: float = 1.0, name: str = "boom"):
        super().__init__(weight, name)
        self.bad_call, self.calls = bad_call, 0
        self.watch = [watch]  # a list: not registered as a sub-module
        self.state_at_nan: dict | None = None

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch):
        self.calls += 1
        value = student.logits.sum() * 0.0
        if self.calls == self.bad_call:
            self.state_at_nan = copy.deepcopy(self.watch[0].state_dict())
            return value + float("nan")
        return value


def test_non_finite_loss_stops_and_restores_last_good_checkpoint(tmp_path: Path) -> None:
    model = mlp()
    bad_epoch, bad_step = 3, 2
    term = NaNAtCall((bad_epoch - 1) * STEPS + bad_step, model, weight=0.5)
    path = tmp_path / "ckpt.pt"
    eng = Engine(settings(epochs=5), seed=0, checkpoint_path=path, progress=False)
    with pytest.raises(NonFiniteLossError) as info:
        eng.fit(OfflineScheme(model, Objective([CrossEntropy(), term])), TRAIN, VAL)
    msg = str(info.value)
    assert f"epoch {bad_epoch}, step {bad_step}" in msg
    assert "boom=nan" in msg and "ce=" in msg
    assert "epoch 2" in msg and str(path) in msg
    good = ckpt.load_checkpoint(path)
    assert good["epoch"] == bad_epoch - 1
    assert len(good["history"]) == bad_epoch - 1
    # the in-memory model is the checkpoint's, not the one updated during epoch 3's first step
    assert params_equal(model, good["models"]["model"])
    assert term.state_at_nan is not None and not params_equal(term.state_at_nan, model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_loss_without_checkpoint_says_so() -> None:
    model = mlp()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 .*no checkpoint"):
        Engine(settings(epochs=2), progress=False).fit(
            OfflineScheme(model, Objective([NaNAtCall(1, model)])), TRAIN
        )


def test_non_finite_gradient_norm_is_caught_when_clipping(tmp_path: Path) -> None:
    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 3)

        def forward(self, x):
            return InfGrad.apply(self.lin(x))

    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm at epoch 1, step 1"):
        Engine(settings(epochs=1, clip_grad_norm=1.0), progress=False).fit(
            OfflineScheme(Model(), ce()), TRAIN
        )


def test_non_finite_guard_ignores_stale_checkpoint_of_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    Engine(settings(epochs=4), checkpoint_path=path, progress=False).fit(
        OfflineScheme(mlp(seed=1), ce()), TRAIN
    )
    model = mlp(seed=2)
    with pytest.raises(NonFiniteLossError) as info:
        Engine(settings(epochs=4), checkpoint_path=path, progress=False).fit(
            OfflineScheme(model, Objective([CrossEntropy(), NaNAtCall(2, model)])), TRAIN
        )
    # The new run never finished an epoch: it has no good checkpoint of its own. It must not
    # replace its weights by another run's, nor claim an epoch-4 checkpoint at epoch 1.
    assert "epoch 4" not in str(info.value)
    assert not params_equal(model, ckpt.load_state_dict(path))


def test_non_finite_message_before_first_checkpoint(tmp_path: Path) -> None:
    model = mlp()
    with pytest.raises(NonFiniteLossError) as info:
        Engine(settings(epochs=2), checkpoint_path=tmp_path / "ckpt.pt", progress=False).fit(
            OfflineScheme(model, Objective([NaNAtCall(1, model)])), TRAIN
        )
    assert "no checkpoint was configured" not in str(info.value)


# -- atomic checkpoints ----------------------------------------------------------------------------


def test_save_atomic_success_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.pt"
    out = ckpt.save_atomic(
        {"format": ckpt.FORMAT, "models": {"model": {"w": torch.ones(3)}}}, target
    )
    assert out == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    assert torch.equal(ckpt.load_state_dict(target)["w"], torch.ones(3))
    ckpt.save_atomic({"format": ckpt.FORMAT, "models": {"model": {"w": torch.zeros(3)}}}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    assert torch.equal(ckpt.load_state_dict(target)["w"], torch.zeros(3))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_save_atomic_failure_keeps_previous_file(tmp_path: Path, monkeypatch, error) -> None:
    target = tmp_path / "model.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT, "models": {"model": {"w": torch.ones(3)}}}, target)
    before = target.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b"PARTIAL-WRITE" * 100)  # bytes reach the temporary file, then the crash
        raise error("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(error):
        ckpt.save_atomic(
            {"format": ckpt.FORMAT, "models": {"model": {"w": torch.zeros(3)}}}, target
        )
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert torch.equal(ckpt.load_state_dict(target)["w"], torch.ones(3))


# -- the teacher in offline distillation -----------------------------------------------------------


@pytest.mark.parametrize("cache", [False, True])
def test_teacher_is_frozen_in_eval_mode_without_grad(cache: bool) -> None:
    torch.manual_seed(7)
    teacher = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )
    with torch.no_grad():  # non-trivial running statistics to compare against
        for _ in range(3):
            teacher(TRAIN.x)
    teacher.train()  # left in train mode on purpose: the scheme must switch it to eval
    before = copy.deepcopy(teacher.state_dict())
    assert before["1.num_batches_tracked"].item() == 3

    seen: list[tuple[bool, bool, bool, bool]] = []

    def hook(module, inputs):
        seen.append(
            (teacher.training, teacher[1].training, teacher[3].training, torch.is_grad_enabled())
        )

    teacher.register_forward_pre_hook(hook)
    student = mlp()
    student_before = copy.deepcopy(student.state_dict())
    objective = Objective([CrossEntropy(weight=0.5), SoftTarget(weight=0.5, name="kd")])
    epochs = 3
    Engine(settings(epochs=epochs), progress=False).fit(
        OfflineScheme(student, objective, teacher, cache_teacher=cache), TRAIN, VAL
    )
    # the teacher ran on every training batch (with the cache: the first epoch's only) ...
    assert len(seen) == (1 if cache else epochs) * STEPS
    assert all(s == (False, False, False, False) for s in seen)  # ... in eval mode, no grad
    assert params_equal(teacher, before)  # weights and BatchNorm running stats unchanged
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not params_equal(student, student_before)
    assert not teacher.training


def test_scheme_without_teacher_rejects_teacher_terms() -> None:
    from kdlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\['kd'\] need a teacher"):
        OfflineScheme(mlp(), Objective([CrossEntropy(), SoftTarget(name="kd")]))


# -- gradient clipping -----------------------------------------------------------------------------


def _norms_seen_by_step(monkeypatch) -> list[float]:
    norms: list[float] = []
    real = engine_module.make_optimizer

    def recording(params, cfg):
        opt = real(params, cfg)

        def pre_step(optimizer, args, kwargs):
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            norms.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))

        opt.register_step_pre_hook(pre_step)
        return opt

    monkeypatch.setattr(engine_module, "make_optimizer", recording)
    return norms


def test_gradient_clipping_bounds_the_norm_seen_by_step(monkeypatch) -> None:
    clip = 0.05
    unclipped = _norms_seen_by_step(monkeypatch)
    Engine(settings(epochs=2), progress=False).fit(OfflineScheme(mlp(), ce()), TRAIN)
    assert len(unclipped) == 2 * STEPS
    assert max(unclipped) > 5 * clip  # so clipping has something to do

    clipped = _norms_seen_by_step(monkeypatch)
    Engine(settings(epochs=2, clip_grad_norm=clip), progress=False).fit(
        OfflineScheme(mlp(), ce()), TRAIN
    )
    assert len(clipped) == 2 * STEPS
    assert max(clipped) <= clip * (1 + 1e-6)
    assert min(clipped) > 0.5 * clip  # clipped down to c, not zeroed


# -- learning-rate schedules -----------------------------------------------------------------------


def _lrs(cfg: ScheduleSettings, epochs: int, base: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = make_scheduler(opt, cfg, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _torch_lrs(make, epochs: int, base: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "cfg,reference",
    [
        (
            {"name": "cosine", "min_lr": 0.001},
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.001),
        ),
        (
            {"name": "step", "step_size": 5, "gamma": 0.5},
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
        ),
        (
            {"name": "multistep", "milestones": [3, 7, 10], "gamma": 0.2},
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7, 10], gamma=0.2),
        ),
        ({"name": "constant"}, lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
    ],
)
def test_schedules_without_warmup_match_torch(cfg: dict, reference) -> None:
    got = _lrs(ScheduleSettings(**cfg), 12)
    assert got == pytest.approx(_torch_lrs(reference, 12), rel=1e-12, abs=1e-15)


def test_schedules_closed_form_with_warmup() -> None:
    base, epochs, warm, min_lr = 0.1, 10, 3, 0.004
    got = _lrs(ScheduleSettings(name="cosine", warmup_epochs=warm, min_lr=min_lr), epochs, base)
    expected = [base * (e + 1) / (warm + 1) for e in range(warm)] + [
        min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * (e - warm) / (epochs - warm)))
        for e in range(warm, epochs)
    ]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[warm] == pytest.approx(base)  # warm-up ends at the base rate
    step = _lrs(ScheduleSettings(name="step", step_size=2, gamma=0.5, warmup_epochs=2), 8, base)
    # the decay's epochs count from the end of the warm-up
    assert step == pytest.approx(
        [base / 3, 2 * base / 3, base, base, base / 2, base / 2, base / 4, base / 4], rel=1e-12
    )


def test_history_lr_is_the_rate_used_in_each_epoch() -> None:
    s = settings(
        epochs=5,
        optimizer={"name": "adam", "lr": 0.02},
        schedule={"name": "multistep", "milestones": [2, 4], "gamma": 0.1},
    )
    history = Engine(s, progress=False).fit(OfflineScheme(mlp(), ce()), TRAIN)
    assert [r["lr"] for r in history] == pytest.approx([0.02, 0.02, 0.002, 0.002, 0.0002])


def test_warmup_must_be_shorter_than_training() -> None:
    with pytest.raises(ValueError, match=r"warmup_epochs \(5\) must be smaller than epochs \(5\)"):
        TrainSettings(epochs=5, schedule={"warmup_epochs": 5})


# -- keep_best -------------------------------------------------------------------------------------


def test_keep_best_returns_weights_of_best_validation_epoch() -> None:
    val = blobs(60, 2, noise=2.5)  # noisy validation accuracy that goes up and down
    states: list[dict] = []
    model = mlp()
    s = settings(epochs=12, keep_best=True, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    history = Engine(
        s, progress=False, callbacks=[lambda row: states.append(copy.deepcopy(model.state_dict()))]
    ).fit(OfflineScheme(model, ce()), TRAIN, val)
    accs = [r["val_accuracy"] for r in history]
    best = accs.index(max(accs))  # the first epoch reaching the maximum
    assert best != len(accs) - 1 and accs[-1] < max(accs), accs  # else the test proves nothing
    assert params_equal(model, states[best])
    model.eval()
    with torch.no_grad():
        recomputed = (model(val.x).argmax(-1) == val.y).double().mean().item()
    assert recomputed == max(accs)
    assert not model.training


# -- per-term logging ------------------------------------------------------------------------------


class RecordingCE(CrossEntropy):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.values: list[float] = []

    def forward(self, student, teacher, batch):
        value = super().forward(student, teacher, batch)
        self.values.append(float(value.detach()))
        return value


def test_history_logs_each_term_and_weighted_total() -> None:
    teacher = mlp(seed=4, dropout=0.0)
    rec = RecordingCE(weight=0.3)
    objective = Objective(
        [
            rec,
            SoftTarget(weight=0.7, temperature=2.0, name="kd"),
            SoftTarget(weight=0.0, name="unused"),
        ]
    )
    epochs = 3
    history = Engine(settings(epochs=epochs), progress=False).fit(
        OfflineScheme(mlp(), objective, teacher), TRAIN, VAL
    )
    assert len(history) == epochs
    for e, row in enumerate(history):
        assert {
            "epoch",
            "loss",
            "ce",
            "kd",
            "acc",
            "lr",
            "seconds",
            "val_accuracy",
            "val_nll",
        } <= set(row)
        assert "unused" not in row  # zero-weight terms are skipped, not logged
        assert row["epoch"] == e + 1
        assert row["loss"] == pytest.approx(0.3 * row["ce"] + 0.7 * row["kd"], rel=1e-6)
        batch_values = rec.values[e * STEPS : (e + 1) * STEPS]
        assert row["ce"] == pytest.approx(sum(batch_values) / STEPS, rel=1e-12)
    assert len(rec.values) == epochs * STEPS


# -- determinism -----------------------------------------------------------------------------------


def _final_params(seed: int) -> dict:
    model = mlp(seed=1)
    Engine(settings(epochs=3), seed=seed, progress=False).fit(OfflineScheme(model, ce()), TRAIN)
    return model.state_dict()


def test_same_seed_same_parameters_different_seed_different() -> None:
    previous = torch.get_num_threads()
    a, b, c = _final_params(0), _final_params(0), _final_params(1)
    assert params_equal(a, b)
    assert not params_equal(a, c)  # batch order and dropout masks follow the seed
    assert torch.get_num_threads() == previous  # threads=1 applies only while training


def test_unknown_optimizer_override_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\['disc'\].*optimizers are \['student'\]"):
        Engine(settings(optimizers={"disc": {"lr": 0.1}}), progress=False).fit(
            OfflineScheme(mlp(), ce()), TRAIN
        )
