"""Optimizers and learning-rate schedules from settings: SGD (momentum, Nesterov), Adam, AdamW;
a linear warm-up, then constant, cosine, step or multi-step decay, stepped once per epoch."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kdlab.settings import OptimizerSettings, ScheduleSettings


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerSettings) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    optim = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return optim(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleSettings, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: linear warm-up over ``warmup_epochs``, then the named decay."""
    base_lr = optimizer.param_groups[0]["lr"]
    warm, decay_epochs = cfg.warmup_epochs, max(epochs - cfg.warmup_epochs, 1)

    def factor(epoch: int) -> float:  # epoch = number of scheduler steps taken so far
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        e = epoch - warm
        if cfg.name == "cosine":
            floor = cfg.min_lr / base_lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e / decay_epochs, 1)))
        if cfg.name == "step":
            return cfg.gamma ** (e // cfg.step_size)
        if cfg.name == "multistep":
            return cfg.gamma ** sum(e >= m for m in cfg.milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["make_optimizer", "make_scheduler"]
