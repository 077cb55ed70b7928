"""Finished runs of one experiment, grouped by role and config values, compared with a baseline.

A group is one role (teacher, student, distilled, …) at one combination of the ``--by`` values,
with one run per seed (the newest, when a seed was re-run). Comparisons pair a group's seeds with
its baseline group's: the seeds share data splits and initial weights, so the paired difference
is far less noisy than the difference of two means.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdlab.errors import ConfigError
from kdlab.report.keys import Baseline, flatten, show_value, sort_key
from kdlab.report.stats import Stat, describe, paired_difference
from kdlab.store import RunRecord, RunStore

#: Roles that are references rather than treatments: the teacher bounds "gap closed" from above
#: and the student alone from below; neither is compared with a baseline unless the baseline is
#: another role (``--baseline teacher`` compares the student too).
TEACHER, STUDENT = "teacher", "student"


@dataclass
class ReportRun:
    """What the report needs of one finished run; ``config`` is the flattened experiment config."""

    id: str
    role: str
    seed: int
    metrics: dict[str, float]
    config: dict[str, Any]
    #: The test set's reliability bins (RunRecord.calibration); None for older runs.
    calibration: dict[str, list[float]] | None = None


@dataclass(eq=False)  # groups are compared by identity: two groups never share role and values
class Group:
    role: str
    values: tuple[Any, ...]
    runs: list[ReportRun]
    stat: Stat
    baseline: Group | None = None
    diff: Stat | None = None  # paired difference self − baseline over the seeds both have
    gap: float = math.nan  # (self − student) / (teacher − student), from the group means
    seeds: dict[int, float] = field(default_factory=dict)  # metric by seed

    def label(self, names: Sequence[str]) -> str:
        shown = " ".join(f"{n}={show_value(v)}" for n, v in zip(names, self.values, strict=True))
        return f"{self.role} {shown}".strip()


def experiment_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment config a run recorded (``kdlab run``), else its whole recorded config
    (runs made from Python record only their settings and loss)."""
    inner = config.get("experiment")
    return dict(inner) if isinstance(inner, Mapping) else dict(config)


def load_runs(store: RunStore, experiment: str) -> list[ReportRun]:
    """The experiment's finished runs, newest first."""
    records: list[RunRecord] = store.list_runs(experiment=experiment, status="finished")
    if not records:
        others = Counter(r.status for r in store.list_runs(experiment=experiment))
        if others:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(others.items()))
            raise ConfigError(
                f"experiment {experiment!r} has no finished runs yet ({counts}); see why with "
                f"`kdlab runs --experiment {experiment} --status failed`"
            )
        known = ", ".join(store.experiments()) or "none yet"
        raise ConfigError(
            f"no runs of experiment {experiment!r} in {store.root}; experiments: {known}"
        )
    return [
        ReportRun(
            r.id,
            r.role,
            r.seed or 0,
            r.metrics,
            flatten(experiment_config(r.config)),
            r.calibration,
        )
        for r in records
    ]


def unfinished_note(store: RunStore, experiment: str, finished: Sequence[ReportRun]) -> str | None:
    """A note on the experiment's failed or interrupted runs that no finished run redid (same
    role, seed and config): cells of a sweep that failed are otherwise silently absent."""

    def same(config: Mapping[str, Any]) -> str:
        return json.dumps(config, sort_keys=True, default=str)

    done = {(r.role, r.seed, same(r.config)) for r in finished}
    missing = Counter(
        r.status for r in store.list_runs(experiment=experiment)
        if r.status in ("failed", "interrupted")
        and (r.role, r.seed or 0, same(flatten(experiment_config(r.config)))) not in done
    )  # fmt: skip
    if not missing:
        return None
    counts = " and ".join(f"{n} {status}" for status, n in sorted(missing.items()))
    return (
        f"{counts} run(s) without a finished re-run are not in the report: "
        f"`kdlab runs --experiment {experiment} --status failed` says why"
    )


def stored_metrics(runs: Sequence[ReportRun]) -> list[str]:
    return sorted({k for r in runs for k in r.metrics})


@dataclass
class LeftOut:
    """Runs of a (group, seed) that already had a newer run: re-runs of the same config, or runs
    of other configs that the ``--by`` keys do not tell apart (``keys``: where they differ)."""

    reruns: int = 0
    mixed: int = 0
    keys: set[str] = field(default_factory=set)
    #: Runs whose metric is NaN or ±inf (a diverged run that was not stopped).
    nonfinite: int = 0


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    """Config paths where two runs differ; the seed list is no difference (``--seeds``)."""
    return {k for k in set(a) | set(b) if not k.startswith("seeds") and a.get(k) != b.get(k)}


def build_groups(
    runs: Sequence[ReportRun], by: Sequence[str], metric: str
) -> tuple[list[Group], LeftOut]:
    """Groups in display order (teacher, student, then roles as first recorded; values sorted)
    and what was left out: each (group, seed) keeps its newest run."""
    kept: dict[tuple[str, tuple[str, ...], int], ReportRun] = {}
    values: dict[tuple[str, tuple[str, ...]], tuple[Any, ...]] = {}
    left = LeftOut()
    for run in runs:  # newest first: the first run of a (group, seed) is the one kept
        value = run.metrics.get(metric)
        if value is None or not math.isfinite(value):
            left.nonfinite += value is not None
            continue
        raw = tuple(run.config.get(path) for path in by)
        key = (run.role, tuple(show_value(v) for v in raw))
        values.setdefault(key, raw)
        if (*key, run.seed) in kept:
            differ = _differing(kept[(*key, run.seed)].config, run.config)
            left.keys |= differ
            left.mixed += bool(differ)
            left.reruns += not differ
            continue
        kept[(*key, run.seed)] = run
    roles = [TEACHER, STUDENT] + [r.role for r in reversed(runs)]
    order = {role: i for i, role in reversed(list(enumerate(roles)))}
    groups = []
    for key in sorted(values, key=lambda k: (order[k[0]], [sort_key(v) for v in values[k]])):
        members = sorted((r for (ro, sh, _), r in kept.items() if (ro, sh) == key),
                         key=lambda r: r.seed)  # fmt: skip
        seeds = {r.seed: r.metrics[metric] for r in members}
        groups.append(Group(key[0], values[key], members, describe(list(seeds.values())),
                            seeds=seeds))  # fmt: skip
    return groups, left


def covers(reference: Sequence[Any], values: Sequence[Any]) -> bool:
    """Whether a reference group's values stand for ``values``: equal where the reference
    recorded the key, any value where it did not (a sweep's shared teacher and student alone
    record no loss keys, and serve every cell)."""
    return all(r is None or show_value(r) == show_value(v)
               for r, v in zip(reference, values, strict=True))  # fmt: skip


def _counterpart(group: Group, baseline: Baseline, candidates: Sequence[Group]) -> Group | None:
    """The baseline group for ``group``: its own values with the baseline's substituted, else
    the one candidate that covers them, else the only baseline group there is."""
    role = baseline.role or group.role
    shown = [baseline.values.get(i, show_value(v)) for i, v in enumerate(group.values)]
    for other in candidates:
        if other.role == role and [show_value(v) for v in other.values] == shown:
            return other
    covering = [o for o in candidates if o.role == role and covers(o.values, shown)]
    if len(covering) == 1:
        return covering[0]
    return candidates[0] if len(candidates) == 1 else None


def compare(groups: Sequence[Group], baseline: Baseline) -> list[Group]:
    """Set ``baseline`` and ``diff`` of every compared group; returns the groups without a
    baseline group to pair with."""
    bases = [g for g in groups if baseline.matches(g.role, g.values)]
    unmatched = []
    for group in groups:
        reference = group.role == TEACHER or (
            group.role == STUDENT and baseline.role in (None, STUDENT)
        )
        if group in bases or reference:
            continue
        base = _counterpart(group, baseline, bases)
        if base is None:
            unmatched.append(group)
            continue
        group.baseline = base
        group.diff = paired_difference(base.seeds, group.seeds)
    return unmatched


def _reference_mean(groups: Sequence[Group], role: str, values: tuple[Any, ...]) -> float | None:
    """The mean of ``role`` at these values, else of its groups that cover them (a teacher shared
    by a sweep is recorded once), else over all its runs."""
    same = [g for g in groups if g.role == role and g.values == values]
    covering = [g for g in groups if g.role == role and covers(g.values, values)]
    pool = same or covering or [g for g in groups if g.role == role]
    xs = [x for g in pool for x in g.seeds.values()]
    return sum(xs) / len(xs) if xs else None


def close_gaps(groups: Sequence[Group]) -> bool:
    """Set ``gap`` of every non-reference group; False when teacher or student runs are missing."""
    found = False
    for group in groups:
        if group.role in (TEACHER, STUDENT):
            continue
        teacher = _reference_mean(groups, TEACHER, group.values)
        student = _reference_mean(groups, STUDENT, group.values)
        if teacher is None or student is None or abs(teacher - student) < 1e-12:
            continue
        group.gap = (group.stat.mean - student) / (teacher - student)
        found = True
    return found


def default_baseline(groups: Sequence[Group]) -> Baseline | None:
    """The student alone when there is one: "did distillation help?" is the usual question."""
    return Baseline(role=STUDENT) if any(g.role == STUDENT for g in groups) else None
