"""The README and docs/ stay true: every ``kse-onnx`` command line in them uses flags
the parser has, every command is in the README's usage block, links point at files and
headings that exist, and every ```python snippet runs (examples as tests).

A snippet that cannot run here starts with a ``# not run: <reason>`` line; it is then
reported as skipped with that reason."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kse_onnx.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = "# not run:"
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")


def blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(line number, body) of each fenced block in ``language``."""
    found, lines, start = [], text.split("\n"), None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == f"```{language}":
            start = number
        elif start is not None and line.strip() == "```":
            found.append((start + 1, "\n".join(lines[start:number - 1])))
            start = None
    return found


def command_lines(block: str) -> list[str]:
    """Each ``kse-onnx ...`` command of a shell block as one line: continuation lines
    (after a trailing backslash, or indented) are joined to it."""
    commands: list[str] = []
    for line in block.split("\n"):
        if line.startswith("kse-onnx "):
            commands.append(line)
        elif commands and (commands[-1].endswith("\\") or line.startswith((" ", "\t"))):
            commands[-1] = commands[-1].rstrip("\\") + " " + line.strip()
        else:
            commands.append("")  # another command: what follows does not continue it
    return [c for c in commands if c]


def subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def unknown_flags(text: str) -> list[str]:
    """``command --flag`` for each flag a ``kse-onnx`` command line of ``text``'s shell
    blocks uses that the command's parser does not have."""
    commands, bad = subparsers(), []
    for _, block in blocks(text, "sh"):
        for line in command_lines(block):
            name = line.split()[1]
            if name not in commands:
                bad.append(f"unknown command {name!r}")
                continue
            known = set(commands[name]._option_string_actions)
            bad += [f"{name} {flag}" for flag in FLAG.findall(line) if flag not in known]
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_command_lines_use_real_flags(page):
    assert unknown_flags(page.read_text()) == []


def test_usage_block_lists_every_command_and_its_flags_exist():
    usage = next(body for _, body in blocks((ROOT / "README.md").read_text(), "sh")
                 if body.startswith("kse-onnx score"))
    listed = {line.split()[1] for line in command_lines(usage)}
    assert listed == set(subparsers())
    assert unknown_flags(f"```sh\n{usage}\n```") == []


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "results.md"],
                         ids=lambda p: p.name)
def test_prose_flags_exist(page):
    """Flags quoted in the text (outside code blocks) belong to some command. Not in
    results.md, which quotes the flags of the tools/ scripts too."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    every = set(build_parser()._option_string_actions).union(
        *(set(p._option_string_actions) for p in subparsers().values()))
    quoted = {f for span in re.findall(r"`([^`]*)`", text) for f in FLAG.findall(span)}
    assert quoted and quoted <= every, sorted(quoted - every)


def test_a_renamed_flag_is_caught():
    readme = (ROOT / "README.md").read_text()
    assert "--rtol" in readme
    assert unknown_flags(readme.replace("--rtol", "--rtoll")) == ["verify --rtoll"]
    joined = "```sh\nkse-onnx eval m.onnx \\\n    --data x.npz --meann 0.5\n```"
    assert unknown_flags(joined) == ["eval --meann"]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_point_at_existing_files_and_headings(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: no heading {target}"


ALL_SNIPPETS = [(page, line, body) for page in PAGES
                for line, body in blocks(page.read_text(), "python")]
# a snippet marked NOT_RUN is run elsewhere (its marker names the slow test or tool): it is
# left out here rather than skipped, so that the default suite reports no skips
SNIPPETS = [s for s in ALL_SNIPPETS if not s[2].strip().startswith(NOT_RUN)]


def test_snippets_not_run_here_name_what_runs_them():
    firsts = {f"{page.name}:{line}": body.strip().split("\n")[0]
              for page, line, body in ALL_SNIPPETS}
    not_run = {where: first for where, first in firsts.items() if first.startswith(NOT_RUN)}
    assert not_run  # the Olive workflow's snippet, at least
    assert [where for where, first in not_run.items()
            if "tools/" not in first and "test" not in first] == []


TOOL_PATH = re.compile(r"(?<![\w/.])tools/[\w/]+\.(?:py|sh)\b")
TOOL_MODULE = re.compile(r"python -m\s+(tools(?:\.\w+)+)")


def tool_references(text: str) -> set[str]:
    """The files of ``tools/`` a page names: paths, and modules run with ``python -m``."""
    modules = {m.replace(".", "/") + ".py" for m in TOOL_MODULE.findall(text)}
    return set(TOOL_PATH.findall(text)) | modules


@pytest.mark.parametrize("page", [*PAGES, ROOT / "SECURITY.md", ROOT / ".ci" / "run"],
                         ids=lambda p: p.name)
def test_tools_named_in_docs_exist(page):
    """Every script a page tells the reader to run is where it says (tools/ moved once)."""
    assert sorted(r for r in tool_references(page.read_text()) if not (ROOT / r).exists()) == []


def test_tool_references_are_found():
    text = "run `python -m\n    tools.results.int8_table --x` or bash tools/scripts/test.sh"
    assert tool_references(text) == {"tools/results/int8_table.py", "tools/scripts/test.sh"}


def test_there_are_snippets():
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("page, line, body", SNIPPETS,
                         ids=[f"{p.name}:{n}" for p, n, _ in SNIPPETS])
def test_snippet_runs(page, line, body, tmp_path, monkeypatch):
    """Run in an empty folder holding models/small_cnn.onnx, as from the repository root."""
    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "models/small_cnn.onnx", tmp_path / "models/small_cnn.onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(body, f"{page.name}:{line}", "exec"), {"__name__": "__snippet__"})


def test_ci_runs_the_readme_test_command():
    """The README's second command (setup + tests) is what .ci/run calls."""
    commands = [body.strip() for _, body in blocks((ROOT / "README.md").read_text(), "sh")]
    assert commands[:2] == ["bash tools/scripts/demo.sh", "bash tools/scripts/test.sh"]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
