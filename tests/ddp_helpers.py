"""Helpers for tests/test_distributed.py that run inside spawned ranks (importable by path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.models import MLP


class FailsOnRankOne(nn.Module):
    """An MLP that raises in its 20th training forward on rank 1 (a rank that dies mid-run)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 20 and os.environ.get("RANK") == "1":
                raise RuntimeError("rank one broke on purpose")
        return self.net(x)


def toy_splits(n_train: int = 96, seed: int = 0) -> DataSplits:
    """Separable 3-class data, 8 features, small enough for a few steps per epoch."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=gen) * 2

    def draw(n: int) -> ArrayDataset:
        y = torch.arange(n) % 3
        return ArrayDataset(centres[y] + torch.randn(n, 8, generator=gen), y)

    return DataSplits(draw(n_train), draw(30), draw(30), (8,), 3, "toy")


def mlp(seed: int, hidden: tuple[int, ...] = (16,)) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(8, hidden=list(hidden), num_classes=3)


def scheme_weights(tmp: Path) -> dict[str, Any]:
    """Final weights of each scheme that the DDP test compares with one process.

    Runs the same code in one process and in each rank: offline KD with a FitNets hint (a loss
    with an adapter), deep mutual learning (two optimizers, per-pair objectives), a WGAN-GP
    adversarial student (a critic with its own optimizer; with a gradient penalty, three critic
    calls and a double backward per step), an augmented image run and an interrupted offline run
    resumed from its checkpoint.
    """
    from kdlab.engine import Engine
    from kdlab.losses import build_objective
    from kdlab.models.discriminator import build_discriminator
    from kdlab.schemes.adversarial import AdversarialOptions, AdversarialScheme
    from kdlab.schemes.mutual import MutualScheme
    from kdlab.schemes.offline import OfflineScheme
    from kdlab.settings import TrainSettings

    data = toy_splits()
    settings = TrainSettings(
        epochs=3, batch_size=16, device="cpu", optimizer={"name": "sgd", "lr": 0.1}
    )
    teacher = mlp(1, (32,)).eval()
    out: dict[str, Any] = {}

    hint = [{"type": "ce"}, {"type": "hint", "student": "features.0", "teacher": "features.0"}]
    student = mlp(2)
    Engine(settings, progress=False).fit(
        OfflineScheme(student, build_objective(hint), teacher), data.train, data.val
    )
    out["fitnets"] = student.state_dict()

    peers = [mlp(3), mlp(4)]
    Engine(settings, progress=False).fit(MutualScheme(peers), data.train, data.val)
    out["mutual"] = [p.state_dict() for p in peers]

    gentle = TrainSettings(
        epochs=2, batch_size=16, device="cpu", optimizer={"name": "sgd", "lr": 0.01}
    )
    for lipschitz in ("clip", "gp"):  # gp draws random interpolations: same on every rank only
        options = AdversarialOptions(mode="wgan", lipschitz=lipschitz)
        student, critic = mlp(5), build_discriminator(3, seed=6)
        objective = build_objective([{"type": "ce"}])
        scheme = AdversarialScheme(student, teacher, critic, objective, options)
        Engine(gentle, progress=False).fit(scheme, data.train, data.val)
        out[f"wgan_{lipschitz}"] = {"student": student.state_dict(), "critic": critic.state_dict()}

    # Augmented images: the draws are made for the global batch, each rank uses its rows.
    from kdlab.data.augment import parse_augment

    gen = torch.Generator().manual_seed(9)
    images = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8, generator=gen)
    augment, _ = parse_augment([{"random_crop": {"padding": 1}}, "hflip", {"cutout": {"size": 2}}])
    augmented = ArrayDataset(images, torch.arange(64) % 3, augment)
    torch.manual_seed(10)  # the gp run above drew per-rank random numbers
    student = MLP(36, hidden=[8], num_classes=3)
    Engine(settings, progress=False).fit(
        OfflineScheme(student, build_objective([{"type": "ce"}])), augmented
    )
    out["augmented"] = student.state_dict()

    student = mlp(7)
    kd = [{"type": "soft_target", "temperature": 2.0}]
    halfway = settings.model_copy(update={"epochs": 2})
    path = tmp / "resume.pt"
    Engine(halfway, progress=False, checkpoint_path=path).fit(
        OfflineScheme(student, build_objective(kd), teacher), data.train, data.val
    )
    student = mlp(8)  # other weights: the checkpoint must bring them back
    Engine(settings, progress=False, checkpoint_path=path).fit(
        OfflineScheme(student, build_objective(kd), teacher), data.train, data.val, resume=True
    )
    out["resumed"] = student.state_dict()
    return out


def rank_main(rank: int, world: int, port: int, tmp: str) -> None:
    """One spawned rank: torchrun's variables, then :func:`scheme_weights`, saved per rank."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    weights = scheme_weights(Path(tmp) / "shared")  # one folder, as a run store is: rank 0 writes
    torch.save(weights, Path(tmp) / f"ddp{rank}.pt")
