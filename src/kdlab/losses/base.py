"""Loss terms: named, weighted pieces of an experiment's loss.

A ``Term`` is a small ``nn.Module`` (so it may own parameters, e.g. a hint regressor) that maps
what it reads — the student's output, the teacher's output, the batch — to a scalar. An
``Objective`` sums its terms with their weights and reports each term's value under its name, so
logging and ablations need no extra code. Schemes decide which models play "student" and
"teacher" for each objective; terms never know about schemes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError, did_you_mean, quote, shorten
from kdlab.types import Batch, LossOutput, ModelOutput


class Term(nn.Module):
    """Base class of every loss term. Subclasses set ``kind`` and implement ``forward``."""

    kind: ClassVar[str] = ""
    #: False for terms that only read labels (cross-entropy); schemes may then skip the teacher.
    needs_teacher: ClassVar[bool] = True
    #: Module paths whose outputs this term reads from ``student.features`` / ``teacher.features``
    #: (captured by forward hooks, see kdlab.taps). Instances set these from their config.
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        if name is not None and (not isinstance(name, str) or not 0 < len(name.strip()) <= 100):
            raise ConfigError(
                f"loss term {self.kind!r}: name must be a short text like 'kd' (at most 100 "
                f"characters), got {quote(name)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, Real):
            raise ConfigError(
                f"loss term {quote(name or self.kind)}: weight must be a number ≥ 0, "
                f"got {quote(weight)}"
            )
        weight = math.inf if abs(weight) > 1e300 else float(weight)  # NaN stays NaN
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"loss term {quote(name or self.kind)}: weight must be a finite number ≥ 0, "
                f"got {weight}; "
                "a term's sign is part of its definition, so use a positive weight"
            )
        self.weight = weight
        self.name = name or self.kind

    def forward(  # pragma: no cover - abstract
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> Tensor:
        raise NotImplementedError

    @classmethod
    def build_expanded(cls, spec: Mapping[str, Any]) -> Term | None:
        """A term for ``spec`` (config parameters, ``type`` removed) that this class's
        constructor cannot take as it is — e.g. lists of layer pairs given to a single-pair
        feature term (see :mod:`kdlab.losses.pairs`) — or None: build ``cls(**spec)`` as usual.
        Called by :func:`build_term` once the parameter names are known to be valid."""
        return None

    def check_run(self, train_size: int, epochs: int) -> None:
        """Refuse, before any training, a run this term cannot serve (ConfigError): e.g. DKD's
        warm-up longer than ``epochs``, CRD's negatives outnumbering ``train_size``. 0: unknown."""

    def _teacher(self, teacher: ModelOutput | None) -> ModelOutput:
        if teacher is None:
            raise ConfigError(
                f"loss term {self.name!r} ({self.kind}) needs a teacher, but this stage has none; "
                "use it only in a distillation stage, or drop it from the loss"
            )
        return teacher

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"


class Objective(nn.Module):
    """A weighted sum of terms: total = Σ_k weight_k · term_k(student, teacher, batch)."""

    def __init__(self, terms: Iterable[Term]) -> None:
        super().__init__()
        terms = list(terms)
        if not terms:
            raise ConfigError("a loss needs at least one term, e.g. [{type: ce}]")
        taken: set[str] = set()
        for term in terms:  # give repeated names distinct suffixes: kd, kd_2, kd_3, ...
            base, k = term.name, 1
            while term.name in taken:
                k += 1
                term.name = f"{base}_{k}"
            taken.add(term.name)
        self.terms = nn.ModuleList(terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher and t.weight > 0 for t in self.terms)

    @property
    def student_taps(self) -> tuple[str, ...]:
        """Every student module path some active term reads (in first-use order)."""
        return tuple(dict.fromkeys(p for t in self.terms if t.weight > 0 for p in t.student_taps))

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for t in self.terms if t.weight > 0 for p in t.teacher_taps))

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> LossOutput:
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.terms:
            if term.weight == 0:
                continue
            value = term(student, teacher, batch)
            values[term.name] = value
            total = term.weight * value if total is None else total + term.weight * value
        if total is None:
            total = (
                student.logits.sum() * 0.0
            )  # every weight is 0: a zero loss that keeps the graph
        return LossOutput(total, values)


TERMS: dict[str, type[Term]] = {}


def register_term(cls: type[Term]) -> type[Term]:
    """Class decorator: make a term buildable by its ``kind`` from configs."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} must set a non-empty `kind`")
    TERMS[cls.kind] = cls
    return cls


def term_parameters(kind: str) -> list[str]:
    """Names a term of this kind accepts in a config (besides ``type``)."""
    sig = inspect.signature(TERMS[kind].__init__)
    return [p for p in sig.parameters if p != "self"]


def build_term(spec: Mapping[str, Any]) -> Term:
    """Build a term from ``{"type": kind, **params}``; errors name the bad kind or parameter."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if not isinstance(kind, str) or kind not in TERMS:
        what = (
            "a loss term needs a type, e.g. {type: ce}"
            if kind is None
            else f"unknown loss {quote(kind)}{did_you_mean(kind, TERMS, n=3)}"
        )
        raise ConfigError(f"{what}; valid losses: {', '.join(sorted(TERMS))}")
    allowed = term_parameters(kind)
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        raise ConfigError(
            f"loss {kind!r} has no parameter {', '.join(map(quote, unknown))}"
            f"{did_you_mean(unknown[0], allowed)}; valid parameters: {', '.join(allowed)}"
        )
    expanded = TERMS[kind].build_expanded(spec)
    if expanded is not None:
        return expanded
    _check_types(kind, spec)
    try:
        return TERMS[kind](**spec)
    except ConfigError as err:  # the term's own check: say which loss it is, once
        if str(err).startswith("loss "):
            raise
        raise ConfigError(f"loss {kind!r}: {err}") from None
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError) as err:
        # a value of the wrong kind, e.g. temperature: [4]; the message is the term's own
        raise ConfigError(f"loss {kind!r}: {shorten(str(err), 300)}") from err


#: Annotation → (accepted types, what to call them).
_SIMPLE_TYPES: dict[str, tuple[type, str]] = {
    "float": (Real, "a number"), "int": (int, "an integer"), "str": (str, "a text"),
    "bool": (bool, "true or false"),
}  # fmt: skip


def _check_types(kind: str, spec: Mapping[str, Any]) -> None:
    """A parameter annotated as a plain number or text must get one (YAML gives any value)."""
    params = inspect.signature(TERMS[kind].__init__).parameters
    for key, value in spec.items():
        annotation = str(params[key].annotation).replace(" ", "")
        optional = annotation.endswith("|None")
        base = annotation.removesuffix("|None")
        if base not in _SIMPLE_TYPES or (optional and value is None):
            continue
        accepted, what = _SIMPLE_TYPES[base]
        wrong = isinstance(value, bool) != (base == "bool") or not isinstance(value, accepted)
        if wrong or (isinstance(value, int) and abs(value) > 1e300):  # too big for a float
            none = " or null" if optional else ""
            raise ConfigError(f"loss {kind!r}: {key} must be {what}{none}, got {quote(value)}")


def build_objective(specs: Iterable[Mapping[str, Any] | Term]) -> Objective:
    return Objective(s if isinstance(s, Term) else build_term(s) for s in specs)


def check_reduction(reduction: str, allowed: Sequence[str], meaning: str = "") -> str:
    """``reduction`` when it is one of ``allowed``, else a ConfigError that lists them (and
    ``meaning``: what the choices are, for the term's message)."""
    if reduction not in allowed:
        said = f" ({meaning})" if meaning else ""
        raise ConfigError(
            f"reduction must be one of {', '.join(allowed)}{said}, got {quote(reduction)}"
        )
    return reduction


def temperature_softmax(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T), computed in float32 or wider."""
    return torch.log_softmax(at_least_float32(logits) / temperature, dim=-1)


def check_loss_specs(specs: Any, what: str = "the loss") -> list[dict[str, Any]]:
    """Check a config's list of term specs by building each once; errors name the term."""
    if not specs:
        raise ConfigError(f"{what} needs at least one term, e.g. [{{type: ce}}]")
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"term {i} must be a mapping like {{type: ce, weight: 1}}, got {quote(spec)}"
            )
        try:
            build_term(spec)
        except ConfigError as err:
            raise ConfigError(f"term {i}: {err}") from None
    return list(specs)


def check_batch_sizes(objective: Objective, n_train: int, batch_size: int) -> None:
    """Fail before training when a term that compares samples would meet a too-small batch.

    Relation losses need ≥ 2 samples per batch (RKD angle ≥ 3), including the last, partial
    batch of each epoch (``n_train % batch_size`` samples).
    """
    active = [t for t in objective.terms if t.weight > 0 and getattr(t, "min_batch", 1) > 1]
    if not active:
        return
    need = max(getattr(t, "min_batch", 1) for t in active)
    names = ", ".join(repr(t.name) for t in active)
    if n_train < need or batch_size < need:
        raise ConfigError(
            f"loss terms {names} compare samples within a batch and need ≥ {need} per batch, but "
            f"batch_size is {batch_size} with {n_train} training examples; use batch_size ≥ {need}"
        )
    rest = n_train % batch_size
    if 0 < rest < need:
        fits = [
            b
            for b in range(batch_size - 1, need - 1, -1)
            if n_train % b == 0 or n_train % b >= need
        ]
        hint = f", e.g. {fits[0]}" if fits else ""
        raise ConfigError(
            f"loss terms {names} need ≥ {need} samples per batch, but with {n_train} training "
            f"examples and batch_size {batch_size} the last batch of every epoch holds {rest}; "
            f"choose a batch_size that leaves no such remainder{hint}"
        )
