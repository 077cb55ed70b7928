"""The non-finite guard: training stops at a NaN/inf loss or gradient norm, naming the epoch,
the step, the run and the loss terms, with the last good checkpoint restored.

Checking a value on the host waits for the device. On a CPU that costs nothing, so every step
is checked before its update (``every == 1``). On a GPU a check per step would stall the
pipeline, so the values of ``every`` steps are kept on the device and checked together, one wait
per window: a bad step is then found up to ``every − 1`` steps late, after its update was applied
— which is why a stop always restores the last good checkpoint — and the error still names the
first bad step and its terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.errors import NonFiniteLossError
from kdlab.types import LossOutput


@dataclass
class _Seen:
    name: str
    what: str
    epoch: int
    step: int
    value: Tensor
    loss: LossOutput


class NonFiniteGuard:
    """Watches the losses (and clipped gradient norms) of one run."""

    def __init__(
        self, every: int, description: str, multi: bool, restore: Callable[[], str]
    ) -> None:
        self.every, self.description, self.multi = every, description, multi
        #: Restores the last good state and says what was kept (for the error message).
        self.restore = restore
        self._window: list[_Seen] = []

    def watch(
        self, name: str, what: str, value: Tensor, loss: LossOutput, at: tuple[int, int]
    ) -> None:
        """Check ``value`` now (every step) or with its window (see the module doc)."""
        seen = _Seen(name, what, at[0], at[1], value.detach(), loss)
        if self.every == 1:
            if not torch.isfinite(seen.value).all():
                self._stop(seen)
        else:
            terms = {k: v.detach() for k, v in loss.terms.items()}
            seen.loss = LossOutput(loss.total.detach(), terms)  # no graph kept alive
            self._window.append(seen)

    def end_step(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            self.flush()

    def flush(self) -> None:
        """Check every value kept since the last check with one wait for the device."""
        window, self._window = self._window, []
        if not window:
            return
        finite = torch.stack([torch.isfinite(s.value).all() for s in window])
        if not bool(finite.all()):
            self._stop(window[int((~finite).nonzero()[0])])

    def _stop(self, seen: _Seen) -> None:
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in seen.loss.terms.items())
        optimizer = f"optimizer {seen.name!r}; " if self.multi else ""
        raise NonFiniteLossError(
            f"non-finite {seen.what} at epoch {seen.epoch + 1}, step {seen.step + 1} while "
            f"training {self.description!r} ({optimizer}terms: {terms or 'none'}). Training "
            f"stopped; {self.restore()}. Try a lower learning rate, gradient clipping "
            "(clip_grad_norm), or check the inputs for NaN/inf."
        )


__all__ = ["NonFiniteGuard"]
