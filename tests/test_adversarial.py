"""Tests of adversarial distillation (seed 004): losses, the scheme's gradients, the runner.

Losses are checked against direct formulas on small float64 tensors; the scheme against hand-made
``update`` functions that record which parameters each optimizer's loss reaches. Everything runs
on tiny models with one thread; the digits test trains for a few epochs.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from kdlab.api import train
from kdlab.config import parse_config
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError, NonFiniteLossError
from kdlab.inference import predict_logits
from kdlab.losses import CrossEntropy, Objective, SoftTarget
from kdlab.losses.adversarial import (
    clip_weights,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    pretrained_fool_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from kdlab.models import MLP
from kdlab.models.discriminator import LogitDiscriminator, build_discriminator
from kdlab.runs import Recorder, RunInfo
from kdlab.schemes.adversarial import (
    AdversarialOptions,
    AdversarialScheme,
    fit_adversarial,
)
from kdlab.schemes.discriminator import (
    DiscriminatorPretraining,
    holdout_accuracy,
    pretrain_discriminator,
)
from kdlab.settings import TrainSettings, parse_options
from kdlab.store import RunStore
from kdlab.types import Batch, LossOutput

EXAMPLES = sorted(Path(__file__).parents[1].glob("examples/*adversarial_*.yaml"))
SIG = torch.sigmoid


def scores(seed: int, n: int = 6) -> torch.Tensor:
    return 3 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- losses against direct formulas ---------------------------------------------------------------


def test_gan_losses_equal_the_seed_formulas() -> None:
    r, f = scores(0), scores(1)
    direct_d = -(torch.log(SIG(r)).mean() + torch.log(1 - SIG(f)).mean())
    torch.testing.assert_close(gan_discriminator_loss(r, f), direct_d)
    t = 0.9  # one-sided smoothing: only the real target moves
    smoothed = -(t * torch.log(SIG(r)) + (1 - t) * torch.log(1 - SIG(r))).mean()
    torch.testing.assert_close(
        gan_discriminator_loss(r, f, t), smoothed - torch.log(1 - SIG(f)).mean()
    )
    torch.testing.assert_close(gan_generator_loss(f), -torch.log(SIG(f)).mean())
    # stable where σ rounds to 0 or 1: the direct formula gives inf, softplus the exact value
    extreme = torch.tensor([-200.0, 200.0])  # float32: σ(−200) rounds to 0
    assert torch.isinf(-torch.log(SIG(extreme)).mean())
    torch.testing.assert_close(gan_generator_loss(extreme), torch.tensor(100.0))


def test_wgan_losses_equal_the_seed_formulas() -> None:
    r, f = scores(2), scores(3)
    torch.testing.assert_close(wgan_critic_loss(r, f), -(r.mean() - f.mean()))
    torch.testing.assert_close(wgan_generator_loss(f), -f.mean())


def test_pretrained_fool_loss_is_minus_the_cross_entropy_on_the_label_student() -> None:
    s = scores(4).requires_grad_(True)
    # H(network_true = student, P_D) = −log P_D(student | z) = −log(1 − σ(s))
    direct = -(-torch.log(1 - SIG(s))).mean()
    value = pretrained_fool_loss(s, "seed")
    torch.testing.assert_close(value, direct)
    (grad,) = torch.autograd.grad(value, s)
    assert (grad < 0).all()  # descending it raises every score: D calls the student "teacher"
    torch.testing.assert_close(pretrained_fool_loss(s, "non_saturating"), -torch.log(SIG(s)).mean())
    # clipped like probability-based cross-entropy: bounded below at log 1e-7, no push beyond
    far = torch.tensor([40.0, 80.0], requires_grad=True)
    assert pretrained_fool_loss(far, "seed").item() == pytest.approx(math.log(1e-7))
    (grad,) = torch.autograd.grad(pretrained_fool_loss(far, "seed"), far)
    assert torch.equal(grad, torch.zeros(2))


def test_gradient_signs_of_the_gan_losses() -> None:
    r, f = scores(5).requires_grad_(True), scores(6).requires_grad_(True)
    g_r, g_f = torch.autograd.grad(gan_discriminator_loss(r, f), (r, f))
    assert (g_r < 0).all() and (g_f > 0).all()  # D raises real scores, lowers fake ones
    (g_gen,) = torch.autograd.grad(gan_generator_loss(f), f)
    assert (g_gen < 0).all()  # the student raises its own score
    g_r, g_f = torch.autograd.grad(wgan_critic_loss(r, f), (r, f))
    assert (g_r < 0).all() and (g_f > 0).all()


# -- gradient penalty and clipping ----------------------------------------------------------------


def test_gradient_penalty_of_a_linear_critic_is_the_closed_form() -> None:
    critic = nn.Linear(4, 1).double()
    w = critic.weight.detach()
    gp = gradient_penalty(lambda x, y: critic(x).squeeze(1), scores(7, 12).view(3, 4),
                          scores(8, 12).view(3, 4))  # fmt: skip
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)


def test_gradient_penalty_matches_a_per_sample_autograd_reference() -> None:
    torch.manual_seed(0)
    critic = LogitDiscriminator(5, hidden=[16, 16], norm="layer", conditional=True).double()
    real, fake = scores(9, 20).view(4, 5), scores(10, 20).view(4, 5)
    labels, eps = torch.tensor([0, 3, 4, 1]), torch.tensor([0.1, 0.5, 0.9, 0.3]).double()
    gp = gradient_penalty(critic, real, fake, labels, eps)
    terms = []
    for i in range(4):  # one interpolate at a time: no batch effects by construction
        x = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).view(1, 5).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x, labels[i : i + 1]).sum(), x, create_graph=True)
        terms.append((g.norm() - 1) ** 2)
    reference = torch.stack(terms).mean()
    torch.testing.assert_close(gp, reference)
    # and it trains the critic: the parameter gradients agree with the reference's (the output
    # bias does not change ∇_x D, so it gets none)
    params = list(critic.parameters())
    ours = torch.autograd.grad(gp, params, allow_unused=True)
    theirs = torch.autograd.grad(reference, params, allow_unused=True)
    assert sum(g is not None for g in ours) >= len(params) - 1
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


# -- the scheme: who gets which gradient ----------------------------------------------------------


def blobs(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    return ArrayDataset(centers[y] + 0.7 * torch.randn(n, 8, generator=g), y)


def tiny(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def grads(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "gan", "d_steps": 2, "label_smoothing": 0.1},
        {"mode": "wgan", "lipschitz": "clip"},
        {"mode": "wgan", "lipschitz": "gp"},
        {"mode": "pretrained"},
    ],
    ids=["gan", "wgan-clip", "wgan-gp", "pretrained"],
)
def test_each_loss_reaches_only_its_own_model(options: dict) -> None:
    student, teacher = tiny(1), tiny(2, hidden=32)
    d = LogitDiscriminator(3, hidden=[8], norm="layer" if options.get("lipschitz") else "none")
    objective = Objective([CrossEntropy(weight=0.5)])
    mode = options.pop("mode")
    scheme = AdversarialScheme(student, teacher, d, objective,
                               {"mode": mode, "adversarial_weight": 0.7, **options})  # fmt: skip
    data = blobs(16, 0)
    batch = Batch(data.x, data.y)
    scheme.prepare(batch)
    scheme.set_mode(True)
    optimizers = {k: torch.optim.SGD(v, lr=0.1) for k, v in scheme.optimizer_groups().items()}
    calls: list[tuple[str, bool, bool, bool]] = []

    def update(name: str, loss: LossOutput) -> None:
        for m in (student, d, teacher):
            m.zero_grad(set_to_none=True)
        loss.total.backward()
        calls.append((name, grads(student), grads(d), grads(teacher)))
        if name == "student":  # the total is the objective plus α × the adversarial term
            expected = 0.5 * loss.terms["ce"] + 0.7 * loss.terms["adversarial"]
            torch.testing.assert_close(loss.total, expected)
        optimizers[name].step()

    metrics = scheme.train_step(batch, update)
    d_steps = options.get("d_steps", 1) if mode != "pretrained" else 0
    assert calls == [("discriminator", False, True, False)] * d_steps + [
        ("student", True, False, False)
    ]
    assert "acc" in metrics
    assert ("wasserstein" in metrics) == (mode == "wgan")
    assert ("d_acc" in metrics) == (mode != "wgan")
    assert all(p.requires_grad for p in d.parameters()) == (mode != "pretrained")
    assert set(scheme.optimizer_groups()) == (
        {"student"} if mode == "pretrained" else {"student", "discriminator"}
    )


def test_student_step_uses_the_updated_discriminator_and_logs_its_estimates() -> None:
    student, teacher, d = tiny(1), tiny(2, hidden=32), LogitDiscriminator(3, hidden=[8])
    scheme = AdversarialScheme(
        student,
        teacher,
        d,
        Objective([CrossEntropy()]),
        {"mode": "wgan", "lipschitz": "clip", "clip_value": 0.5},
    )
    data = blobs(16, 1)
    batch = Batch(data.x, data.y)
    scheme.prepare(batch)
    scheme.set_mode(True)
    opt = torch.optim.SGD(d.parameters(), lr=0.5)
    seen: dict[str, LossOutput] = {}
    with torch.no_grad():
        real, fake = teacher(data.x), student(data.x)
        before = -wgan_generator_loss(d(fake))
        estimate = d(real).mean() - d(fake).mean()

    def update(name: str, loss: LossOutput) -> None:
        seen[name] = loss
        if name == "discriminator":
            opt.zero_grad()
            loss.total.backward()
            opt.step()

    metrics = scheme.train_step(batch, update)
    assert metrics["wasserstein"] == pytest.approx(float(estimate), rel=1e-5)
    with torch.no_grad():
        after = wgan_generator_loss(d(fake))
    torch.testing.assert_close(seen["student"].terms["adversarial"].detach(), after)
    assert not torch.isclose(after, -before)  # D really moved between the two steps


def test_fresh_critic_batches_give_each_d_step_new_data_and_the_student_every_kth_batch() -> None:
    """WGAN's loop: d_steps = 3 → D updates on every batch, the student on every third, and each
    D step scores the logits of its own batch."""
    student, teacher, d = tiny(1), tiny(2, hidden=32), LogitDiscriminator(3, hidden=[8])
    scheme = AdversarialScheme(
        student,
        teacher,
        d,
        Objective([CrossEntropy()]),
        {"mode": "wgan", "d_steps": 3, "critic_batches": "fresh"},
    )
    batches = [Batch(data.x, data.y) for data in (blobs(8, s) for s in range(6))]
    scheme.prepare(batches[0])
    scheme.set_mode(True)
    calls: list[tuple[int, str]] = []
    fakes: list[torch.Tensor] = []

    def update(name: str, loss: LossOutput) -> None:
        calls.append((len(seen), name))
        if name == "discriminator":  # D's loss is a function of this batch's student logits
            fakes.append(loss.total.detach().clone())
        assert name != "student" or loss.total.requires_grad

    seen: list[Batch] = []
    for batch in batches:
        scheme.train_step(batch, update)
        seen.append(batch)
    assert calls == [(0, "discriminator"), (1, "discriminator"), (2, "discriminator"),
                     (2, "student"), (3, "discriminator"), (4, "discriminator"),
                     (5, "discriminator"), (5, "student")]  # fmt: skip
    with torch.no_grad():  # no optimizer ran, so each D loss is −[D(T(x_i)) − D(G(x_i))] on x_i
        expected = [
            wgan_critic_loss(d(teacher(b.inputs), b.targets), d(student(b.inputs), b.targets))
            for b in batches
        ]
    torch.testing.assert_close(torch.stack(fakes), torch.stack(expected))
    assert len({round(float(v), 6) for v in fakes}) == len(batches)  # six different batches


def test_weight_clipping_keeps_every_parameter_in_bound_after_each_step() -> None:
    student, teacher = tiny(1), tiny(2, hidden=32)
    d = LogitDiscriminator(3, hidden=[8, 8])
    scheme = AdversarialScheme(student, teacher, d, Objective([CrossEntropy()]),
                               {"mode": "wgan", "lipschitz": "clip", "clip_value": 0.01,
                                "d_steps": 3})  # fmt: skip
    data = blobs(64, 2)
    scheme.prepare(Batch(data.x[:2], data.y[:2]))
    scheme.set_mode(True)
    optimizers = {k: torch.optim.SGD(v, lr=1.0) for k, v in scheme.optimizer_groups().items()}
    largest_unclipped, checks = 0.0, 0

    def bound() -> float:  # compared in float32, the dtype clipping rounds to
        return max(float(p.detach().abs().max()) for p in d.parameters())

    def update(name: str, loss: LossOutput) -> None:
        nonlocal largest_unclipped, checks
        assert bound() <= 0.01 + 1e-8  # clipped after the previous step (and before the first)
        checks += 1
        optimizers[name].zero_grad()
        loss.total.backward()
        optimizers[name].step()
        if name == "discriminator":
            largest_unclipped = max(largest_unclipped, bound())

    for i in range(0, 64, 16):
        scheme.train_step(Batch(data.x[i : i + 16], data.y[i : i + 16]), update)
        assert bound() <= 0.01 + 1e-8
    assert checks == 16
    assert largest_unclipped > 0.01  # the steps did leave the box: clipping was needed


# -- pretraining, GAN on digits, the runner -------------------------------------------------------


def test_pretrained_discriminator_separates_teacher_from_random_logits() -> None:
    train_set, holdout = blobs(256, 3), blobs(128, 4)
    teacher = tiny(2, hidden=32)
    opt = torch.optim.Adam(teacher.parameters(), lr=0.05)  # a sharp teacher: fit it briefly
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(train_set.x), train_set.y).backward()
        opt.step()
    teacher.zero_grad(set_to_none=True)
    teacher_state = copy.deepcopy(teacher.state_dict())
    generator = tiny(5)  # a random, untrained student
    d = LogitDiscriminator(3, hidden=[16, 16])
    before = holdout_accuracy(d, teacher, generator, holdout)
    settings = TrainSettings(epochs=15, batch_size=32, threads=1, optimizer={"lr": 3e-3})
    pretraining = DiscriminatorPretraining(d, teacher, generator)
    summary = pretrain_discriminator(pretraining, train_set, settings, holdout=holdout)
    assert summary["holdout_accuracy"] >= 0.9 > before + 0.2  # chance is 0.5
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.fixture(scope="module")
def digits_teacher(digits: DataSplits) -> nn.Module:
    torch.manual_seed(0)
    settings = TrainSettings(epochs=15, threads=1, optimizer={"lr": 3e-3})
    return train(MLP(64, [64]), digits, settings=settings, progress=False).model


def test_gan_kd_on_digits_raises_agreement_with_the_teacher(
    digits: DataSplits, digits_teacher: nn.Module
) -> None:
    torch.manual_seed(1)
    student = MLP(64, [16])
    teacher_pred = predict_logits(digits_teacher, digits.val.x).argmax(1)
    agreement: list[float] = []

    def track(row: dict) -> None:
        pred = predict_logits(student, digits.val.x).argmax(1)
        agreement.append(float((pred == teacher_pred).float().mean()))

    settings = TrainSettings(
        epochs=8, threads=1, optimizer={"lr": 3e-3},
        optimizers={"discriminator": {"lr": 3e-4, "betas": (0.5, 0.999)}},
    )  # fmt: skip
    options = {"mode": "gan", "adversarial_weight": 0.3, "discriminator": {"conditional": True}}
    opts = AdversarialOptions.model_validate(options)  # D as adversarial_distill builds it
    d = build_discriminator(10, 0, opts.discriminator)
    scheme = AdversarialScheme(student, digits_teacher, d, Objective([CrossEntropy()]), opts)
    run = fit_adversarial(scheme, digits, settings, RunInfo("distilled"),
                          Recorder(progress=False), callbacks=[track])  # fmt: skip
    assert len(agreement) == 8
    assert agreement[-1] > agreement[0] + 0.15 and agreement[-1] > 0.8
    assert run.metrics["agreement"] > 0.8
    for row in run.history:  # D's accuracy and the student's terms are in the history
        assert 0.0 <= row["d_acc"] <= 1.0 and 0.0 <= row["fooled"] <= 1.0
        assert {"discriminator.gan", "student.ce", "student.adversarial"} <= set(row)


def test_pretrained_run_trains_d_first_then_keeps_it_frozen(
    digits: DataSplits, digits_teacher: nn.Module
) -> None:
    torch.manual_seed(2)
    student = MLP(64, [16])
    d = LogitDiscriminator(10, hidden=[32])
    initial = copy.deepcopy(d.state_dict())
    states: list[dict] = []
    settings = TrainSettings(epochs=3, threads=1, optimizer={"lr": 3e-3},
                             optimizers={"discriminator": {"lr": 1e-3}})  # fmt: skip
    scheme = AdversarialScheme(
        student, digits_teacher, d, Objective([CrossEntropy(), SoftTarget(weight=0.5)]),
        {"mode": "pretrained", "pretrain_epochs": 3, "early_epochs": 1},
    )  # fmt: skip
    run = fit_adversarial(
        scheme, digits, settings, RunInfo("distilled"), Recorder(progress=False),
        callbacks=[lambda row: states.append(copy.deepcopy(d.state_dict()))],
    )  # fmt: skip
    assert not all(torch.equal(initial[k], states[0][k]) for k in initial)  # D was pretrained
    assert all(torch.equal(s[k], states[0][k]) for s in states for k in s)  # then frozen
    assert run.history[0]["d_acc"] > 0.6  # the pretrained D starts out telling them apart
    assert {"ce", "soft_target", "adversarial", "fooled"} <= set(run.history[0])


class NaNAfterOneStep(LogitDiscriminator):
    """A discriminator whose scores turn NaN once it has been updated (a diverging D)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        scores = super().forward(logits, labels)
        return scores * float("nan") if self.steps_taken() else scores

    def steps_taken(self) -> bool:
        return any(p.grad is not None for p in self.parameters())


def test_a_pretraining_failure_is_recorded_as_a_failed_run(
    digits: DataSplits, digits_teacher: nn.Module, tmp_path: Path
) -> None:
    store = RunStore(tmp_path / "store")
    settings = TrainSettings(epochs=2, threads=1)
    with pytest.raises(NonFiniteLossError):
        scheme = AdversarialScheme(
            MLP(64, [16]), digits_teacher, NaNAfterOneStep(10, hidden=[8]),
            Objective([CrossEntropy()]),
            {"mode": "pretrained", "fake_student": "init", "pretrain_epochs": 2},
        )  # fmt: skip
        fit_adversarial(scheme, digits, settings, RunInfo("distilled"),
                        Recorder(store, "adv", progress=False))  # fmt: skip
    (run,) = store.list_runs()
    assert (run.experiment, run.role, run.status) == ("adv", "distilled", "failed")
    assert run.error.startswith("discriminator pretraining failed: kdlab.errors.NonFiniteLossError")
    assert "epoch 1, step 2" in run.error
    assert run.config["adversarial"]["options"]["mode"] == "pretrained"


# -- configs and bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mnist", "notmnist", "svhn", "fashion-mnist", "digits"])
def test_example_configs_validate_with_every_seed_dataset(source: str) -> None:
    assert len(EXAMPLES) == 8
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        data["data"]["source"] = source
        cfg = parse_config(data, str(path))
        assert cfg.data.source == source
        if cfg.distill.scheme == "adversarial":
            assert cfg.distill.parsed_options().mode in path.stem  # type: ignore[attr-defined]


def experiment(options: dict) -> dict:
    return {"distill": {"scheme": "adversarial", "options": options}}


def test_gradient_penalty_with_batch_norm_is_rejected() -> None:
    bad = {"mode": "wgan", "lipschitz": "gp", "discriminator": {"norm": "batch"}}
    with pytest.raises(ConfigError, match=r"BatchNorm.*norm: layer or none"):
        parse_config(experiment(bad))
    d = LogitDiscriminator(3, norm="batch")  # the Python path checks the module itself
    with pytest.raises(ConfigError, match="BatchNorm"):
        AdversarialScheme(
            tiny(1), tiny(2), d, Objective([CrossEntropy()]), {"mode": "wgan", "lipschitz": "gp"}
        )


@pytest.mark.parametrize("key", ["adversarial_weight", "discriminator_weight", "gp_weight"])
def test_a_negative_weight_is_rejected(key: str) -> None:
    options = {"mode": "wgan", "lipschitz": "gp", key: -0.5}
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number ≥ 0, got -0.5"):
        parse_config(experiment(options))
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number ≥ 0, got -0.5"):
        parse_options(AdversarialOptions, options, "adversarial options are invalid")
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number ≥ 0, got -0.5"):
        AdversarialScheme(tiny(1), tiny(2), LogitDiscriminator(3), Objective([CrossEntropy()]),
                          options)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "gan", "lipschitz": "clip"}, "only apply to mode: wgan"),
        ({"mode": "gan", "pretrain_epochs": 3}, "only apply to mode: pretrained"),
        ({"mode": "wgan", "label_smoothing": 0.1}, "does not apply to mode: wgan"),
        ({"mode": "wgan", "lipschitz": "gp", "clip_value": 0.1}, "clip_value applies to"),
        ({"mode": "gan", "d_step": 2}, "unknown key 'd_step' \\(did you mean 'd_steps'\\?\\)"),
        ({"mode": "gann"}, "mode"),
        ({"mode": "pretrained", "d_steps": 3}, "only apply to mode: gan or wgan"),
        ({"mode": "wgan", "critic_batches": "new"}, "critic_batches"),
    ],
)
def test_inconsistent_options_are_rejected_with_the_fix(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(experiment(options))


def test_clip_weights_clamps_in_place() -> None:
    layer = nn.Linear(3, 3)
    with torch.no_grad():
        layer.weight.mul_(100)
    clip_weights(layer, 0.05)
    assert all(bool((p.abs() <= 0.05).all()) for p in layer.parameters())
    assert float(layer.weight.detach().abs().max()) == pytest.approx(0.05)
