"""Deep mutual learning runs (Zhang et al. 2018): k peers learn together, each from the others.

YAML::

    teacher: null                 # no pre-trained teacher needed
    distill:
      scheme: mutual
      options: {k: 3}             # the student + 2 more peers of its architecture
      # options: {peers: [{type: mlp, hidden: [256, 256]}]}   # unequal peers
      # options: {peers: [teacher]}  # the trained teacher keeps learning while it teaches
      loss: [{type: ce}, {type: soft_target, temperature: 1, name: mutual}]   # DML's loss

Python::

    runs = mutual_learning([student, big_peer], data, settings=settings)

Peer 1 is the student, with the baseline's initial weights: it is recorded with role
``distilled`` (paired with the ``student`` baseline); the other peers as ``peer2`` … ``peerk``.
A ``student`` entry is a fresh copy of the student's architecture (initial weights from
seed + 1000·position), ``teacher`` a copy of the experiment's trained teacher.
Validation during training (and ``train.keep_best``) concerns peer 1, the student; every peer is
evaluated on test after training.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import field_validator, model_validator
from torch import nn

from kdlab.api import RunResult, check_num_classes, fit_model, record_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.runners import DistillContext, Runner, register_runner
from kdlab.runners.common import (
    SEED_STRIDE,
    build_seeded,
    check_specs,
    recording_kwargs,
    student_spec,
)
from kdlab.schemes.mutual import DML_LOSS, MutualScheme, PeerLoss
from kdlab.settings import Strict, TrainSettings
from kdlab.store import RunStore

PEER_ALIASES = ("student", "teacher")


class MutualOptions(Strict):
    """``distill.options`` of ``scheme: mutual``."""

    #: Number of peers, the student included, when ``peers`` is not given (copies of the student).
    k: int | None = None
    #: The peers besides the student: model specs, ``student`` or ``teacher`` (see module doc).
    peers: list[Any] | None = None

    @field_validator("k")
    @classmethod
    def _enough(cls, k: int | None) -> int | None:
        if k is not None and k < 2:
            raise ValueError(
                f"mutual learning needs k ≥ 2 peers (the student and at least one other), got {k}"
            )
        return k

    @field_validator("peers")
    @classmethod
    def _specs(cls, peers: list[Any] | None) -> list[Any] | None:
        if peers is None:
            return None
        if not peers:
            raise ValueError(
                "peers is empty, which leaves the student alone (k = 1); mutual learning needs "
                "k ≥ 2: list at least one peer, e.g. [student] or [{type: mlp, hidden: [128]}]"
            )
        return check_specs(peers, "peers", PEER_ALIASES)

    @model_validator(mode="after")
    def _consistent(self) -> MutualOptions:
        if self.k is not None and self.peers is not None and self.k != len(self.peers) + 1:
            raise ValueError(
                f"k is {self.k} but peers lists {len(self.peers)} peers besides the student "
                f"(k = {len(self.peers) + 1}); give one of them, or make them agree"
            )
        return self

    @property
    def uses_teacher(self) -> bool:
        return "teacher" in (self.peers or [])

    def other_peers(self) -> list[Any]:
        return self.peers if self.peers is not None else ["student"] * ((self.k or 2) - 1)


def peer_history(history: Sequence[dict[str, float]], name: str) -> list[dict[str, float]]:
    """One peer's columns of the joint history (``peer2.ce`` → ``ce``), with epoch, lr, time."""
    prefix = f"{name}."
    return [
        {
            **{k: v for k, v in row.items() if k in ("epoch", "lr", "seconds")},
            **{k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)},
        }
        for row in history
    ]


def mutual_learning(
    peers: Sequence[nn.Module],
    data: DataSplits,
    loss: PeerLoss = DML_LOSS,
    settings: TrainSettings | None = None,
    *,
    train_set: ArrayDataset | None = None,
    seed: int = 0,
    roles: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    store: RunStore | None = None,
    experiment: str = "adhoc",
    progress: bool = True,
    gamma: float = 1.0,
    ece_bins: int = 15,
    config: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Train ``peers`` together by mutual learning; one run per peer (first: the joint run).

    The first peer's run holds the joint per-epoch history (every peer's terms, as
    ``peer<i>.<term>``, and the first peer's validation metrics); each other peer's run holds
    its own columns. Every peer is evaluated on test after the joint training.
    """
    scheme = MutualScheme(peers, loss)
    k = len(scheme.peers)
    roles = list(roles) if roles is not None else list(scheme.names)
    names = list(names) if names is not None else [f"{n} s{seed}" for n in scheme.names]
    if len(roles) != k or len(names) != k:
        raise ConfigError(f"give one role and one name per peer: {k} peers, got "
                          f"{len(roles)} roles and {len(names)} names")  # fmt: skip
    for peer, name in zip(scheme.peers, scheme.names, strict=True):
        check_num_classes(peer, data, name)
    shared = {"store": store, "experiment": experiment, "gamma": gamma, "ece_bins": ece_bins}
    config = {**(config or {}), "scheme": "mutual", "peers": k}
    first = fit_model(
        scheme.peers[0], data, scheme.objectives[0][1], settings, seed=seed, scheme=scheme,
        train_set=train_set, role=roles[0], name=names[0], progress=progress,
        config={**config, "peer": 1}, **shared,
    )  # fmt: skip
    runs = [first]
    for i in range(1, k):
        runs.append(record_model(
            scheme.peers[i], data, peer_history(first.history, scheme.names[i]), seed=seed,
            role=roles[i], name=names[i], config={**config, "peer": i + 1}, **shared,
        ))  # fmt: skip
    return runs


def _build_peers(ctx: DistillContext, opts: MutualOptions) -> list[nn.Module]:
    peers = [ctx.new_student()]  # peer 1: the baseline's initial weights
    for position, spec in enumerate(opts.other_peers(), start=1):
        if spec == "teacher":
            if ctx.teacher is None:
                raise ConfigError(
                    "distill.options.peers names 'teacher', but the experiment has no teacher "
                    "(teacher: null); describe the teacher, or list a model spec instead"
                )
            peer = copy.deepcopy(ctx.teacher)  # trained weights; it keeps learning from here
            peer.requires_grad_(True)
        else:
            spec = student_spec(ctx) if spec == "student" else spec
            peer = build_seeded(spec, ctx.data, ctx.seed + SEED_STRIDE * position)
        peers.append(peer)
    return peers


def run_mutual(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, MutualOptions)
    peers = _build_peers(ctx, opts)
    roles = ["distilled", *(f"peer{i}" for i in range(2, len(peers) + 1))]
    kinds = ["student", *(s if isinstance(s, str) else s.get("type", "mlp")
                          for s in opts.other_peers())]  # fmt: skip
    names = [f"mutual peer{i} ({kind}) s{ctx.seed}" for i, kind in enumerate(kinds, start=1)]
    return mutual_learning(
        peers, ctx.data, ctx.loss, ctx.train, train_set=ctx.train_set, seed=ctx.seed,
        roles=roles, names=names, progress=ctx.fit_kwargs.get("progress", True),
        config=ctx.config, **recording_kwargs(ctx.fit_kwargs),
    )  # fmt: skip


register_runner(Runner(
    "mutual", run_mutual, MutualOptions, needs_teacher=False,
    summary="k peers learn together, each from the others (deep mutual learning)",
))  # fmt: skip

__all__ = ["MutualOptions", "mutual_learning", "peer_history"]
