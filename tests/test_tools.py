"""tools/ stays a package run as modules: no ``sys.path`` patching, no imports from tests,
and every table generator and benchmark prints the one environment header of
tools/common.py. Read with ``ast``: the tools themselves are not run here."""

from __future__ import annotations

import ast
import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from tools import common

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted((ROOT / "tools").rglob("*.py"))
TEST_MODULES = {p.stem for p in (ROOT / "tests").glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def patches_sys_path(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path"
               and isinstance(node.value, ast.Name) and node.value.id == "sys"
               for node in ast.walk(ast.parse(path.read_text())))


def test_no_tool_patches_sys_path_or_imports_tests():
    assert [p.name for p in TOOLS if patches_sys_path(p)] == []
    assert {p.name: sorted(imported_modules(p) & TEST_MODULES) for p in TOOLS
            if imported_modules(p) & TEST_MODULES} == {}


def test_the_checks_see_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nsys.path.insert(0, 'tests')\nfrom graphs import x\n")
    assert patches_sys_path(bad) and "graphs" in imported_modules(bad) & TEST_MODULES


def prints_header(path: Path) -> bool:
    """``path``, or a tools module it imports, calls ``common.print_header`` (or
    ``common.environment``, for a JSON record)."""
    sources = [path] + [ROOT / f"{m.replace('.', '/')}.py" for m in imported_modules(path)
                        if m.startswith("tools.") and m != "tools.common"]
    return any(call in p.read_text() for p in sources if p.exists()
               for call in ("common.print_header(", "common.environment("))


@pytest.mark.parametrize("folder", ["results", "benchmarks"])
def test_every_generator_prints_the_common_header(folder):
    """Each script with a ``main`` in tools/results/ and tools/benchmarks/."""
    scripts = [p for p in sorted((ROOT / "tools" / folder).glob("*.py"))
               if "def main(" in p.read_text()]
    assert scripts
    assert [p.name for p in scripts if not prints_header(p)] == []


def test_environment_header_names_date_machine_versions_and_command():
    now = datetime.datetime(2026, 12, 7, 13, 5, tzinfo=datetime.timezone.utc)
    line = common.environment("G=4,T=0", now=now)
    fields = line.removeprefix("# ").split(" | ")
    assert fields[0] == "2026-12-07 13:05 UTC"
    assert "cores" in fields[1] and "onnxruntime " in fields[2]
    assert fields[-1] == "G=4,T=0" and fields[-2].startswith("`python")


def test_command_line_of_a_module_run():
    """Run as ``python -m tools.x.y``, a tool names itself that way, with its arguments."""
    done = subprocess.run([sys.executable, "-m", "tools.common", "--x", "a b"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("| `python -m tools.common --x 'a b'`")
