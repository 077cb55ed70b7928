"""Base of the terms that read intermediate features (taps) instead of, or besides, logits.

A :class:`FeatureTerm` names one student module and one teacher module by path (as in
``model.named_modules()``); the scheme captures their outputs with forward hooks during the
normal forward pass (:mod:`kdlab.taps`) and the term reads them from ``ModelOutput.features``.
It owns its adapter (:mod:`kdlab.losses.connectors`), built by :func:`prepare_terms` from one
sample batch before the optimizers exist, so the adapter is trained with the student.

Every subclass gets, for free: clear errors for missing/odd features, detached teacher
features (gradients reach only the student and the adapter), half-precision upcast, the
batch-size check of losses that compare samples within a batch, and lists of layer pairs:
``{type: at, student: [a, b], teacher: [x, y]}`` builds one copy of the term per pair, each
with its own adapter, and sums their values (:mod:`kdlab.losses.pairs`, as RepDistiller and
torchdistill do). A subclass whose ``student``/``teacher`` parameters take several layers by
design sets ``pairs_by_list = False`` (annotating them as anything but ``str | None`` also opts
out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError
from kdlab.inference import eval_forward
from kdlab.losses.base import Objective, Term
from kdlab.losses.connectors import Connector, Match, build_connector, check_adapter, shapes_fit
from kdlab.losses.pairs import is_path_list, layer_pairs, takes_single_paths
from kdlab.types import Batch, Inputs, ModelOutput


class FeatureTerm(Term):
    """A term comparing the student's feature at ``student`` with the teacher's at ``teacher``."""

    #: Which axes of the adapted student feature must equal the teacher's (see connectors).
    match: ClassVar[Match] = "all"
    #: Per-sample ranks the loss understands (e.g. (3,) for [C, H, W] maps); empty: any.
    ranks: ClassVar[tuple[int, ...]] = ()
    #: Smallest batch the loss is defined for (relation losses compare samples: ≥ 2).
    min_batch: ClassVar[int] = 1
    #: Whether lists ``student: [a, b]``, ``teacher: [x, y]`` mean one copy of the term per pair
    #: (summed). Terms that read several layers by design set False and take the lists themselves.
    pairs_by_list: ClassVar[bool] = True

    @classmethod
    def build_expanded(cls, spec: Mapping[str, Any]) -> Term | None:
        """One copy of the term per (student, teacher) pair when the spec lists several."""
        paths = (spec.get("student"), spec.get("teacher"))
        if cls.pairs_by_list and any(map(is_path_list, paths)) and takes_single_paths(cls):
            return layer_pairs(cls.kind, spec)
        return None

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        for role, path in (("student", student), ("teacher", teacher)):
            if not isinstance(path, str) or not path:
                raise ConfigError(
                    f"loss {self.kind!r} needs the {role}'s module path as `{role}:` (a name from "
                    f"model.named_modules()), e.g. {{type: {self.kind}, student: features.1, "
                    f"teacher: features.1}}; got {path!r}"
                )
        self.student_taps = (str(student),)
        self.teacher_taps = (str(teacher),)
        self.adapter = check_adapter(adapter)
        self.adapter_bn = bool(adapter_bn)
        self.connector: Connector | None = None
        self._built_for: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def student_path(self) -> str:
        return self.student_taps[0]

    @property
    def teacher_path(self) -> str:
        return self.teacher_taps[0]

    def adapter_match(self) -> Match:
        """Which axes the adapter must make agree; ``match`` unless an option changes it (e.g.
        ``at`` with ``resize: pool_larger`` pools the teacher instead)."""
        return self.match

    def _where(self) -> str:
        return (
            f"loss term {self.name!r} ({self.kind}, student {self.student_path!r} → teacher "
            f"{self.teacher_path!r}): "
        )

    # -- adapter ---------------------------------------------------------------------------------

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Build the adapter from one batch of features (call before building optimizers)."""
        s = self._read(student, self.student_path, "student")
        t = self._read(self._teacher(teacher), self.teacher_path, "teacher")
        self._build(s, t)

    def _build(self, s: Tensor, t: Tensor) -> Connector:
        s_shape, t_shape = tuple(s.shape[1:]), tuple(t.shape[1:])
        if self.ranks and (len(s_shape) not in self.ranks or len(t_shape) not in self.ranks):
            raise ConfigError(
                f"{self._where()}this loss needs per-sample features of rank "
                f"{' or '.join(map(str, self.ranks))} (e.g. [channels, height, width] maps), got "
                f"student {s_shape} and teacher {t_shape}; tap convolutional blocks"
            )
        connector = build_connector(
            self.adapter, s_shape, t_shape, self.adapter_match(),
            batch_norm=self.adapter_bn, where=self._where(),
        )  # fmt: skip
        self.connector = connector.to(device=s.device, dtype=s.dtype)
        self._built_for = (s_shape, t_shape)
        return self.connector

    # -- reading features ------------------------------------------------------------------------

    def _read(self, out: ModelOutput, path: str, role: str) -> Tensor:
        value = captured(out, path, role, self._where())
        if not isinstance(value, Tensor) or value.dim() < 2:
            what = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(
                f"{self._where()}the {role}'s module {path!r} outputs {what}; feature losses need "
                "a tensor [batch, ...]: tap a module that returns one"
            )
        return at_least_float32(value)

    def features(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[Tensor, Tensor]:
        """(adapted student feature, detached teacher feature), shape-checked."""
        s = self._read(student, self.student_path, "student")
        t = self._read(self._teacher(teacher), self.teacher_path, "teacher").detach()
        if s.shape[0] != t.shape[0]:
            raise ConfigError(
                f"{self._where()}student batch {s.shape[0]} and teacher batch {t.shape[0]} "
                "differ; both models must see the same inputs"
            )
        if s.shape[0] < self.min_batch:
            raise ConfigError(
                f"{self._where()}this loss compares samples within a batch and needs at least "
                f"{self.min_batch} per batch, got {s.shape[0]}; use batch_size ≥ "
                f"{self.min_batch} and make sure the last batch of an epoch is not smaller "
                f"(training-set size modulo batch_size must be 0 or ≥ {self.min_batch})"
            )
        shapes = (tuple(s.shape[1:]), tuple(t.shape[1:]))
        connector = self.connector
        if connector is None:
            connector = self._build(s.detach(), t)
            if any(True for _ in connector.parameters()):
                self.connector = None
                raise ConfigError(
                    f"{self._where()}features {shapes[0]} and {shapes[1]} need a trainable "
                    "adapter, which must exist before the optimizer is built: call "
                    "kdlab.losses.feature.prepare_terms (kdlab's schemes do it in prepare())"
                )
        elif shapes != self._built_for:
            built_s, built_t = self._built_for or ((), ())
            raise ConfigError(
                f"{self._where()}the adapter was built for student {built_s} and teacher "
                f"{built_t} features, but this batch has {shapes[0]} and {shapes[1]}; inputs "
                "of one run must all have the same size"
            )
        s = connector(s)
        if not shapes_fit(s.shape[1:], t.shape[1:], self.adapter_match()):  # a bug, not the user's
            raise RuntimeError(f"{self._where()}adapter produced {tuple(s.shape[1:])}")
        return s, t.to(s.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, student={self.student_path!r}, "
            f"teacher={self.teacher_path!r}, adapter={self.adapter}"
        )


def captured(out: ModelOutput, path: str, role: str, where: str = "") -> object:
    """What module ``path`` output in ``out`` (any type; callers check it), or a clear error
    when the forward pass did not capture it. ``where`` prefixes the message (which term)."""
    if path not in out.features:
        raise ConfigError(
            f"{where}the {role}'s output of module {path!r} was not captured: either the module "
            f"did not run in the {role}'s forward pass (is it used in forward()?) or the scheme "
            "did not tap it (schemes tap objective.student_taps/teacher_taps)"
        )
    return out.features[path]


@torch.no_grad()
def prepare_terms(
    objective: Objective, student: nn.Module, teacher: nn.Module | None, sample: Batch | Inputs
) -> None:
    """Let every active term with a ``prepare(student_out, teacher_out, sample)`` method build
    its shape-dependent parameters (adapters) from one forward pass of both models on the sample
    batch (or bare inputs). The sample batch also tells terms the training-set size and the
    number of epochs (``Batch.train_size``, ``Batch.epochs``) where the engine knows them.

    Schemes call this from ``Scheme.prepare``, before the engine builds the optimizers.
    """
    batch = sample if isinstance(sample, Batch) else None
    inputs = sample.inputs if isinstance(sample, Batch) else sample
    terms = [t for t in objective.terms if t.weight > 0 and callable(getattr(t, "prepare", None))]
    if not terms:
        return
    s_out = eval_forward(student, inputs, objective.student_taps, "student")
    t_out = None
    if teacher is not None:
        t_out = eval_forward(teacher, inputs, objective.teacher_taps, "teacher")
    for term in terms:
        term.prepare(s_out, t_out, batch)  # type: ignore[operator]


def flat(x: Tensor) -> Tensor:
    """Per-sample vectors [batch, features] of any feature tensor."""
    return x.reshape(x.shape[0], -1)


__all__ = ["FeatureTerm", "captured", "flat", "prepare_terms"]
