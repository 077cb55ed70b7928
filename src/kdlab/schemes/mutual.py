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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from kdlab.errors import ConfigError
from kdlab.losses.base import LossOutput, Objective, Term, build_objective
from kdlab.losses.tapped import prepare_terms
from kdlab.schemes.base import Scheme, Update, batch_accuracy
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

    def prepare(self, sample: Batch) -> None:
        # Terms with shape-dependent adapters build them now, one per ordered pair (peer i's
        # feature mapped to peer j's), so that peer i's optimizer includes them.
        for i, row in enumerate(self.objectives):
            for j, objective in enumerate(row):
                if objective is not None:
                    prepare_terms(objective, self.peers[i], self.peers[j], sample.inputs)

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
            pairs = [o(outs[i], targets[j], batch) for j, o in enumerate(row) if o is not None]
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


__all__ = ["DML_LOSS", "MutualScheme", "PeerLoss"]
