"""The shape of the code a maintainer relies on: stages as small packages, small files and functions,
and a runtime that needs neither the offline tools nor torch."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
MAX_COMPLEXITY = 15
STAGES = ("io", "detection", "synthesis", "composition", "expression", "runtime", "service", "commands")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_file_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in _sources("agent", "tools")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern (over {MAX_LINES} lines): {long}"


def test_no_function_over_the_complexity_limit():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    proc = subprocess.run([ruff, "check", "--no-cache", "--isolated", "--select", "C901", "--config",
                           f"lint.mccabe.max-complexity={MAX_COMPLEXITY}", "--output-format", "concise",
                           "agent", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_are_documented_packages():
    for stage in STAGES:
        init = ROOT / "agent" / stage / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"agent/{stage} says what it does"
    loose = sorted(p.name for p in (ROOT / "agent").glob("*.py"))
    assert loose == ["__init__.py", "config.py", "errors.py", "pipeline.py", "types.py"], loose


def test_the_runtime_imports_neither_tools_nor_torch():
    for path in _sources("agent"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in ("tools", "torch")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_research_words_stay_out_of_the_runtime():
    for path in _sources("agent") + [ROOT / "config" / "agent.yaml"]:
        text = path.read_text().lower()
        for word in ("campaign", "issue ", "step 3", "step 6", "step 7"):
            assert word not in text, f"{path.relative_to(ROOT)} speaks of '{word.strip()}'"


def test_every_command_line_argument_is_described():
    import argparse

    from agent.commands.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    undescribed = [f"anoncam {name} {act.option_strings or act.dest}" for name, parser in sub.choices.items()
                   for act in parser._actions if not act.help and not isinstance(act, argparse._HelpAction)]
    assert not undescribed
    assert all(action.help for action in sub._choices_actions), "every subcommand has a one-line help"
