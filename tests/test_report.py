"""``kdlab report``: seed statistics against scipy, the written tables and figures, bad input.

The store is built directly with RunStore (finished runs with configs, metrics and history: no
training), plus one real two-epoch digits experiment for the learning curves of a real run.
"""

from __future__ import annotations

import base64
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.errors import ConfigError
from kdlab.report.formats import latex_escape
from kdlab.report.keys import flatten, resolve_key
from kdlab.report.stats import bonferroni_note, describe, paired_difference
from kdlab.store import RunStore

runner = CliRunner()
EXPERIMENT = "kd_sweep"  # an underscore, which LaTeX must escape
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
ALPHAS = (0.5, 1.0)
SEED_EFFECT = (0.0, 0.01, -0.008)  # shared by every role of a seed: what pairing removes


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns off a terminal; an error must read as one line."""
    monkeypatch.setattr(terminal, "err_console", Console(stderr=True, width=500))


def invoke(*args: object):
    return runner.invoke(cli.app, [str(a) for a in args])


def sweep_config(temperature: float, alpha: float) -> dict:
    return {
        "name": EXPERIMENT, "seeds": [0, 1, 2], "data": {"source": "digits"},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train_subset": 60},
        "distill": {"scheme": "offline", "loss": [
            {"type": "ce", "weight": 0.1},
            {"type": "soft_target", "weight": 0.9, "temperature": temperature,
             "divergence": "renyi", "alpha": alpha},
        ]},
    }  # fmt: skip


def distilled_accuracy(seed: int, temperature: float, alpha: float) -> float:
    jitter = 0.003 * ((seed * 7 + int(temperature)) % 3 - 1)
    bonus = 0.02 if alpha == 0.5 else 0.0
    return 0.80 + SEED_EFFECT[seed] + 0.01 * math.log2(temperature) + bonus + jitter


def add_run(store: RunStore, role: str, seed: int, config: dict, metrics: dict) -> None:
    run_id = store.create_run(experiment=EXPERIMENT, name=f"{role} s{seed}", role=role, seed=seed,
                              config={"experiment": config})  # fmt: skip
    for epoch in (1, 2, 3):
        store.log_epoch(run_id, epoch, {"loss": 1 / epoch, "val_accuracy": 0.5 + 0.1 * epoch})
    confidence = [0.1, 0.5, 0.9]  # three bins, an over-confident model
    bins = {
        "count": [10, 30, 60],
        "confidence": confidence,
        "accuracy": [c - 0.05 for c in confidence],
    }
    store.finish_run(run_id, metrics, calibration=bins)


def build_sweep_store(root: Path) -> Path:
    """3 seeds: a teacher and a student alone each (recorded once, as a sweep sharing them
    would), distilled students at 4 temperatures × 2 alphas."""
    with RunStore(root) as store:
        for seed in range(3):
            base = sweep_config(4.0, 0.5)
            add_run(
                store, "teacher", seed, base, {"accuracy": 0.95 + SEED_EFFECT[seed], "ece": 0.02}
            )
            add_run(
                store, "student", seed, base, {"accuracy": 0.80 + SEED_EFFECT[seed], "ece": 0.05}
            )
            for t in TEMPERATURES:
                for a in ALPHAS:
                    acc = distilled_accuracy(seed, t, a)
                    metrics = {"accuracy": acc, "ece": 0.04, "agreement": acc + 0.05}
                    add_run(store, "distilled", seed, sweep_config(t, a), metrics)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sweep_store(tmp_path_factory.mktemp("report") / "store")


@pytest.fixture(scope="module")
def full(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """``kdlab report kd_sweep --by temperature,alpha``, once: (out folder, result)."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("full") / "out"
    result = invoke("report", EXPERIMENT, "--store", store, "--by", "temperature,alpha",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


# -- statistics against scipy ---------------------------------------------------------------------

VALUES = [0.912, 0.897, 0.925, 0.901, 0.918]


def test_describe_matches_scipy_t_interval() -> None:
    s = describe(VALUES)
    low, high = stats.t.interval(0.95, len(VALUES) - 1, loc=np.mean(VALUES),
                                 scale=stats.sem(VALUES))  # fmt: skip
    assert (s.n, s.mean, s.std) == pytest.approx((5, np.mean(VALUES), np.std(VALUES, ddof=1)))
    assert s.interval == pytest.approx((low, high), rel=1e-12)
    wide = stats.t.interval(0.99, 4, loc=np.mean(VALUES), scale=stats.sem(VALUES))
    assert s.at(0.99).interval == pytest.approx(wide, rel=1e-12)
    assert describe([0.5]).n == 1 and math.isnan(describe([0.5]).half_width)


def test_paired_difference_matches_ttest_rel() -> None:
    base = {0: 0.80, 1: 0.81, 2: 0.79, 3: 0.82, 7: 0.5}  # seed 7 has no partner
    other = {0: 0.83, 1: 0.82, 2: 0.82, 3: 0.86, 5: 0.9}  # nor seed 5
    d = paired_difference(base, other)
    a, b = [base[s] for s in range(4)], [other[s] for s in range(4)]
    expected = stats.ttest_rel(b, a)
    assert d.n == 4
    assert d.mean == pytest.approx(np.mean(np.subtract(b, a)))
    assert d.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert d.interval == pytest.approx(tuple(expected.confidence_interval(0.95)), rel=1e-9)


def test_bonferroni_note_names_the_intervals_that_still_exclude_zero() -> None:
    rng = np.random.default_rng(0)
    diffs = {f"g{i}": rng.normal(shift, 0.01, size=4) for i, shift in
             enumerate([0.0, 0.012, 0.02, 0.05])}  # fmt: skip
    level = 0.05 / len(diffs)
    survive = [k for k, x in diffs.items()
               if not (lambda lo, hi: lo <= 0 <= hi)(*stats.t.interval(
                   1 - level, len(x) - 1, loc=x.mean(), scale=stats.sem(x)))]  # fmt: skip
    at95 = [k for k, x in diffs.items() if stats.ttest_1samp(x, 0).pvalue < 0.05]
    assert len(survive) < len(at95)  # the made-up numbers do exercise the correction
    note = bonferroni_note([(k, describe(list(x))) for k, x in diffs.items()])
    assert note is not None and note.startswith("4 comparisons")
    assert "0.05/4 = 0.0125" in note and "98.75 %" in note
    assert note.endswith(": " + ", ".join(survive))
    assert bonferroni_note([("only", describe([0.1, 0.2]))]) is None


# -- config keys ----------------------------------------------------------------------------------


def test_short_names_resolve_to_the_one_path_ending_in_them() -> None:
    configs = [flatten(sweep_config(t, 0.5)) for t in TEMPERATURES]
    assert configs[0]["distill.loss.1.alpha"] == 0.5 and configs[0]["seeds.2"] == 2
    assert resolve_key("alpha", configs) == "distill.loss.1.alpha"
    assert resolve_key("loss.1.temperature", configs) == "distill.loss.1.temperature"
    assert resolve_key("distill.loss.1.alpha", configs) == "distill.loss.1.alpha"
    with pytest.raises(ConfigError, match=r"'weight' is ambiguous.*distill\.loss\.0\.weight"):
        resolve_key("weight", configs)
    with pytest.raises(ConfigError, match=r"closest keys: distill\.loss\.1\.temperature"):
        resolve_key("temprature", configs)


# -- the written report ---------------------------------------------------------------------------

TABLES = ("report.md", "report.tex", "report.html")
FIGURES = ("metric_lines", "heatmap", "gap_closed", "learning_curves", "reliability",
           "calibration", "agreement")  # fmt: skip
N_GROUPS = 2 + len(TEMPERATURES) * len(ALPHAS)


def test_report_writes_every_table_and_figure(full) -> None:
    out, result = full
    written = [line.removeprefix("wrote ") for line in result.stdout.splitlines()]
    expected = [*TABLES, *(f"{f}.{e}" for f in FIGURES for e in ("png", "pdf"))]
    assert [Path(p).name for p in written] == expected
    for name in expected:
        data = (out / name).read_bytes()
        magic = {"png": b"\x89PNG", "pdf": b"%PDF"}.get(name.rsplit(".", 1)[1])
        assert len(data) > 500 and (magic is None or data.startswith(magic)), name
    assert "Bonferroni-adjusted level 0.05/8" in result.stderr


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_markdown_table_is_well_formed_and_right(full) -> None:
    lines = table_lines((full[0] / "report.md").read_text())
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["role", "temperature", "alpha", "n"] and "gap closed %" in header
    assert re.fullmatch(r"\|(---:?\|)+", lines[1]) and lines[1].count("|") == len(header) + 1
    assert len(lines) == 2 + N_GROUPS
    assert all(len(re.findall(r"(?<!\\)\|", line)) == len(header) + 1 for line in lines)
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in lines[2:]}
    cells = [c.strip() for c in rows[("distilled", "8", "0.5")].strip("|").split("|")]
    student = [0.80 + e for e in SEED_EFFECT]
    ours = [distilled_accuracy(s, 8.0, 0.5) for s in range(3)]
    test = stats.ttest_rel(ours, student)
    low, high = test.confidence_interval(0.95)
    at = header.index("Δ vs baseline")
    assert cells[at] == f"{100 * np.mean(np.subtract(ours, student)):+.2f}"
    assert cells[at + 1] == f"[{100 * low:+.2f}, {100 * high:+.2f}]"
    assert cells[at + 2 :][:2] == ["3", f"{test.pvalue:.3g}"]
    gap = (np.mean(ours) - np.mean(student)) / (0.95 - 0.80)
    assert cells[-1] == f"{100 * gap:.1f}"


def unescaped(char: str, text: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(char)}", text))


def test_latex_table_is_booktabs_balanced_and_escaped(full) -> None:
    tex = (full[0] / "report.tex").read_text()
    assert unescaped("{", tex) == unescaped("}", tex)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert re.findall(r"\\(begin|end)\{table\}", tex) == ["begin", "end"]
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1, rule
    assert r"kd\_sweep" in tex and unescaped("_", tex) == 0 and unescaped("%", tex) == 0
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = tex.split(r"\toprule")[1].split(r"\midrule")[0].strip()
    columns = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    assert len(body) == N_GROUPS
    assert all(unescaped("&", row) == len(columns) - 1 for row in [header, *body])
    assert all(row.endswith(r"\\") for row in [header, *body])
    assert latex_escape("a_b & 5% #1 $x$ {y} ~^\\") == (
        r"a\_b \& 5\% \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )


def test_html_is_one_self_contained_file(full) -> None:
    page = (full[0] / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert page.count("<tr>") == 1 + N_GROUPS and "<style>" in page


def test_figures_only_where_the_data_allow(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    one = invoke("report", EXPERIMENT, "--store", store, "--by", "temperature",
                 "--out", tmp_path / "a", "--format", "md")  # fmt: skip
    assert one.exit_code == 0, one.output
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert "metric_lines.png" in names and "heatmap.png" not in names and "report.tex" not in names
    # alpha is not a --by key here: its runs share groups and seeds, and the report says so
    assert "12 run(s) left out whose config differs" in one.stderr
    assert "(in distill.loss.1.alpha)" in one.stderr
    none = invoke("report", EXPERIMENT, "--store", store, "--out", tmp_path / "b", "--format", "md",
                  "--metric", "agreement")  # fmt: skip
    assert none.exit_code == 0, none.output
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert "metric_lines.png" not in names and "agreement.png" not in names  # y is agreement
    assert "learning_curves.png" in names and "calibration.png" in names


def test_baseline_by_key_value_pairs_groups_with_their_own_alpha(
    store: Path, tmp_path: Path
) -> None:
    result = invoke("report", EXPERIMENT, "--store", store, "--by", "temperature,alpha",
                    "--baseline", "temperature=1", "--out", tmp_path, "--no-figures",
                    "--format", "md")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = table_lines((tmp_path / "report.md").read_text())
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in lines[2:]}
    cells = [c.strip() for c in rows[("distilled", "4", "1")].strip("|").split("|")]
    diff = [distilled_accuracy(s, 4.0, 1.0) - distilled_accuracy(s, 1.0, 1.0) for s in range(3)]
    assert cells[header.index("Δ vs baseline")] == f"{100 * np.mean(diff):+.2f}"
    baseline_row = [c.strip() for c in rows[("distilled", "1", "1")].strip("|").split("|")]
    assert baseline_row[header.index("Δ vs baseline")] == "—"
    assert "6 comparisons with the baseline (temperature=1)" in result.stderr


# -- bad input: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuch"], "no runs of experiment 'nosuch' in "),
        (["--by", "temprature"], "closest keys: distill.loss.1.temperature"),
        (["--by", "weight"], "distill.loss.0.weight, distill.loss.1.weight"),
        (
            ["--metric", "acuracy"],
            "unknown metric 'acuracy'; stored metrics: accuracy, agreement, ece",
        ),
        (["--baseline", "peer"], "--baseline role 'peer' has no runs; roles: teacher, student"),
        (["--by", "alpha", "--baseline", "alpha=3"], "no run has it; values: 0.5, 1"),
        (["--baseline", "temperature=1"], "is not a --by key"),
        (["--format", "pdf"], "--format 'pdf' is not one of md, latex, html"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(store: Path, tmp_path: Path, args, expected) -> None:
    name = [] if args[0] == "nosuch" else [EXPERIMENT]
    result = invoke(
        "report", *name, *args, "--store", store, "--out", tmp_path / "out", "--no-figures"
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # checked before anything is written
    if args[0] == "nosuch":
        assert result.stderr.strip().endswith(f"experiments: {EXPERIMENT}")


def test_missing_matplotlib_says_how_to_install_it(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    result = invoke("report", EXPERIMENT, "--store", store, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "pip install kdlab[plot]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    tables = invoke("report", EXPERIMENT, "--store", store, "--out", tmp_path / "t", "--no-figures")
    assert tables.exit_code == 0 and (tmp_path / "t" / "report.html").exists()


# -- a real run -----------------------------------------------------------------------------------

TINY = textwrap.dedent(
    """
    name: tiny_real
    seeds: [0, 1]
    data: {source: digits}
    teacher:
      model: {type: mlp, hidden: [32]}
      train: {epochs: 2, threads: 1}
    student:
      model: {type: mlp, hidden: [8]}
      train: {epochs: 2, threads: 1}
    distill:
      loss: [{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]
    """
)


def test_report_of_a_real_digits_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "tiny.yaml").write_text(TINY)
    ran = invoke("run", tmp_path / "tiny.yaml", "--store", tmp_path / "s", "--no-progress")
    assert ran.exit_code == 0, ran.output
    result = invoke("report", "tiny_real", "--store", tmp_path / "s", "--by", "temperature",
                    "--out", tmp_path / "out", "--format", "md")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = table_lines((tmp_path / "out" / "report.md").read_text())
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["teacher", "student", "distilled"]
    assert all(line.split("|")[2].strip() == "4" for line in lines[2:])  # the recorded T
    for name in ("learning_curves.png", "gap_closed.png", "agreement.png", "reliability.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert not (tmp_path / "out" / "metric_lines.png").exists()  # one temperature: no line
