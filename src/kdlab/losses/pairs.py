"""Lists of layer pairs: one feature term applied to several (student, teacher) pairs at once.

``{type: at, student: [features.0, features.1], teacher: [features.0, features.1]}`` builds one
copy of the term per pair — each with its own adapter, built from its own shapes — and the term's
value is the SUM over pairs, Σ_k L(s_k, t_k), as RepDistiller (``sum(loss_group)`` for AT, FSP,
…) and torchdistill (a weighted sum of per-pair losses) do; the spec's ``weight`` multiplies that
sum. Every other parameter applies to every pair. Logged under one name (the term's kind unless
``name`` is set); each copy keeps its own name, ``<name>[k]``, in error messages.

Only terms that compare one student layer with one teacher layer are expanded this way (see
``FeatureTerm.pairs_by_list``); terms that read several layers by design take the lists whole.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.losses.base import Term, build_term
from kdlab.types import Batch, ModelOutput


def is_path_list(value: Any) -> bool:
    """Whether a ``student``/``teacher`` config value lists several paths."""
    return isinstance(value, (list, tuple))


def takes_single_paths(cls: type) -> bool:
    """Whether ``cls.__init__`` annotates ``student`` and ``teacher`` as one path (``str``)."""
    params = inspect.signature(cls.__init__).parameters
    for role in ("student", "teacher"):
        annotation = str(params[role].annotation) if role in params else ""
        if annotation.replace(" ", "") not in ("str", "str|None", "Optional[str]"):
            return False
    return True


class LayerPairs(Term):
    """Σ_k term_k(student, teacher, batch) over copies of one term, one per layer pair."""

    kind = "layer_pairs"

    def __init__(self, terms: Sequence[Term], weight: float = 1.0, name: str | None = None):
        terms = list(terms)
        if not terms:
            raise ConfigError("a list of layer pairs needs at least one pair")
        super().__init__(weight, name or terms[0].kind)
        self.pairs = nn.ModuleList(terms)
        self.student_taps = tuple(dict.fromkeys(p for t in terms for p in t.student_taps))
        self.teacher_taps = tuple(dict.fromkeys(p for t in terms for p in t.teacher_taps))
        #: the largest batch any pair needs (read by check_batch_sizes)
        self.min_batch = max(int(getattr(t, "min_batch", 1)) for t in terms)

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Let each pair build its own adapter from its own shapes."""
        for term in self.pairs:
            prepare = getattr(term, "prepare", None)
            if callable(prepare):
                prepare(student, teacher, sample)

    def check_run(self, train_size: int, epochs: int) -> None:
        for term in self.pairs:
            term.check_run(train_size, epochs)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        values = [term(student, teacher, batch) for term in self.pairs]
        return torch.stack(values).sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pairs={len(self.pairs)}"


def layer_pairs(kind: str, spec: Mapping[str, Any]) -> LayerPairs:
    """A :class:`LayerPairs` of ``kind`` from a spec whose ``student``/``teacher`` are lists."""
    students, teachers = spec.get("student"), spec.get("teacher")
    if not (is_path_list(students) and is_path_list(teachers)):
        raise ConfigError(
            f"loss {kind!r}: student and teacher must both be single module paths or both "
            f"lists of equal length (one pair per position), got student {quote(students)} and "
            f"teacher {quote(teachers)}; e.g. student: [features.0, features.1], "
            "teacher: [features.0, features.1]"
        )
    if len(students) != len(teachers) or not students:
        raise ConfigError(
            f"loss {kind!r}: student lists {len(students)} layers and teacher {len(teachers)}; "
            "give both the same number (at least one), pair k being student[k] → teacher[k]"
        )
    if any(map(is_path_list, (*students, *teachers))):
        raise ConfigError(
            f"loss {kind!r}: student and teacher list module paths, not lists of lists; got "
            f"student {quote(students)} and teacher {quote(teachers)}"
        )
    shared = {k: v for k, v in spec.items() if k not in ("student", "teacher", "weight", "name")}
    name = spec.get("name")
    label = name if isinstance(name, str) else kind  # a bad name fails in LayerPairs below
    terms = [
        build_term({"type": kind, **shared, "student": s, "teacher": t, "name": f"{label}[{k}]"})
        for k, (s, t) in enumerate(zip(students, teachers, strict=True))
    ]
    return LayerPairs(terms, spec.get("weight", 1.0), name)


__all__ = ["LayerPairs", "is_path_list", "layer_pairs", "takes_single_paths"]
