"""The package is a DAG of layers (docs/architecture.md, "Layers"): every import inside
kse_onnx, at module level or inside a function, goes to the same unit or to a unit
listed before it in LAYERS, and no two modules import each other, directly or through
others. Read with ``ast``: nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kse_onnx"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# Lowest first. A unit is a top-level module or a sub-package of kse_onnx ("" = the
# package's own __init__). A new module or sub-package must be placed here.
LAYERS = [
    "",  # kse_onnx/__init__.py: the version
    "errors",
    "terminal",  # escapes terminal control characters in what the CLI prints
    "progress",  # progress bars (terminal) and lines (logs) of long loops
    "options",
    "paths",  # output paths checked against inputs and each other; atomic writes
    "report",  # counts and the summary table (numpy only)
    "model_input",  # a model's image input and the check of images against it
    "held_images",  # calibration images held in memory or on disk (numpy only)
    "data",  # dataset readers (numpy only)
    "calibration",  # the one loader of calibration images (a file, arrays or a stream)
    "runtime",  # onnxruntime sessions, latency, output checks (onnxruntime, numpy)
    "graph",  # safe load/save, Conv sites, channel chains, export, counts
    "onnx_torch",  # torch: the op table and the one interpreter over it; held activations
    "analysis",  # KSE maths per layer, and the whole-model plan
    "lowering",  # plans written back into the graph; auto times them
    "quantize",  # INT8 after KSE
    "budget",  # --target-latency: layer table, allocation, measured search
    "finetune",  # torch: importer, epochs, QAT
    "refit",  # post-training refit from calibration images (torch for the forward passes)
    "evaluate",  # accuracy with onnxruntime (the eval command)
    "verify",  # the rewrite check against the original; reads lowered forms back
    "guard",  # pipelines: calibration in any form, the measured drop, the --max-drop search
    "api",  # the facade: one function per command
    "cli",  # argparse over the facade
    "olive",  # the Olive pass (optional extra): a client of the facade, never imported by it
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """kse_onnx modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import sub`` imports the sub-module when there is one
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "kse_onnx" or t.startswith("kse_onnx.")}
    return found


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a unit placed later in LAYERS (or of an unplaced unit)."""
    rank = {u: i for i, u in enumerate(LAYERS)}
    bad = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = unit(source), unit(target)
            if a not in rank or b not in rank:
                bad.append(f"{source} -> {target}: unit not placed in LAYERS")
            elif a != b and rank[b] > rank[a]:
                bad.append(f"{source} -> {target}: '{b}' is above '{a}'")
    return bad


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A list of modules forming an import cycle, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def edges():
    known = modules()
    return {name: imports(name, path, set(known)) - {name} for name, path in known.items()}


def test_every_unit_is_placed(edges):
    units = {unit(m) for m in edges}
    assert units <= set(LAYERS), f"place these in LAYERS: {sorted(units - set(LAYERS))}"


def test_no_upward_import(edges):
    assert upward_imports(edges) == []


def test_nothing_below_imports_the_facade_or_the_cli(edges):
    bad = [f"{s} -> {t}" for s, ts in edges.items() for t in ts
           if t in ("kse_onnx.api", "kse_onnx.cli")
           and s not in ("kse_onnx.api", "kse_onnx.cli", "kse_onnx.olive")]  # olive: a client
    assert bad == []


def test_no_import_cycle(edges):
    assert find_cycle(edges) is None


def documented_units(text: str) -> list[str]:
    """First cells of the table under "## Packages": ``name.py`` or ``name/``."""
    section = text.split("\n## Packages\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1].strip().strip("`") for line in section.splitlines()
            if line.startswith("| `")]


def package_units() -> set[str]:
    """The top-level modules (``name.py``) and sub-packages (``name/``) of kse_onnx."""
    return ({p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
            | {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))})


def test_architecture_lists_every_package_and_module():
    """docs/architecture.md's packages table names each unit of kse_onnx once, and
    nothing that is not there."""
    listed = documented_units(ARCHITECTURE.read_text())
    assert sorted(set(listed)) == sorted(listed), "a unit listed twice"
    assert sorted(package_units() - set(listed)) == [], "add to docs/architecture.md"
    assert sorted(set(listed) - package_units()) == [], "listed but not in kse_onnx/"


def test_the_architecture_check_reads_the_table():
    table = "# A\n\n## Packages\n\n| unit | job |\n|---|---|\n| `a.py` | x |\n" \
            "| `b/` | y |\n\n## Layers\n\n| `c.py` | not a package row |\n"
    assert documented_units(table) == ["a.py", "b/"]
    assert "graph/" in package_units() and "api.py" in package_units()
    assert "__init__.py" not in package_units()


def test_the_checks_catch_what_they_look_for(edges):
    """The checker itself: an upward import and a two-module cycle are reported."""
    planted = {**edges, "kse_onnx.graph.io": edges["kse_onnx.graph.io"] | {"kse_onnx.api"}}
    assert any("kse_onnx.graph.io -> kse_onnx.api" in b for b in upward_imports(planted))
    planted = {**edges, "kse_onnx.finetune.epochs":
               edges["kse_onnx.finetune.epochs"] | {"kse_onnx.finetune.qat"}}
    assert find_cycle(planted) is not None
    # and the parser sees relative, lazy and ``from pkg import module`` imports
    assert "kse_onnx.analysis.model" in edges["kse_onnx.verify"]
    assert "kse_onnx.lowering.compact" in edges["kse_onnx.lowering"]
    assert "kse_onnx.lowering.auto" in edges["kse_onnx.api"]


def test_the_package_re_exports_lazily():
    """``kse_onnx/__init__.py`` is the lowest layer yet re-exports the facade: its names
    are loaded on first use (PEP 562 ``__getattr__`` with importlib, invisible to the
    ``ast`` walk above), so this pins the deliberate exception instead: the table names
    public attributes of the facade, report, options and errors only, and importing the
    package alone loads none of them."""
    import subprocess
    import sys

    import kse_onnx

    assert {module for module, _ in kse_onnx.LAZY.values()} <= {
        "kse_onnx.api", "kse_onnx.report", "kse_onnx.options", "kse_onnx.errors"}
    assert all(not attr.startswith("_") for _, attr in kse_onnx.LAZY.values())
    code = ("import sys, kse_onnx; print(sorted(m for m in sys.modules "
            "if m.startswith('kse_onnx.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert loaded.strip() == "[]"
    assert kse_onnx.optimize.__name__ == "optimize_model"


MAX_LINES = 400
LONGER_ALLOWED = {"kse_onnx.onnx_torch.ops"}  # the op table: one entry per ONNX operator


def test_no_module_over_the_line_limit():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert sorted(set(long) - LONGER_ALLOWED) == [], long


def private_crossings(name: str, tree: ast.AST, known: set[str]) -> list[str]:
    """``from kse_onnx.x import _y`` and ``module._y`` where ``x`` / ``module`` is
    another unit's module: private names reached across units."""
    aliases = {}  # local name -> kse_onnx module it stands for
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = name.split(".")
        module = (".".join(base[:len(base) - node.level] + ([node.module] if node.module
                                                            else []))
                  if node.level else node.module or "")
        for a in node.names:
            full = f"{module}.{a.name}"
            if full in known:
                aliases[a.asname or a.name] = full
            elif a.name.startswith("_") and not a.name.startswith("__") \
                    and unit(module) != unit(name):
                bad.append(f"{name}: from {module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__") \
                and unit(aliases[node.value.id]) != unit(name):
            bad.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    return bad


def test_no_private_name_across_units():
    known = modules()
    bad = []
    for name, path in known.items():
        relative_base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        bad += private_crossings(relative_base + ".x", tree, set(known))
    assert bad == []


def test_the_private_name_check_catches_both_forms():
    known = set(modules())
    planted = ast.parse("from ..onnx_torch import ops\nfrom ..graph.core import _hidden\n"
                        "ops._secret(1)\n")
    found = private_crossings("kse_onnx.refit.x", planted, known)
    assert found == ["kse_onnx.refit.x: from kse_onnx.graph.core import _hidden",
                     "kse_onnx.refit.x: kse_onnx.onnx_torch.ops._secret"]
    same_unit = ast.parse("from .holding import _private\n")
    assert private_crossings("kse_onnx.onnx_torch.x", same_unit, known) == []
