"""Where things live: every option is declared by the CLI module, and the lesson (its modules and
notebooks) never depends on the command-line machinery (bench, experiments, cli)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ppo_lesson import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ppo_lesson"
LESSON_MODULES = (
    "task", "model", "pretrain", "reward", "ppo", "evaluate", "pipeline", "config", "widgets", "toys",
    "group", "grpo", "rloo", "dpo", "best_of_n", "variants", "curves", "beyond_ppo",
)  # fmt: skip
MACHINERY = ("bench", "experiments", "cli")  # what the command line runs; a lesson never needs it


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of every module an AST imports (``from . import x`` counts as ``package.x``),
    ``package`` being the dotted package the code sits in."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _is_machinery(module: str) -> bool:
    return any(module == f"ppo_lesson.{m}" or module.startswith(f"ppo_lesson.{m}.") for m in MACHINERY)


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def test_every_subcommand_parser_is_built_by_the_cli_module():
    sub = next(a for a in cli.build_parser()._subparsers._group_actions if a.dest == "command")
    assert set(sub.choices) == {"run", "experiments", "compare", "bench"}
    for name, parser in sub.choices.items():
        types = [a.type for a in parser._actions if callable(a.type)]
        assert all(t.__module__ == "ppo_lesson.cli" for t in types), (name, types)


def test_only_the_cli_module_imports_argparse():
    users = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "argparse" in _imported_modules(ast.parse(path.read_text()), _package_of(path))
    ]
    assert users == ["ppo_lesson/cli.py"]


@pytest.mark.parametrize("name", LESSON_MODULES)
def test_a_lesson_module_imports_no_command_line_machinery(name):
    path = PACKAGE / f"{name}.py"
    imported = _imported_modules(ast.parse(path.read_text()), "ppo_lesson")
    assert not [m for m in imported if _is_machinery(m)], f"{name}.py imports {sorted(filter(_is_machinery, imported))}"


def test_the_import_helper_resolves_relative_imports():
    """The checks above see a machinery import however it is written."""
    code = "from .. import bench\nfrom .runner import run_experiments\nfrom ..cli import main\n"
    imported = _imported_modules(ast.parse(code), "ppo_lesson.experiments")
    assert {"ppo_lesson.bench", "ppo_lesson.experiments.runner", "ppo_lesson.cli"} <= imported
    assert not _is_machinery("ppo_lesson.plots.experiments")  # notebook 06's figures are lesson-side


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")), ids=lambda p: p.name)
def test_a_notebook_imports_no_command_line_machinery(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    imported = set()
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "\n".join(
                line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!"))
            )
            imported |= _imported_modules(ast.parse(source), "ppo_lesson")
    assert not [m for m in imported if _is_machinery(m)], sorted(filter(_is_machinery, imported))
