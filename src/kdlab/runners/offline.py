"""Offline distillation: a frozen, pre-trained teacher teaches a freshly initialised student."""

from __future__ import annotations

from kdlab.api import RunResult, fit_model
from kdlab.runners import DistillContext, Runner, register_runner


def run_offline(ctx: DistillContext) -> list[RunResult]:
    student = ctx.new_student()
    run = fit_model(
        student, ctx.data, ctx.loss, ctx.train, teacher=ctx.teacher, seed=ctx.seed,
        train_set=ctx.train_set, role="distilled", name=f"distilled s{ctx.seed}",
        config=ctx.config, **ctx.fit_kwargs,
    )  # fmt: skip
    return [run]


register_runner(Runner("offline", run_offline, summary="frozen teacher → student (Hinton et al.)"))
