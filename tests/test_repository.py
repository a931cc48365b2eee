"""The repository's promises: pinned environments agree, notebooks are committed clean and with
outputs, and every figure the README shows exists and is written by the notebook that claims it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def _environment_pip_requirements() -> list[str]:
    """The pip: list of environment.yml, read without a YAML library (conda cannot run here)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1 :]:
        item = line.strip()
        if not item.startswith("- "):
            break
        reqs.append(item[2:].strip())
    return [r for r in reqs if not r.startswith("-e")]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert sorted(set(declared)) == sorted(set(_environment_pip_requirements()))
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_makefile_installs_the_pinned_torch_first():
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if _name(d) == "torch"
    )
    assert f"pip install --quiet {pin}" in (ROOT / "Makefile").read_text()


def _package_section() -> str:
    return README.split("## The package", 1)[1].split("\n## ", 1)[0]


def test_readme_gives_the_two_setup_commands_and_names_every_module():
    assert "make lesson" in README and "make test" in README
    section = _package_section()
    for module in sorted((ROOT / "ppo_lesson").glob("*.py")):
        if module.name != "__init__.py":
            assert f"`{module.name}`" in section, f"README does not describe ppo_lesson/{module.name}"
    for package in sorted(p for p in (ROOT / "ppo_lesson").iterdir() if (p / "__init__.py").is_file()):
        row = next((line for line in section.splitlines() if line.startswith(f"| `{package.name}/`")), None)
        assert row is not None, f"README does not describe ppo_lesson/{package.name}/"
        if package.name != "checks":  # its modules follow the notebooks, as the row says
            for module in sorted(package.glob("*.py")):
                assert module.stem == "__init__" or f"`{module.stem}`" in row, f"{package.name}/{module.name}"


def test_readme_names_no_module_that_does_not_exist():
    named = set(re.findall(r"`([a-z_]+\.py)`", _package_section()))
    missing = sorted(name for name in named if not (ROOT / "ppo_lesson" / name).is_file())
    assert not missing, f"README's package tables name modules that do not exist: {missing}"
    folders = set(re.findall(r"^\| `([a-z_]+)/`", _package_section(), flags=re.MULTILINE))
    assert folders and all((ROOT / "ppo_lesson" / f / "__init__.py").is_file() for f in folders), folders


def test_notebooks_exist_in_order():
    names = [nb.name[:2] for nb in NOTEBOOKS]
    assert names[:5] == ["01", "02", "03", "04", "05"], names


def test_notebooks_are_clean_and_have_outputs():
    tool = ROOT / "tools" / "clean_notebooks.py"
    result = subprocess.run(
        [sys.executable, str(tool), "--check", *map(str, NOTEBOOKS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    for nb_path in NOTEBOOKS:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert any(c.get("outputs") for c in code), f"{nb_path.name} has no outputs committed"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb_path.name} was committed with an error output"


def _saved_figure_names(nb_path: Path) -> set[str]:
    source = "\n".join(
        "".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"
    )
    return set(re.findall(r"save_figure\([^)]*?[\"']([0-9]{2}_[A-Za-z0-9_]+)[\"']", source, flags=re.S))


def test_every_readme_figure_exists_and_its_notebook_writes_it():
    referenced = set(re.findall(r"figures/([0-9]{2}_[A-Za-z0-9_]+)\.png", README))
    assert referenced, "the README embeds no figures"
    for name in sorted(referenced):
        assert (ROOT / "figures" / f"{name}.png").is_file(), f"figures/{name}.png is referenced but missing"
        notebook = next((nb for nb in NOTEBOOKS if nb.name.startswith(name[:3])), None)
        written = _saved_figure_names(notebook) if notebook else set()
        cli_code = "".join(p.read_text() for p in (ROOT / "ppo_lesson" / "experiments").glob("*.py"))
        made_by_cli = name.startswith("06_") and name.removeprefix("06_") in cli_code
        assert name in written or made_by_cli, f"no notebook or command writes figures/{name}.png"


def test_every_figure_a_notebook_saves_is_committed():
    for nb_path in NOTEBOOKS:
        for name in _saved_figure_names(nb_path):
            assert (ROOT / "figures" / f"{name}.png").is_file(), f"{nb_path.name} saves {name}.png, not committed"
