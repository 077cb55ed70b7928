"""Every metric of the quickstart and of each bundled-data example, to check a refactor changes
no number: run it before and after, then compare.

    python benchmarks/reference_runs.py --out before.json          # on the old commit
    python benchmarks/reference_runs.py --out after.json --compare before.json

Runs on digits and the generated multi-view data only (the Fashion-MNIST examples take hours);
about 6 minutes on 2 cores. Prints JSON (run counts and the comparison) and a one-line verdict;
exits 1 when a metric differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from kdlab.config import load_config
from kdlab.experiment import run_experiment
from kdlab.quickstart import run_quickstart
from kdlab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def collect(only: list[str]) -> dict[str, list]:
    """{experiment: [(role, seed, metrics), ...]} for the quickstart and the bundled examples."""
    result: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp, RunStore(Path(tmp) / "store") as store:
        if not only or "quickstart" in only:
            _, full, few = run_quickstart(store, None, False)
            runs = [run for experiment in (full, few) for run in experiment.runs]
            result["quickstart"] = [(r.role, r.seed, r.metrics) for r in runs]
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            if path.stem.startswith("fashion") or (only and path.stem not in only):
                continue
            runs = run_experiment(load_config(path), store, progress=False).runs
            result[path.stem] = [(r.role, r.seed, r.metrics) for r in runs]
            print(f"{path.stem}: {len(runs)} runs", file=sys.stderr, flush=True)
    return result


def differences(before: dict, after: dict) -> list[str]:
    """Every (experiment, run) whose role, seed or any metric differs, as text."""
    found = []
    for name, runs in before.items():
        if name not in after or len(after[name]) != len(runs):
            found.append(f"{name}: {len(runs)} runs before, {len(after.get(name, []))} after")
            continue
        for (role, seed, m1), (role2, seed2, m2) in zip(runs, after[name], strict=True):
            if (role, seed) != (role2, seed2) or m1 != m2:
                changed = sorted(k for k in set(m1) | set(m2) if m1.get(k) != m2.get(k))
                found.append(f"{name} {role} s{seed}: {', '.join(changed) or role2}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the metrics here (JSON)")
    parser.add_argument("--compare", type=Path, help="an earlier --out file to compare with")
    parser.add_argument("--only", nargs="*", default=[], help="experiment names (default: all)")
    args = parser.parse_args()
    result = collect(args.only)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    report: dict = {"experiments": len(result), "runs": sum(map(len, result.values()))}
    if args.compare:
        # Through JSON, as the earlier file was: tuples become lists, floats round-trip exactly.
        found = differences(json.loads(args.compare.read_text()), json.loads(args.out.read_text()))
        report["differences"] = found
    print(json.dumps(report, indent=1))
    if args.compare:
        print("identical" if not report["differences"] else f"{len(found)} runs differ")
    return 1 if report.get("differences") else 0


if __name__ == "__main__":
    raise SystemExit(main())
