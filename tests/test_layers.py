"""The layer rules of ``src/kdlab``, read from the source (``ast``), and the size limits.

Each layer imports only the layers below it; inside a layer, a *unit* (e.g. ``losses``) may
import itself, but the building blocks ``losses``, ``models`` and ``data`` may not import one
another. Every module must be placed in a layer (a new module fails here until it is), and the
import graph must have no cycle. The checkers are plain functions so that the tests below can
also feed them forbidden graphs and see them fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

#: Lowest layer first; each layer maps unit names to module-name prefixes ("x.*": x and below).
LAYERS: list[tuple[str, dict[str, list[str]]]] = [
    ("foundation", {"foundation": [
        "kdlab.errors", "kdlab.types", "kdlab.settings", "kdlab.seeding", "kdlab.taps",
        "kdlab.freeze", "kdlab.checkpoint", "kdlab.progress", "kdlab.divergences",
        "kdlab.metrics", "kdlab.inference", "kdlab.devices", "kdlab.distributed",
    ]}),
    ("building blocks", {"losses": ["kdlab.losses.*"], "models": ["kdlab.models.*"],
                         "data": ["kdlab.data.*"]}),
    ("config", {"config": ["kdlab.config", "kdlab.yamlfile", "kdlab.schemes",
                           "kdlab.schemes.registry", "kdlab.overrides"]}),
    ("engine", {"engine": ["kdlab.engine", "kdlab.optim", "kdlab.guard"],
                "store": ["kdlab.store.*"]}),
    ("runs", {"runs": ["kdlab.runs", "kdlab.health", "kdlab.tracking"]}),
    ("schemes", {"schemes": ["kdlab.schemes.*"]}),
    ("experiment", {"experiment": ["kdlab.experiment", "kdlab.teachers", "kdlab.resume",
                                   "kdlab.preflight", "kdlab.sweep.*", "kdlab.tune",
                                   "kdlab.tune_checks"],
                    "report": ["kdlab.report.*"]}),
    ("interface", {"interface": ["kdlab", "kdlab.api", "kdlab.cli", "kdlab.quickstart",
                                 "kdlab.__main__", "kdlab.terminal", "kdlab.launch",
                                 "kdlab.sweep.command"]}),
]  # fmt: skip


def place(module: str) -> tuple[int, str] | None:
    """(layer index, unit) of ``module``: the most specific matching prefix wins."""
    best: tuple[int, int, str] | None = None  # (specificity, layer, unit)
    for index, (_, units) in enumerate(LAYERS):
        for unit, patterns in units.items():
            for pattern in patterns:
                base = pattern.removesuffix(".*")
                exact = module == base
                below = pattern.endswith(".*") and module.startswith(base + ".")
                if (exact or below) and (best is None or len(base) + exact > best[0]):
                    best = (len(base) + exact, index, unit)
    return None if best is None else (best[1], best[2])


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Every kdlab module under ``src`` → the kdlab modules it imports (anywhere in the file)."""
    files = {module_name(p, src): p for p in (src / "kdlab").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
        graph[name] = {t for t in targets if t == "kdlab" or t.startswith("kdlab.")} - {name}
    return graph


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports against the layer rules, and modules no layer holds."""
    problems = []
    for module, targets in sorted(graph.items()):
        here = place(module)
        if here is None:
            problems.append(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
            continue
        for target in sorted(targets):
            there = place(target)
            if there is None:
                continue  # reported as a module of its own
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                problems.append(
                    f"{module} ({LAYERS[here[0]][0]}: {here[1]}) imports {target} "
                    f"({LAYERS[there[0]][0]}: {there[1]})"
                )
    return problems


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# -- the rules hold for kdlab ---------------------------------------------------------------------


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph()
    assert "kdlab.schemes.offline" in graph and "kdlab.engine" in graph  # the walk found files
    assert violations(graph) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_config_never_reaches_a_scheme_the_engine_or_the_store() -> None:
    graph = import_graph()
    reach, todo = set(), ["kdlab.config"]
    while todo:
        for target in graph[todo.pop()]:
            if target not in reach:
                reach.add(target)
                todo.append(target)
    assert {"kdlab.engine", "kdlab.store", "kdlab.runs", "kdlab.experiment"}.isdisjoint(reach)
    assert not any(m.startswith("kdlab.schemes.") and m != "kdlab.schemes.registry" for m in reach)


# -- the checkers can fail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge", "fragment"),
    [
        (("kdlab.engine", "kdlab.schemes.offline"), "kdlab.engine (engine: engine) imports"),
        (("kdlab.config", "kdlab.store"), "kdlab.config (config: config) imports kdlab.store"),
        (("kdlab.losses.response", "kdlab.models.mlp"), "(building blocks: models)"),
        (("kdlab.errors", "kdlab.losses"), "kdlab.errors (foundation: foundation) imports"),
        (("kdlab.schemes", "kdlab.schemes.mutual"), "kdlab.schemes (config: config) imports"),
    ],
)
def test_a_forbidden_edge_is_reported(edge: tuple[str, str], fragment: str) -> None:
    graph = import_graph()
    graph[edge[0]] = {*graph[edge[0]], edge[1]}
    problems = violations(graph)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_an_unplaced_module_and_a_cycle_are_reported() -> None:
    assert violations({"kdlab.newthing": set()}) == [
        "kdlab.newthing is in no layer: add it to LAYERS in tests/test_layers.py"
    ]
    graph = {"kdlab.errors": {"kdlab.types"}, "kdlab.types": {"kdlab.taps"},
             "kdlab.taps": {"kdlab.errors"}, "kdlab.metrics": {"kdlab.errors"}}  # fmt: skip
    assert cycles(graph) == [["kdlab.errors", "kdlab.taps", "kdlab.types"]]
    assert violations(graph) == []  # a cycle inside one unit is still a cycle


def test_relative_and_submodule_imports_are_resolved(tmp_path: Path) -> None:
    pkg = tmp_path / "kdlab"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("")
    (pkg / "losses" / "__init__.py").write_text("from .base import X\n")
    (pkg / "losses" / "base.py").write_text("from .. import engine\nimport kdlab.losses\n")
    graph = import_graph(tmp_path)
    assert graph["kdlab.losses"] == {"kdlab.losses.base"}
    assert graph["kdlab.losses.base"] == {"kdlab.engine", "kdlab.losses"}


# -- size limits ----------------------------------------------------------------------------------

#: Constructors whose parameters are the keys a config writes (``{type: mps, bond_dim: 10, ...}``)
#: and commands whose parameters are their command-line options (typer reads the signature):
#: grouping them would change what users write, so they may take more than 8.
CONFIG_CONSTRUCTORS = {
    "kdlab.models.mps:MPS.__init__",
    "kdlab.models.mps:StackedMPS.__init__",
    "kdlab.losses.lsp:LocalStructure.__init__",
    "kdlab.losses.relation:Relation.__init__",
    "kdlab.losses.crd:CRD.__init__",
    "kdlab.losses.pkt:PKT.__init__",
    "kdlab.cli:run",
}


def functions(tree: ast.AST) -> Iterable[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""

    def walk(node: ast.AST, prefix: str) -> Iterable[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")  # type: ignore[misc]


def size_problems(src: Path = SRC) -> list[str]:
    problems = []
    for path in sorted((src / "kdlab").rglob("*.py")):
        text = path.read_text()
        module = module_name(path, src)
        if len(text.splitlines()) > 400:
            problems.append(f"{module}: {len(text.splitlines())} lines (> 400)")
        for name, node in functions(ast.parse(text)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            args = node.args
            params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                      if a.arg not in ("self", "cls")]  # fmt: skip
            if lines > 60:
                problems.append(f"{module}:{name}: {lines} lines (> 60)")
            if len(params) > 8 and f"{module}:{name}" not in CONFIG_CONSTRUCTORS:
                problems.append(f"{module}:{name}: {len(params)} parameters (> 8)")
    return problems


def test_no_module_function_or_signature_is_too_large() -> None:
    assert size_problems() == []


def test_the_size_check_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "kdlab"
    pkg.mkdir()
    long_body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (pkg / "big.py").write_text(
        "def many(a, b, c, d, e, f, g, h, i):\n    pass\n\n\n"
        f"class K:\n    def long(self):\n{long_body.replace('    ', '        ')}" + "\n" * 340
    )
    assert size_problems(tmp_path) == [
        "kdlab.big: 406 lines (> 400)",
        "kdlab.big:many: 9 parameters (> 8)",
        "kdlab.big:K.long: 61 lines (> 60)",
    ]
