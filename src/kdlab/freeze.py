"""Train only part of a model: freeze every parameter outside a list of module paths.

Freezing is ``requires_grad = False``: schemes hand optimizers only parameters that require
grad, and autograd computes no gradients for the rest. A frozen part must also stay *unchanged*,
so schemes keep it in eval mode while training (:func:`hold_frozen_in_eval`) — otherwise its
BatchNorm running statistics would still drift and its dropout would still fire.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from kdlab.errors import ConfigError
from kdlab.taps import resolve_modules


@contextmanager
def train_only(
    model: nn.Module, paths: Sequence[str] | str, role: str = "student"
) -> Iterator[list[str]]:
    """Within the block only the parameters under ``paths`` (module paths, or ``"all"``) train.

    Yields the trainable parameter names. Unknown paths are errors listing the model's module
    paths. Every parameter's previous ``requires_grad`` is restored on exit.
    """
    if paths == "all":
        yield [n for n, p in model.named_parameters() if p.requires_grad]
        return
    if isinstance(paths, str) or not paths:
        raise ConfigError(
            f"trainable must be 'all' or a non-empty list of the {role}'s module paths, "
            f"got {paths!r}"
        )
    modules = resolve_modules(model, paths, role)
    keep = {id(p) for m in modules.values() for p in m.parameters()}
    if not keep:
        raise ConfigError(
            f"the {role}'s modules {list(paths)} have no parameters, so nothing would train; "
            "name modules with weights (e.g. features.0 rather than an activation)"
        )
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            if id(p) not in keep:
                p.requires_grad_(False)
        yield [n for n, p in model.named_parameters() if p.requires_grad]
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def hold_frozen_in_eval(model: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen (and its children) in eval mode.

    Modules without parameters of their own subtree (activations, pooling) are left alone;
    a frozen BatchNorm is caught through its own affine parameters or through its frozen parent
    block.
    """
    for module in _frozen_roots(model):
        module.eval()


def _frozen_roots(module: nn.Module) -> list[nn.Module]:
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        return [module]
    return [root for child in module.children() for root in _frozen_roots(child)]


@contextmanager
def no_param_grads(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* ``module`` to its input without touching its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


__all__ = ["hold_frozen_in_eval", "no_param_grads", "train_only"]
