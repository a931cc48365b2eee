"""The teacher's nbgrader workflow, end to end, in a temporary course folder (CI runs it: `make test-exercises`).

1. generate the student versions of the exercise notebooks (tools/build_exercises.py, `nbgrader generate_assignment`);
2. autograde two submissions against the real gradebook: "solved" (the student versions with every solution
   filled in) must get full marks, "untouched" (the student versions as handed out) 0 for every exercise;
3. autograding executes every cell of the submitted student version, so the untouched run also shows what a
   student who is stuck sees: its only errors must be the checks of the unsolved exercises, each saying
   "not done yet", and the solved run must have no error at all.
The two submissions are graded in parallel (two course copies, one gradebook each), after the stage cache
is filled once. Prints the scores and the seconds each step took."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from build_exercises import build, exercise_notebooks, nbgrader

ASSIGNMENT = "lesson"


def nbgrader_meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solved_version(student_nb: dict, source_nb: dict) -> dict:
    """The student version with each solution cell replaced by the solution's code, as a student would
    type it (nbgrader's markers removed)."""
    solutions = {
        nbgrader_meta(c)["grade_id"]: c["source"] for c in source_nb["cells"] if nbgrader_meta(c).get("solution")
    }
    for c in student_nb["cells"]:
        grade_id = nbgrader_meta(c).get("grade_id")
        if nbgrader_meta(c).get("solution") and grade_id in solutions:
            lines = "".join(solutions[grade_id]).splitlines(keepends=True)
            c["source"] = [line for line in lines if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
    return student_nb


def submit(course: Path, student: str, fill_in: bool) -> None:
    release, source = course / "release" / ASSIGNMENT, course / "source" / ASSIGNMENT
    target = course / "submitted" / student / ASSIGNMENT
    target.mkdir(parents=True)
    for nb in sorted(release.glob("*.ipynb")):
        student_nb = json.loads(nb.read_text())
        if fill_in:
            student_nb = solved_version(student_nb, json.loads((source / nb.name).read_text()))
        (target / nb.name).write_text(json.dumps(student_nb, indent=1))
    nbgrader(course, "db", "student", "add", student)


def kernel_transport(sockets: Path, student: str) -> list[str]:
    """Command-line options that make nbgrader's kernels talk over Unix sockets under `sockets`.

    The two submissions are graded at once, so two processes start kernels at the same moment. Over TCP each
    picks free ports, closes them and hands them to its kernel; in that gap the other process can take one
    and the kernel dies at start ("Kernel died before replying to kernel_info": it happened in CI). Sockets
    with a prefix of their own per student cannot collide. The prefix is absolute because the kernel runs
    in the notebook's folder and nbgrader in the course folder. Windows has no Unix sockets: TCP there."""
    if os.name != "posix":
        return []
    return ["--KernelManager.transport=ipc", f"--KernelManager.ip={sockets / student}"]


def autograde(course: Path, student: str, sockets: Path) -> float:
    start = time.perf_counter()
    nbgrader(course, "autograde", ASSIGNMENT, "--student", student, "--force", *kernel_transport(sockets, student))
    return time.perf_counter() - start


def scores(course: Path, student: str) -> list[dict]:
    """One row per graded cell: notebook, grade_id, score, max_score (from the course's gradebook)."""
    from nbgrader.api import Gradebook

    rows = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(ASSIGNMENT, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                rows.append(
                    {
                        "notebook": notebook.name,
                        "grade_id": grade.name,
                        "score": grade.score,
                        "max_score": grade.max_score,
                    }
                )
    return sorted(rows, key=lambda r: (r["notebook"], r["grade_id"]))


def errors(course: Path, student: str) -> list[dict]:
    """Every cell of the autograded notebooks that ended in an error, with what it printed."""
    found = []
    for nb_path in sorted((course / "autograded" / student / ASSIGNMENT).glob("*.ipynb")):
        for index, c in enumerate(json.loads(nb_path.read_text())["cells"]):
            outputs = c.get("outputs", [])
            error = next((o for o in outputs if o.get("output_type") == "error"), None)
            if error:
                printed = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
                found.append(
                    {
                        "notebook": nb_path.stem,
                        "cell": index,
                        "grade_id": nbgrader_meta(c).get("grade_id"),
                        "graded": bool(nbgrader_meta(c).get("grade")),
                        "error": error["ename"],
                        "printed": printed,
                    }
                )
    return found


def judge(solved: tuple, untouched: tuple) -> list[str]:
    """The workflow's promises, as a list of broken ones (empty when all hold)."""
    problems = []
    (solved_scores, solved_errors), (untouched_scores, untouched_errors) = solved, untouched
    if not solved_scores:
        problems.append("the gradebook holds no graded cells")
    for row in solved_scores:
        if row["score"] != row["max_score"]:
            problems.append(f"solved: {row['notebook']} {row['grade_id']} got {row['score']} of {row['max_score']}")
    for row in untouched_scores:
        if row["score"] != 0:
            problems.append(f"untouched: {row['notebook']} {row['grade_id']} got {row['score']}, expected 0")
    for err in solved_errors:
        problems.append(f"solved: {err['notebook']} cell {err['cell']} raised {err['error']}")
    graded = {(r["notebook"], r["grade_id"]) for r in untouched_scores}
    failed = {(e["notebook"], e["grade_id"]) for e in untouched_errors}
    for err in untouched_errors:
        if not err["graded"]:
            problems.append(f"untouched: {err['notebook']} cell {err['cell']} raised {err['error']} (not a check)")
        elif "not done yet" not in err["printed"]:
            problems.append(f"untouched: {err['notebook']} {err['grade_id']} failed without saying 'not done yet'")
    problems += [f"untouched: {nb} {gid} did not fail" for nb, gid in sorted(graded - failed)]
    return problems


def report(solved: tuple, untouched: tuple, seconds: dict) -> None:
    print(f"{'notebook':<28}{'exercise check':<34}{'solved':>8}{'untouched':>11}")
    untouched_by_cell = {(r["notebook"], r["grade_id"]): r for r in untouched[0]}
    for row in solved[0]:
        other = untouched_by_cell.get((row["notebook"], row["grade_id"]), {"score": float("nan")})
        print(
            f"{row['notebook']:<28}{row['grade_id']:<34}{row['score']:>4g}/{row['max_score']:<3g}"
            f"{other['score']:>7g}/{row['max_score']:<3g}"
        )
    total = sum(r["max_score"] for r in solved[0])
    print(
        f"total: solved {sum(r['score'] for r in solved[0]):g}/{total:g}, "
        f"untouched {sum(r['score'] for r in untouched[0]):g}/{total:g}; "
        f"errors: solved {len(solved[1])}, untouched {len(untouched[1])} (all in checks of unsolved exercises: "
        f"{all(e['graded'] for e in untouched[1])})"
    )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


def fill_stage_cache() -> None:
    """Train (or find cached) the policy and reward model the notebooks load, once, before the two
    submissions run side by side: otherwise both would train them. One thread, like the notebooks."""
    import torch

    from ppo_lesson.config import lesson_config
    from ppo_lesson.pipeline import pretrained_policy, trained_reward_model

    torch.set_num_threads(1)
    cfg = lesson_config()
    policy, _ = pretrained_policy(cfg, progress=False)
    trained_reward_model(cfg, policy, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the course folders here instead of a temporary folder")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: the notebooks with nbgrader cells")
    args = parser.parse_args(argv)
    notebooks = [nb.resolve() for nb in args.notebooks] or exercise_notebooks()
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="ppo-lesson-exercises-")).resolve()
    # figures the notebooks save go to the work folder, so grading leaves the checkout untouched
    os.environ["PPO_LESSON_FIGURES"] = str(workdir / "figures")
    seconds, start = {}, time.perf_counter()
    courses = {"solved": workdir / "course-solved", "untouched": workdir / "course-untouched"}
    build(courses["solved"], ASSIGNMENT, notebooks)
    shutil.rmtree(courses["untouched"], ignore_errors=True)
    shutil.copytree(courses["solved"], courses["untouched"])
    seconds["generate"] = time.perf_counter() - start
    for student, course in courses.items():
        submit(course, student, fill_in=student == "solved")
    start_cache = time.perf_counter()
    fill_stage_cache()
    seconds["stage cache"] = time.perf_counter() - start_cache
    # a short folder of its own: a Unix socket's path may hold at most about 100 characters
    sockets = Path(tempfile.mkdtemp(prefix="ppo-kernels-"))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {student: pool.submit(autograde, course, student, sockets) for student, course in courses.items()}
            seconds.update({f"autograde {student}": f.result() for student, f in futures.items()})
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    results = {student: (scores(course, student), errors(course, student)) for student, course in courses.items()}
    seconds["total"] = time.perf_counter() - start
    report(results["solved"], results["untouched"], seconds)
    problems = judge(results["solved"], results["untouched"])
    for problem in problems:
        print(f"FAIL: {problem}")
    if args.keep:
        print(f"course folders: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("exercises round trip: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
