"""Capture intermediate outputs of any model by module path, with forward hooks.

Users never rewrite a model to expose features: a loss term names the modules it needs
(paths as in ``model.named_modules()``, e.g. ``features.1`` or ``layer3.0.conv2``), and the
scheme captures their outputs during the normal forward pass. Hooks live only for that pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from kdlab.errors import ConfigError, ranked


def resolve_modules(
    model: nn.Module, paths: Iterable[str], role: str = "model"
) -> dict[str, nn.Module]:
    """Map each path to its submodule; an unknown path is an error listing the real ones."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for path in paths:
        if path not in modules:
            listing = ranked(path, [n for n in modules if n], limit=20)
            raise ConfigError(
                f"the {role} ({type(model).__name__}) has no module {path!r}; its module paths, "
                f"closest first: {listing}"
            )
        found[path] = modules[path]
    return found


@contextmanager
def capture(
    model: nn.Module, paths: Iterable[str], role: str = "model"
) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward pass of ``model`` stores the named modules' outputs.

    Yields a dict filled as the forward pass runs (path → output; a tuple output keeps its
    first element; a module called twice in one pass keeps its last output). The hooks are
    removed on exit, also when the forward pass raises.
    """
    features: dict[str, Tensor] = {}
    handles = []

    def hook_for(path: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            value = output[0] if isinstance(output, (tuple, list)) else output
            # Copy: a later in-place op (e.g. ReLU(inplace=True) after a tapped BatchNorm, as in
            # torchvision's ResNets) would otherwise overwrite the captured values silently.
            # clone() is differentiable, so gradients still reach the student.
            features[path] = value.clone() if isinstance(value, Tensor) else value

        return hook

    try:
        for path, module in resolve_modules(model, paths, role).items():
            handles.append(module.register_forward_hook(hook_for(path)))
        yield features
    finally:
        for handle in handles:
            handle.remove()
