"""The one training loop every scheme runs on.

It owns epochs, batches, optimizers and schedules, gradient clipping, evaluation, atomic and
resumable checkpoints, the progress bar and the non-finite guard. It knows nothing about
distillation: it trains anything that follows the small :class:`Trainable` protocol (kdlab's
schemes do), which computes the losses of a batch and hands each to ``update``.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab import distributed
from kdlab.data.base import ArrayDataset, TensorBatcher, on_device
from kdlab.data.stream import make_batcher
from kdlab.devices import autocast, check_precision, gradient_scaler, resolve_device
from kdlab.errors import KdlabError
from kdlab.guard import NonFiniteGuard
from kdlab.losses import Objective
from kdlab.metrics import accuracy, nll
from kdlab.optim import make_optimizer, make_scheduler
from kdlab.progress import TrainingProgress
from kdlab.seeding import rng_state, seed_everything, set_rng_state
from kdlab.settings import TrainSettings
from kdlab.types import Batch, LossOutput

EpochCallback = Callable[[dict[str, float]], None]
#: update(optimizer_name, loss) — zero_grad, backward, clip, step, with the non-finite guard.
Update = Callable[[str, LossOutput], None]


class Trainable(Protocol):
    """What the engine trains (kdlab.schemes.base.Scheme implements it for every scheme)."""

    def trainable(self) -> dict[str, nn.Module]:
        """Modules whose parameters change (saved in checkpoints), by name."""
        ...

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each optimizer, by optimizer name (the first is the main one)."""
        ...

    def prepare(self, sample: Batch) -> None:
        """Called once before the optimizers are built, with a few training samples."""
        ...

    def set_mode(self, training: bool) -> None:
        """Train or eval mode for every module (frozen ones always eval)."""
        ...

    def replicate(self, wrap: Callable[[nn.Module], nn.Module] | None) -> None:
        """Under DDP: run the forward passes of the trained modules through ``wrap(module)``
        (None: through the modules themselves again)."""
        ...

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        """Compute the losses of one batch, call ``update`` for each; return batch metrics."""
        ...

    def eval_model(self) -> nn.Module:
        """The model validated during training and kept (``keep_best``) as the result."""
        ...

    def predict(self, data: ArrayDataset) -> torch.Tensor:
        """Logits of ``eval_model`` on a whole split, in eval mode."""
        ...


class Engine:
    """Trains a scheme's models: ``Engine(settings).fit(scheme, train, val)``."""

    def __init__(
        self,
        settings: TrainSettings | None = None,
        *,
        seed: int = 0,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
        description: str = "train",
        callbacks: Iterable[EpochCallback] = (),
        on_checkpoint: Callable[[Path], None] | None = None,
    ) -> None:
        self.settings = settings or TrainSettings()
        self.seed = seed
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress
        self.description = description
        self.callbacks = list(callbacks)
        #: Called with each new checkpoint's complete temporary file just before it replaces the
        #: previous one (the run store records its hash, so a kill in between loses nothing).
        self.on_checkpoint = on_checkpoint
        self.history: list[dict[str, float]] = []

    # -- public ---------------------------------------------------------------------------------

    def fit(
        self,
        scheme: Trainable,
        train: ArrayDataset,
        val: ArrayDataset | None = None,
        *,
        resume: bool = False,
    ) -> list[dict[str, float]]:
        """Train for ``settings.epochs`` epochs; returns the per-epoch history."""
        s = self.settings
        previous_determinism = torch.are_deterministic_algorithms_enabled()
        previous_threads = torch.get_num_threads()
        seed_everything(self.seed, s.deterministic)
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        try:
            return self._fit(scheme, train, val, resume)
        finally:
            torch.use_deterministic_algorithms(previous_determinism)
            torch.set_num_threads(previous_threads)

    # -- loop -----------------------------------------------------------------------------------

    def _fit(
        self, scheme: Trainable, train: ArrayDataset, val: ArrayDataset | None, resume: bool
    ) -> list[dict[str, float]]:
        s = self.settings
        self.world = distributed.world()
        distributed.check_batch_size(s.batch_size, self.world)
        if self.world.distributed:
            distributed.ensure_process_group()
        self.device = distributed.local_device(resolve_device(s.device), self.world)
        check_precision(self.device, s.precision)
        train, val = self._place(scheme, train, val)
        index = torch.arange(min(2, len(train)), device=train.y.device)
        scheme.prepare(Batch(train.inputs(slice(2)), train.y[:2], index, 0, s.epochs, len(train)))
        if self.world.distributed:
            try:
                return self._loop(scheme, train, val, resume)
            finally:
                scheme.replicate(None)
        return self._loop(scheme, train, val, resume)

    def _loop(
        self, scheme: Trainable, train: ArrayDataset, val: ArrayDataset | None, resume: bool
    ) -> list[dict[str, float]]:
        s = self.settings
        groups = scheme.optimizer_groups()
        unknown = set(s.optimizers) - set(groups)
        if unknown:
            raise ValueError(
                f"settings.optimizers names {sorted(unknown)}, but this scheme's optimizers are "
                f"{sorted(groups)}"
            )
        self.optimizers = {
            name: make_optimizer(params, s.optimizers.get(name, s.optimizer))
            for name, params in groups.items()
        }
        self.schedulers = {
            name: make_scheduler(opt, s.schedule, s.epochs) for name, opt in self.optimizers.items()
        }
        every = s.finite_check_every or (1 if self.device.type == "cpu" else 25)
        self.guard = NonFiniteGuard(
            every, self.description, len(self.optimizers) > 1, self._restore_good
        )
        # One scaler per optimizer: each may skip its own overflowing steps (fp16 only).
        self.scalers = {
            name: scaler
            for name in self.optimizers
            if (scaler := gradient_scaler(self.device, s.precision)) is not None
        }
        self.history, start, self._best, self._scheme = [], 0, None, scheme
        self._saved_at = time.monotonic()
        self._good_checkpoint = False
        if resume and self.checkpoint_path and distributed.broadcast(self.checkpoint_path.exists()):
            start = self._restore(scheme, ckpt.load_checkpoint(self._shared_checkpoint()))
        if self.world.distributed:  # after the restore: DDP starts every rank from rank 0's state
            scheme.replicate(self._replicate)
        batcher = make_batcher(train, s.batch_size, self.seed, self.world, self.device)
        with TrainingProgress(self.description, self.progress and self.world.main) as bar:
            for epoch in range(start, s.epochs):
                row = self._train_epoch(scheme, batcher, epoch, bar)
                if (
                    val is not None
                    and len(val)
                    and ((epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs)
                ):
                    row.update(self._evaluate(scheme, val))
                self.history.append(row)
                for sched in self.schedulers.values():
                    sched.step()
                for callback in self.callbacks:
                    callback(row)
                if self._checkpoint_due(epoch + 1):
                    self._save(scheme, epoch + 1)
        if s.keep_best and self._best is not None:
            scheme.eval_model().load_state_dict(self._best[1])
        scheme.set_mode(False)
        return self.history

    def _place(
        self, scheme: Trainable, train: ArrayDataset, val: ArrayDataset | None
    ) -> tuple[ArrayDataset, ArrayDataset | None]:
        """Every module and the data on the run's device (once), in its memory format; the
        evaluated model and frozen ones compiled when asked."""
        s, device = self.settings, self.device
        fmt = torch.channels_last if s.channels_last else torch.preserve_format
        for module in (*scheme.trainable().values(), *scheme.frozen().values()):
            module.to(device=device, memory_format=fmt)
        if s.compile:
            for module in (scheme.eval_model(), *scheme.frozen().values()):
                module.compile()
        return on_device(train, device, s.channels_last), on_device(val, device, s.channels_last)

    def _train_epoch(
        self, scheme: Trainable, batcher: TensorBatcher, epoch: int, bar: TrainingProgress
    ) -> dict[str, float]:
        sums: dict[str, Any] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        multi = len(self.optimizers) > 1
        step = 0

        def update(name: str, loss: LossOutput) -> None:
            self._update(name, loss, epoch, step)
            prefix = f"{name}." if multi else ""
            for key, value in (("loss", loss.total), *loss.terms.items()):
                add(prefix + key, value.detach())

        def add(key: str, value: float | torch.Tensor) -> None:
            # Sums stay on the device (in float64, as Python floats would be): they are read
            # once per progress update and at the end of the epoch, not at every step.
            if isinstance(value, torch.Tensor):
                value = value.double()
            sums[key] = sums[key] + value
            counts[key] += 1

        scheme.set_mode(True)
        bar.start_epoch(epoch + 1, self.settings.epochs, len(batcher))
        started = time.perf_counter()
        for step, batch in enumerate(batcher.epoch(epoch)):
            batch.epoch, batch.epochs = epoch, self.settings.epochs
            with autocast(self.device, self.settings.precision):
                metrics = scheme.train_step(batch, update)
            for key, value in metrics.items():
                add(key, value)
            self.guard.end_step(step)
            if step % 10 == 0:
                bar.advance({k: float(sums[k]) / counts[k] for k in list(sums)[:3]})
            else:
                bar.advance()
        self.guard.flush()
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update(distributed.mean_across({k: float(sums[k]) / counts[k] for k in sums}))
        row["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - started
        return row

    def _update(self, name: str, loss: LossOutput, epoch: int, step: int) -> None:
        total = loss.total
        self.guard.watch(name, "loss", total, loss, (epoch, step))
        opt, scaler = self.optimizers[name], self.scalers.get(name)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):  # backward in the forward's dtypes
            (scaler.scale(total) if scaler else total).backward()
        clip = self.settings.clip_grad_norm
        if clip is not None:
            if scaler is not None:
                scaler.unscale_(opt)  # clip the true gradients
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if scaler is None:  # with a scaler, overflowing steps are skipped, not errors
                self.guard.watch(name, "gradient norm", norm, loss, (epoch, step))
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()

    def _restore_good(self) -> str:
        """Restore the last good checkpoint in memory (if this run wrote one); say what is kept."""
        if self.checkpoint_path is None:
            return (
                "no checkpoint was configured, so the in-memory weights are the last updated ones"
            )
        if not self._good_checkpoint:  # written or resumed by this run, never a stale file
            return (
                f"no checkpoint had been written to {self.checkpoint_path} yet, so the "
                "in-memory weights are the last updated ones"
            )
        good = ckpt.load_checkpoint(self.checkpoint_path)
        for key, module in self._scheme.trainable().items():
            module.load_state_dict(good["models"][key])
        return (
            f"the last good checkpoint (epoch {good['epoch']}) is kept at "
            f"{self.checkpoint_path} and was restored in memory"
        )

    def _replicate(self, module: nn.Module) -> nn.Module:
        # A loss term of weight 0 is skipped, so its adapters get no gradient: DDP must know.
        idle = isinstance(module, Objective) and any(
            t.weight == 0 and distributed.trains(t) for t in module.terms
        )
        return distributed.replicate(module, self.settings.find_unused_parameters or idle)

    @torch.no_grad()
    def _evaluate(self, scheme: Trainable, val: ArrayDataset) -> dict[str, float]:
        if self.world.distributed:  # each rank scores its slice; the sums are added up
            val = val.subset(torch.arange(self.world.rank, len(val), self.world.size))
        logits, labels = scheme.predict(val), val.y.cpu()
        metrics = {"val_accuracy": accuracy(logits, labels), "val_nll": nll(logits, labels)}
        metrics = distributed.mean_across(metrics, weight=len(labels))
        if self.settings.keep_best and (
            self._best is None or metrics["val_accuracy"] > self._best[0]
        ):
            state = copy.deepcopy(scheme.eval_model().state_dict())
            self._best = (metrics["val_accuracy"], state)
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_due(self, epoch: int) -> bool:
        s = self.settings
        if self.checkpoint_path is None:
            return False
        if epoch == s.epochs:
            return True
        recent = time.monotonic() - self._saved_at < s.checkpoint_seconds
        # Rank 0's clock decides for every rank: the store hears of each checkpoint from all.
        return bool(distributed.broadcast(epoch % s.checkpoint_every == 0 and not recent))

    def _save(self, scheme: Trainable, epoch: int) -> None:
        self._saved_at = time.monotonic()
        self._good_checkpoint = True
        if not self.world.main:  # only rank 0 writes; the others take part in its store record
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.checkpoint_path)  # type: ignore[arg-type]
            return
        ckpt.save_atomic(
            ckpt.on_cpu(
                {
                    "format": ckpt.FORMAT,
                    "version": ckpt.VERSION,
                    "epoch": epoch,
                    "seed": self.seed,
                    "models": {k: m.state_dict() for k, m in scheme.trainable().items()},
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "schedulers": {k: sc.state_dict() for k, sc in self.schedulers.items()},
                    "scalers": {k: sc.state_dict() for k, sc in self.scalers.items()},
                    "history": self.history,
                    "best": self._best,
                    "rng": rng_state(),
                }
            ),
            self.checkpoint_path,  # type: ignore[arg-type]
            before_replace=self.on_checkpoint,
        )

    def _shared_checkpoint(self) -> Path:
        """The checkpoint rank 0 wrote, which every rank must be able to read."""
        path = self.checkpoint_path
        assert path is not None
        if not path.exists():
            raise KdlabError(
                f"rank {self.world.rank} cannot see the checkpoint {path} that rank 0 wrote: "
                "under DDP on several machines the run store must be on a filesystem they share"
            )
        return path

    def _restore(self, scheme: Trainable, state: dict[str, Any]) -> int:
        models = scheme.trainable()
        if set(state["models"]) != set(models) or set(state["optimizers"]) != set(self.optimizers):
            raise ValueError(
                f"checkpoint {self.checkpoint_path} holds models {sorted(state['models'])} and "
                f"optimizers {sorted(state['optimizers'])}, but this run has {sorted(models)} and "
                f"{sorted(self.optimizers)}; resume only the run that wrote it"
            )
        for key, module in models.items():
            module.load_state_dict(state["models"][key])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
        for key, scaler in self.scalers.items():
            scaler.load_state_dict(state.get("scalers", {}).get(key, scaler.state_dict()))
        self.history, self._best = list(state["history"]), state["best"]
        self._good_checkpoint = True
        set_rng_state(state["rng"])
        return int(state["epoch"])
