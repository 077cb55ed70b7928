"""Running a model: calling it on any inputs, reading its logits from any output, logits of a
whole split, and forward passes with taps.

Shared by the engine (validation), the runs layer (test metrics and the class-count check),
schemes (teacher and student passes, the teacher cache), the ensemble teacher and loss terms (one
eval-mode pass to size their adapters), so that every caller calls a model, reads its output,
restores its mode and removes its hooks the same way.

Models return logits in many shapes: a tensor, a tuple or list (torchvision's Inception,
models that also return features), a dict, or a Hugging Face ``ModelOutput``. :func:`model_output`
is the one place that reads them, guided by the model's :class:`OutputSelection` — an attribute
that :func:`select_output` sets (``kdlab.models.build_model`` from a spec's ``output_index`` /
``output_key``), so the selection travels with the model through every scheme, copy and
``torch.compile``, and its parameters, module paths and ``state_dict`` keys stay as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kdlab.devices import module_device
from kdlab.errors import ConfigError, quote
from kdlab.taps import capture
from kdlab.types import Inputs, ModelOutput


def forward_with_taps(
    model: nn.Module,
    inputs: Inputs,
    taps: Sequence[str] = (),
    role: str = "model",
    runner: nn.Module | None = None,
) -> ModelOutput:
    """Run ``model`` and capture the outputs of the modules at ``taps`` (by path); ``runner``
    (e.g. the model's DistributedDataParallel wrapper) makes the call instead of the model.
    The logits are read from ``model``'s output as :func:`model_output` reads them."""
    call = runner if runner is not None else model
    if not taps:
        return model_output(model, call_model(call, inputs), role)
    with capture(model, taps, role) as features:
        out = model_output(model, call_model(call, inputs), role)
    out.features.update(features)
    return out


def eval_forward(
    model: nn.Module, inputs: Inputs, taps: Sequence[str] = (), role: str = "model"
) -> ModelOutput:
    """:func:`forward_with_taps` in eval mode (BatchNorm statistics untouched), restoring every
    module's own mode afterwards (a partly frozen model keeps its mix of modes)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return forward_with_taps(model, inputs, taps, role)
    finally:
        for module, flag in modes:
            module.training = flag


class Examples(Protocol):
    """A split that hands out model inputs by rows (kdlab.data.ArrayDataset)."""

    def __len__(self) -> int: ...

    def inputs(self, index: slice) -> Inputs: ...


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(inputs)``, or ``model(**inputs)`` for keyword inputs (token ids, masks, ...)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def describe_inputs(inputs: Inputs) -> str:
    """The shape of one example, for messages: ``(1, 8, 8)`` or ``{input_ids: (16,), ...}``."""
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape[1:])}" for k, v in inputs.items()) + "}"
    return str(tuple(inputs.shape[1:]))


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: Inputs | Examples, batch_size: int = 1024, role: str = "model"
) -> Tensor:
    """Logits of ``model`` on ``inputs`` (a tensor, a dict of keyword tensors, or a split's model
    inputs) in eval mode, batched on the model's device, returned on the CPU as float32;
    restores the previous mode."""
    was_training, device = model.training, module_device(model)
    rows, count = _rows(inputs)
    model.eval()
    try:
        chunks = []
        for i in range(0, count, batch_size):
            raw = call_model(model, to_device(rows(slice(i, i + batch_size)), device))
            chunks.append(model_output(model, raw, role).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def _rows(inputs: Inputs | Examples) -> tuple[Callable[[slice], Inputs], int]:
    """A function giving the model inputs of a slice of examples, and the number of examples."""
    if isinstance(inputs, Tensor):
        return inputs.__getitem__, len(inputs)
    if isinstance(inputs, dict):
        count = len(next(iter(inputs.values()))) if inputs else 0
        return (lambda part: {k: v[part] for k, v in inputs.items()}), count
    return inputs.inputs, len(inputs)


def batch_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy of one batch, as a 0-d tensor on the batch's device: the engine sums it
    there and reads it once per progress update, not at every step."""
    return (logits.detach().argmax(-1) == targets).float().mean()


# -- reading logits from a model's output ----------------------------------------------------------

#: The model attribute holding its :class:`OutputSelection`: a plain attribute, so it is no
#: parameter or buffer, leaves ``state_dict`` alone and is kept by ``copy.deepcopy``.
SELECTION_ATTRIBUTE = "kdlab_output_selection"


@dataclass(frozen=True)
class OutputSelection:
    """Where a model's logits are in its output.

    ``index``: a position in a tuple or list (or in a dict's values, in order); ``key``: a dict
    key or an attribute name (a Hugging Face ``ModelOutput`` is both). Neither: a tensor output
    itself, a tuple's or list's first element, or the ``logits`` key or attribute.
    """

    index: int | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        index, key = self.index, self.key
        bad_index = isinstance(index, bool) or not isinstance(index, int) or index < 0
        if index is not None and bad_index:
            raise ConfigError(
                f"output_index must be an integer ≥ 0 (the position of the logits in the model's "
                f"tuple or list output), got {quote(index)}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(
                "output_key must be a non-empty string (the dict key or attribute that holds "
                f"the logits), got {quote(key)}"
            )
        if index is not None and key is not None:
            raise ConfigError(
                "set output_index or output_key, not both: output_index picks the logits from a "
                "tuple or list output, output_key from a dict or an object's attributes"
            )

    def __str__(self) -> str:
        if self.index is not None:
            return f"output_index {self.index}"
        return f"output_key {self.key!r}" if self.key is not None else "the default output"


def select_output(
    model: nn.Module, *, key: str | None = None, index: int | None = None
) -> nn.Module:
    """Tell kdlab where ``model``'s logits are in its output; returns ``model`` itself.

    ``select_output(model, key="logits")`` for a dict or an object with attributes,
    ``select_output(model, index=1)`` for a tuple or list; with neither, the default again.
    What a YAML model spec's ``output_key`` / ``output_index`` do.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"select_output takes an nn.Module, got {type(model).__name__}")
    # nn.Module.__setattr__ keeps a non-tensor value as a plain attribute (no parameter).
    setattr(model, SELECTION_ATTRIBUTE, OutputSelection(index, key))
    return model


def output_selection(model: nn.Module) -> OutputSelection:
    """``model``'s :class:`OutputSelection` (the default when none was set)."""
    found = getattr(model, SELECTION_ATTRIBUTE, None)
    return found if isinstance(found, OutputSelection) else _DEFAULT


_DEFAULT = OutputSelection()


def model_output(model: nn.Module, raw: object, role: str = "model") -> ModelOutput:
    """The logits in ``raw`` — what ``model`` returned — as a :class:`~kdlab.types.ModelOutput`.

    Every place kdlab reads a model's output calls this: training and validation passes,
    test metrics, the class-count check, the teacher cache and the ensemble teacher. ``raw``
    may be a tensor, a tuple or list, a dict, or an object with attributes (a Hugging Face
    ``ModelOutput``); the model's :class:`OutputSelection` says where the logits are. Anything
    else, or a selection that does not fit, is a one-line ConfigError naming the fix.
    """
    if isinstance(raw, ModelOutput):  # already kdlab's (e.g. a model that taps itself)
        return raw
    # A tensor is the logits whatever the selection: some models (torchvision's Inception)
    # return a tuple in training and a tensor in eval mode.
    if isinstance(raw, Tensor):
        return ModelOutput(raw)
    selection, who = output_selection(model), f"the {role}"
    entries = _entries(raw)
    if entries is None:
        raise ConfigError(
            f"{who} returns {_kind(raw)}; a model must return logits [batch, classes]: a tensor, "
            "a tuple or list, a dict, or an object with a 'logits' attribute"
        )
    place, value = _pick(raw, entries, selection, who)
    if not isinstance(value, Tensor):
        tensors = [_option(i, name) for i, (name, v) in enumerate(entries) if isinstance(v, Tensor)]
        fix = f"set {' or '.join(tensors[:4])}{_WHERE}" if tensors else "return a logits tensor"
        raise ConfigError(f"{who}'s {place} is {_kind(value)}, not a logits tensor; {fix}")
    return ModelOutput(value)


#: Where a user sets a selection, appended to the messages that ask for one.
_WHERE = " (a model spec key, or kdlab.models.select_output in Python)"


def _entries(raw: object) -> list[tuple[str | None, object]] | None:
    """(name, value) of each part of an output, in order; names are None for a plain tuple or
    list. None: not a container kdlab can read."""
    if isinstance(raw, Mapping):  # dicts, and Hugging Face ModelOutputs (an OrderedDict)
        return [(str(k), v) for k, v in raw.items()]
    if isinstance(raw, (tuple, list)):
        names = getattr(raw, "_fields", None)  # a namedtuple's parts have names too
        return [(names[i] if names else None, v) for i, v in enumerate(raw)]
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return [(f.name, getattr(raw, f.name)) for f in dataclasses.fields(raw)]
    public = {k: v for k, v in getattr(raw, "__dict__", {}).items() if not k.startswith("_")}
    return list(public.items()) or None


def _pick(
    raw: object, entries: list[tuple[str | None, object]], selection: OutputSelection, who: str
) -> tuple[str, object]:
    """(where, value) of the selected part; a selection that does not fit is a ConfigError."""
    names = [name for name, _ in entries if name is not None]
    if selection.index is not None:
        if selection.index >= len(entries):
            last = f"0…{len(entries) - 1}" if entries else "nothing: it is empty"
            raise ConfigError(
                f"output_index {selection.index} is out of range: {who} returns a "
                f"{type(raw).__name__} of {len(entries)}; set output_index to {last}{_WHERE}"
            )
        return f"output {selection.index}", entries[selection.index][1]
    if selection.key is None and "logits" not in names:
        if isinstance(raw, (tuple, list)):  # by convention the logits come first
            return "output 0", entries[0][1] if entries else None
        raise ConfigError(
            f"{who} returns {_kind(raw)} without 'logits' (it has {_listing(names)}); set "
            f"output_key to the one that holds the logits{_WHERE}"
        )
    key = selection.key or "logits"
    if not names:
        raise ConfigError(
            f"{who} returns {_kind(raw)}, whose parts have no names, but output_key {key!r} is "
            f"set; pick the logits by position with output_index instead{_WHERE}"
        )
    if key not in names:
        raise ConfigError(
            f"{who} produces no output {key!r}; it produces {_listing(names)}: set output_key "
            f"to the one that holds the logits{_WHERE}"
        )
    return f"output {key!r}", next(v for name, v in entries if name == key)


def _option(index: int, name: str | None) -> str:
    """How a user selects one part: ``output_key: 'x'`` where parts have names, else by index."""
    return f"output_key: {name!r}" if name is not None else f"output_index: {index}"


def _listing(names: Sequence[str]) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(repr(n) for n in names[:12])
    return shown + (f" (and {len(names) - 12} more)" if len(names) > 12 else "")


def _kind(value: object) -> str:
    """``a tuple of 2``, ``a dict``, ``an int``, ``None``: what a model returned, for messages."""
    name = type(value).__name__
    if isinstance(value, (tuple, list)):
        return f"a {name} of {len(value)}"
    return "None" if value is None else f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


__all__ = [
    "SELECTION_ATTRIBUTE",
    "Examples",
    "OutputSelection",
    "batch_accuracy",
    "call_model",
    "describe_inputs",
    "eval_forward",
    "forward_with_taps",
    "model_output",
    "output_selection",
    "predict_logits",
    "select_output",
    "to_device",
]
