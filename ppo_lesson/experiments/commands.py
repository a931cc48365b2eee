"""The ``experiments`` and ``compare`` commands: run over seeds, write the JSON and the figures,
print the report. Their options are declared in ``ppo_lesson/cli.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

from ..plots import beyond_ppo as beyond_ppo_plots
from ..plots import style
from .comparison import run_comparison
from .comparison_report import report as comparison_report
from .figures import save_figures
from .report import report
from .runner import run_experiments

COMPARISON_FIGURES = {"rl": "07_rl_methods", "plane": "07_gold_vs_kl", "dpo_bon": "07_dpo_best_of_n"}


def _seeds(args) -> list[int]:
    """The seeds ``--seeds`` and ``--first-seed`` ask for (3 by default, 1 with ``--quick``)."""
    count = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    return list(range(args.first_seed, args.first_seed + count))


def _command_line(name: str, args, seeds: list[int], workers: int, threads: int) -> str:
    """The command that reproduces a result, stored with it."""
    return (
        f"python -m ppo_lesson {name} --preset {args.preset} --seeds {len(seeds)} --first-seed {seeds[0]}"
        + (" --quick" if args.quick else "")
        + f" --workers {workers} --threads {threads}"
    )


def experiments_command(args) -> dict:
    """The ``experiments`` command: run, write experiments.json and the figures, print the report."""
    out, seeds, threads = Path(args.out), _seeds(args), args.threads or 1
    workers = args.workers if args.workers is not None else _cpu_cores()
    result = run_experiments(
        args.preset, seeds, args.quick, device=args.device, workers=workers, threads=threads,
        progress=not args.no_progress,
    )  # fmt: skip
    # only the full lesson run replaces the figures the notebook and README show
    folder = style.FIGURES_DIR if (args.preset == "lesson" and not args.quick) else out
    result["figures"] = save_figures(result, folder)
    result["command"] = _command_line("experiments", args, seeds, workers, threads)
    (out / "experiments.json").write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(
        f"\nseconds: stages {result['seconds']['stages']}, PPO runs {result['seconds']['ppo_runs']} "
        f"({len(result['runs'])} runs, {workers} worker(s) x {threads} thread(s)), total {result['seconds']['total']}"
    )
    print(f"wrote {out / 'experiments.json'} and {', '.join(result['figures'])}")
    return result


def compare_command(args) -> dict:
    """The ``compare`` command: run, write compare.json and the figures, print the report."""
    out, seeds, threads = Path(args.out), _seeds(args), args.threads or 1
    result = run_comparison(
        args.preset, seeds, args.quick, args.device, args.workers, threads, progress=not args.no_progress
    )
    full = args.preset == "lesson" and not args.quick and len(seeds) >= 3
    result["figures"] = save_comparison_figures(result, None if full else out)  # only the full run: figures/07_*
    result["command"] = _command_line("compare", args, seeds, args.workers, threads)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    print(comparison_report(result))
    print(f"\nseconds: {result['seconds_total']} ({args.workers} worker(s) x {threads} thread(s))")
    print(f"wrote {out / 'compare.json'} and {', '.join(result['figures'])}")
    return result


def save_comparison_figures(result: dict, folder=None) -> list[str]:
    """Write the three comparison figures into ``folder`` (default: ``plots.style.figures_dir()``)."""
    paths = []
    for key, fig in beyond_ppo_plots.comparison_figures(result).items():
        paths.append(str(style.save_figure(fig, COMPARISON_FIGURES[key], folder)))
        plt.close(fig)
    return paths


def _cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
