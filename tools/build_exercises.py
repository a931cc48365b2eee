"""Build the student versions of the notebooks with nbgrader: a course folder a teacher can use as it is.

Usage: python tools/build_exercises.py [--course exercises] [--assignment lesson] [NOTEBOOK ...]

Copies every notebook that holds nbgrader cells (by default those of notebooks/) into
COURSE/source/ASSIGNMENT/, writes COURSE/nbgrader_config.py, and runs `nbgrader generate_assignment`,
which writes the student versions to COURSE/release/ASSIGNMENT/: solutions replaced by a stub that
raises NotImplementedError naming the exercise, hidden tests removed, outputs cleared, check cells locked.
From COURSE, `nbgrader autograde ASSIGNMENT` grades what students hand in (see TEACHING.md)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NBGRADER_CONFIG = """# Written by tools/build_exercises.py; rebuilt by `make exercises`.
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "ppo-lesson"
# An unsolved exercise raises NotImplementedError with its number and what to write (ppo_lesson.checks.todo).
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError(checks.todo())"}
# Notebook 02 trains the policy in one cell (about a minute); the graded cells take well under 5 s.
c.Execute.timeout = 600
"""


def has_nbgrader_cells(path: Path) -> bool:
    return any("nbgrader" in c.get("metadata", {}) for c in json.loads(path.read_text())["cells"])


def exercise_notebooks() -> list[Path]:
    return [nb for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if has_nbgrader_cells(nb)]


def nbgrader(course: Path, *args: str) -> None:
    """Run the nbgrader command line of this Python environment in the course folder."""
    command = [sys.executable, "-m", "nbgrader", *args]
    # nbgrader runs `alembic` from PATH to set up its gradebook: put this environment's scripts first
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`nbgrader {' '.join(args)}` failed in {course}:\n{result.stdout}\n{result.stderr}")


def make_course(course: Path, assignment: str, notebooks: list[Path]) -> Path:
    """A fresh nbgrader course folder with the solution notebooks as the assignment's source."""
    if not notebooks:
        raise ValueError("notebooks: expected at least one notebook with nbgrader cells, got none")
    source = course / "source" / assignment
    for folder in ("source", "release", "submitted", "autograded", "feedback"):
        shutil.rmtree(course / folder, ignore_errors=True)
    (course / "gradebook.db").unlink(missing_ok=True)
    source.mkdir(parents=True)
    for nb in notebooks:
        shutil.copy(nb, source / nb.name)
    (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG)
    return source


def build(course: Path, assignment: str, notebooks: list[Path]) -> Path:
    """Generate the student versions; returns the folder to hand out."""
    make_course(course, assignment, notebooks)
    nbgrader(course, "generate_assignment", assignment, "--force")
    return course / "release" / assignment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--course", type=Path, default=ROOT / "exercises", help="course folder (default: exercises)")
    parser.add_argument("--assignment", default="lesson", help="assignment name (default: lesson)")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: the notebooks with nbgrader cells")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or exercise_notebooks()
    release = build(args.course.resolve(), args.assignment, notebooks)
    print(f"student versions of {len(notebooks)} notebooks: {release}")
    for nb in sorted(release.glob("*.ipynb")):
        print(f"  {nb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
