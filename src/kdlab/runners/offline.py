"""Offline distillation: a frozen, pre-trained teacher teaches a freshly initialised student."""

from __future__ import annotations

from kdlab.api import RunResult
from kdlab.runners import DistillContext, Runner, register_runner
from kdlab.stages import Stage, fit_stages, stages_from_config


def run_offline(ctx: DistillContext) -> list[RunResult]:
    """One run with ``distill.loss``, or one run per entry of ``distill.stages``."""
    student = ctx.new_student()
    if ctx.stages:
        stages = stages_from_config(ctx.stages, ctx.train)
    else:
        stages = [Stage(ctx.loss, ctx.train)]
    return fit_stages(
        student, ctx.data, stages, ctx.train, teacher=ctx.teacher, seed=ctx.seed,
        train_set=ctx.train_set, role="distilled", name=f"distilled s{ctx.seed}",
        config=ctx.config, **ctx.fit_kwargs,
    )  # fmt: skip


register_runner(Runner("offline", run_offline, summary="frozen teacher → student (Hinton et al.)"))
