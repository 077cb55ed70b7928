"""Online distillation — deep mutual learning (Zhang et al. 2018; seed 001 §4).

k ≥ 2 peers learn together from the start. Peer i minimises its loss against each other peer j
taken as a teacher whose outputs are detached, averaged over the k − 1 others:

    L_i = 1/(k−1) · Σ_{j≠i} objective_ij(peer_i(x), stopgrad(peer_j(x)), y)

With the DML loss [ce, soft_target at T = 1] this is exactly L_i = CE_i + 1/(k−1) Σ_j KL(p_j‖p_i)
(label terms do not depend on j, so their average is themselves). Any term works: feature and
relation terms read the peers' tapped features, and a term with parameters (a hint adapter) gets
one instance per ordered pair (i, j), because the shapes it maps between depend on both peers.

Updates are simultaneous: all peers' outputs come from the same pre-update weights, then each peer
steps on its own loss. (Zhang et al.'s Algorithm 1 recomputes the other peers' predictions after
each peer's step; the simultaneous form is what their released code and most re-implementations
do, it needs k forward passes per batch instead of k², and it keeps identical peers identical —
the symmetry a test can check.)

Each peer has its own optimizer, named ``peer1`` … ``peerk``: the losses are separable, so this
equals one optimizer over all parameters for Adam and SGD, while it lets ``train.optimizers``
give one peer its own learning rate (a large peer, or a teacher that keeps learning), keeps
gradient clipping per model rather than coupling the peers through a global norm, and logs each
peer's terms as ``peer<i>.<term>``.

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
A ``student`` entry is a fresh copy of the student's architecture (initial weights from its
derived seed, kdlab.seeding), ``teacher`` a copy of the experiment's trained teacher.
Validation during training (and ``train.keep_best``) concerns peer 1, the student; every peer is
evaluated on test after training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator
from torch import nn

from kdlab.data import DataSplits
from kdlab.errors import ConfigError
from kdlab.inference import batch_accuracy
from kdlab.losses import LossOutput, Objective, Term, build_objective, prepare_terms
from kdlab.models import check_model_specs
from kdlab.runs import Recorder, RunInfo, RunResult, check_num_classes, fit, record_model
from kdlab.schemes.base import DistillContext, Scheme, Update, checked, require_teacher
from kdlab.schemes.registry import SchemeSpec
from kdlab.settings import Strict, TrainSettings
from kdlab.taps import resolve_modules
from kdlab.types import Batch, ModelOutput

#: A loss for the peers: term specs (dicts or a factory of fresh terms), built once per pair.
PeerLoss = Sequence[Mapping[str, Any]] | Callable[[], Objective | Sequence[Term]]

#: DML (Zhang et al. 2018): cross-entropy plus KL to each other peer at temperature 1.
DML_LOSS: list[dict[str, Any]] = [
    {"type": "ce"},
    {"type": "soft_target", "temperature": 1.0, "name": "mutual"},
]


def _build(loss: PeerLoss) -> Objective:
    if callable(loss):
        made = loss()
        return made if isinstance(made, Objective) else Objective(made)
    if any(isinstance(spec, Term) for spec in loss):
        raise ConfigError(
            "mutual learning builds one objective per pair of peers, so the same Term instance "
            "cannot be shared: pass term specs (dicts) or a function returning fresh terms"
        )
    return build_objective(loss)


class MutualScheme(Scheme):
    """Peers trained together, each distilled from the others' detached outputs."""

    def __init__(self, peers: Sequence[nn.Module], loss: PeerLoss = DML_LOSS) -> None:
        peers = list(peers)
        if len(peers) < 2:
            raise ConfigError(
                f"mutual learning needs k ≥ 2 peers, got {len(peers)}; add peers "
                "(distill.options.peers, or k: 2 for two copies of the student)"
            )
        if len({id(p) for p in peers}) < len(peers):
            raise ConfigError(
                "mutual learning got the same module twice as a peer; give each peer its own "
                "model (e.g. copy.deepcopy, then re-initialise)"
            )
        self.peers = peers
        self.names = [f"peer{i + 1}" for i in range(len(peers))]
        k = len(peers)
        # objectives[i][j]: peer i learning from peer j (the diagonal is unused: None).
        self.objectives = [[_build(loss) if i != j else None for j in range(k)] for i in range(k)]
        self._taps: list[tuple[str, ...]] = []
        for i, peer in enumerate(peers):
            as_student = [p for o in self.objectives[i] if o is not None for p in o.student_taps]
            as_teacher = [p for row in self.objectives if row[i] is not None
                          for p in row[i].teacher_taps]  # fmt: skip
            taps = tuple(dict.fromkeys([*as_student, *as_teacher]))
            resolve_modules(peer, taps, self.names[i])  # an unknown path fails before training
            self._taps.append(taps)
        self._pair_modules = nn.ModuleList(
            o for row in self.objectives for o in row if o is not None
        )

    def trainable(self) -> dict[str, nn.Module]:
        return {**dict(zip(self.names, self.peers, strict=True)), "objectives": self._pair_modules}

    def called_modules(self) -> list[nn.Module]:
        return [*self.peers, *self._pair_modules]  # each pair objective is called on its own

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {}
        for i, (name, peer) in enumerate(zip(self.names, self.peers, strict=True)):
            params = [*peer.parameters()]
            for objective in self.objectives[i]:
                if objective is not None:  # peer i's pair terms (e.g. its hint adapters)
                    params += objective.parameters()
            groups[name] = [p for p in params if p.requires_grad]
        return groups

    def eval_model(self) -> nn.Module:
        return self.peers[0]

    def recorded_loss(self) -> list[str]:
        return [repr(t) for t in self.objectives[0][1].terms]  # peer 1 learning from peer 2

    def prepare(self, sample: Batch) -> None:
        # Terms with shape-dependent adapters build them now, one per ordered pair (peer i's
        # feature mapped to peer j's), so that peer i's optimizer includes them.
        for i, row in enumerate(self.objectives):
            for j, objective in enumerate(row):
                if objective is not None:
                    prepare_terms(objective, self.peers[i], self.peers[j], sample)

    def peer_outputs(self, batch: Batch) -> list[ModelOutput]:
        """Every peer's output (with its taps) on ``batch``, in the peers' current modes.

        The targets come from these same train-mode passes (dropout included), as in DML: one
        forward pass per peer serves as its prediction and as the others' target.
        """
        return [
            self.forward(peer, batch.inputs, taps, name)
            for peer, taps, name in zip(self.peers, self._taps, self.names, strict=True)
        ]

    def peer_losses(self, outs: Sequence[ModelOutput], batch: Batch) -> list[LossOutput]:
        """Each peer's loss, averaged over the other peers as (detached) teachers."""
        targets = [out.detach() for out in outs]  # no gradient reaches a peer through a target
        losses = []
        for i, row in enumerate(self.objectives):
            pairs = [
                self.replica(o)(outs[i], targets[j], batch)
                for j, o in enumerate(row)
                if o is not None
            ]
            terms = {
                name: sum(p.terms[name] for p in pairs) / len(pairs) for name in pairs[0].terms
            }
            losses.append(LossOutput(sum(p.total for p in pairs) / len(pairs), terms))
        return losses

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        outs = self.peer_outputs(batch)
        # Every loss is formed before any peer steps: the updates are simultaneous.
        losses = self.peer_losses(outs, batch)
        for name, loss in zip(self.names, losses, strict=True):
            update(name, loss)
        return {
            f"{name}.acc": batch_accuracy(out.logits, batch.targets)
            for name, out in zip(self.names, outs, strict=True)
        }


PEER_ALIASES = ("student", "teacher")
#: More peers than this is a typo, not an experiment (each peer is a model trained in memory).
MAX_PEERS = 1000


class MutualOptions(Strict):
    """``distill.options`` of ``scheme: mutual``."""

    #: Number of peers, the student included, when ``peers`` is not given (copies of the student).
    k: int | None = Field(None, le=MAX_PEERS)
    #: The peers besides the student: model specs, ``student`` or ``teacher`` (see module doc).
    peers: list[Any] | None = Field(None, max_length=MAX_PEERS - 1)

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
        return check_model_specs(peers, "peers", PEER_ALIASES)

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
    runs: Sequence[RunInfo] | None = None,
    recorder: Recorder | None = None,
) -> list[RunResult]:
    """Train ``peers`` together by mutual learning; one run per peer (first: the joint run).

    ``runs`` gives each peer's role, name, seed and config (default: roles ``peer1`` …, seed
    0). The first peer's run holds the joint per-epoch history (every peer's terms, as
    ``peer<i>.<term>``, and the first peer's validation metrics); each other peer's run holds
    its own columns. Every peer is evaluated on test after the joint training.
    """
    scheme = MutualScheme(peers, loss)
    k = len(scheme.peers)
    runs = list(runs) if runs is not None else [RunInfo(n, f"{n} s0") for n in scheme.names]
    if len(runs) != k:
        raise ConfigError(f"give one RunInfo per peer: {k} peers, got {len(runs)}")
    for peer, name in zip(scheme.peers, scheme.names, strict=True):
        check_num_classes(peer, data, name)
    common = {"scheme": "mutual", "peers": k}
    first = fit(scheme, data, settings or TrainSettings(),
                runs[0].replace(config={**common, "peer": 1}), recorder)  # fmt: skip
    results = [first]
    for i in range(1, k):
        results.append(record_model(
            scheme.peers[i], data, runs[i].replace(config={**common, "peer": i + 1}), recorder,
            history=peer_history(first.history, scheme.names[i]),
        ))  # fmt: skip
    return results


def _build_peers(ctx: DistillContext, opts: MutualOptions) -> list[nn.Module]:
    """Peer 1 with the baseline's initial weights; each other peer built and checked, errors
    naming its entry of ``distill.options``."""
    peers = [ctx.new_student()]
    for position, spec in enumerate(opts.other_peers(), start=1):
        where = f"distill.options.peers[{position - 1}]" if opts.peers else "distill.options.k"
        build = lambda spec=spec, p=position, w=where: _peer(ctx, spec, p, w)  # noqa: E731
        peers.append(checked(build, ctx.data, f"peer{position + 1}", where))
    return peers


def _peer(ctx: DistillContext, spec: Any, position: int, where: str) -> nn.Module:
    if spec != "teacher":
        return ctx.build(None if spec == "student" else spec, position)
    peer = copy.deepcopy(require_teacher(ctx.teacher, f"{where} names 'teacher'"))
    peer.requires_grad_(True)  # trained weights; it keeps learning from here
    return peer


def mutual_models(ctx: DistillContext) -> tuple[list[nn.Module], list[nn.Module]]:
    """Preflight: every peer reads every other, as student and as teacher."""
    assert isinstance(ctx.options, MutualOptions)
    peers = _build_peers(ctx, ctx.options)
    return peers, peers


def run_mutual(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, MutualOptions)
    peers = _build_peers(ctx, opts)
    kinds = ["student", *(s if isinstance(s, str) else s.get("type", "mlp")
                          for s in opts.other_peers())]  # fmt: skip
    runs = [
        ctx.run("distilled" if i == 1 else f"peer{i}", f"mutual peer{i} ({kind}) s{ctx.seed}")
        for i, kind in enumerate(kinds, start=1)
    ]
    return mutual_learning(peers, ctx.data, ctx.loss or DML_LOSS, ctx.train, runs, ctx.recorder)


SCHEME = SchemeSpec(
    "mutual", run_mutual, MutualOptions, needs_teacher=False,
    summary="k peers learn together, each from the others (deep mutual learning)",
    models=mutual_models,
)  # fmt: skip

__all__ = [
    "DML_LOSS",
    "SCHEME",
    "MutualOptions",
    "MutualScheme",
    "PeerLoss",
    "mutual_learning",
    "peer_history",
]
