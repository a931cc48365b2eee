"""Command line: ``python -m ppo_lesson run|experiments|compare|bench``. ``--help`` on each explains it.

Every option of every command is declared here; each command's work lives in its own module
(``run_command``: ``run.py``, ``experiments`` and ``compare``: ``experiments/commands.py``,
``bench``: ``bench.py``)."""

from __future__ import annotations

import argparse
import sys

from .allocator import keep_freed_memory
from .bench import LENGTHS, bench_command
from .config import MAX_SEED, PRESETS, get_preset, resolve_device
from .errors import RunInterrupted
from .experiments.commands import compare_command, experiments_command
from .run import run_command


def _integer(text: str, low: int, high: int, expected: str) -> int:
    """``text`` as an integer in [low, high]; else an error argparse prints after the option's name."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, sys.maxsize, "a positive integer")


def _seed(text: str) -> int:
    return _integer(text, 0, MAX_SEED, f"an integer in [0, {MAX_SEED}]")


def _folder(text: str) -> str:
    if not text.strip():  # Path('') is the current folder: results would land among other files
        raise argparse.ArgumentTypeError(f"expected a folder path, got {text!r}")
    return text


class _ResumeInto(argparse.Action):
    """``--resume DIR`` also makes DIR the results folder."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.resume = namespace.out = values


def _add_common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument(
        "--out",
        type=_folder,
        default=out_default,
        help=f"folder for results, created if missing (default: {out_default})",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where to train: cpu (default), cuda, or auto (cuda when a GPU is present)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for PyTorch (default: PyTorch's own choice; the notebooks use 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="pretrain, train the reward model, fine-tune with PPO; write summary.json, metrics, checkpoints, figures",
        description="Run the whole RLHF pipeline: supervised pretraining, a Bradley-Terry reward model, then PPO "
        "with a KL penalty to the frozen pretrained policy. Prints a before/after table.",
    )
    run.add_argument("--preset", help=f"settings to use: one of {sorted(PRESETS)} (default: lesson)")
    run.add_argument("--seed", type=_seed, help="seed for every random choice (default: 0)")
    run.add_argument(
        "--resume",
        metavar="DIR",
        type=_folder,
        action=_ResumeInto,
        help="continue the interrupted run whose --out was DIR (from its last completed PPO iteration), with "
        "its own settings; the results go to DIR",
    )
    run.add_argument(
        "--reuse",
        action="store_true",
        help="take the pretrained policy and reward model from the stage cache when present "
        "(default: train every stage afresh, so the timings are honest)",
    )
    _add_common(run, "runs/lesson")


def _add_seeds(p: argparse.ArgumentParser) -> None:
    """The options that choose the seeds of a multi-seed command (experiments, compare)."""
    p.add_argument("--preset", default="lesson", help="settings to start from: lesson (default) or tiny")
    p.add_argument("--seeds", type=_positive_int, default=None, help="how many seeds (default: 3, or 1 with --quick)")
    p.add_argument("--first-seed", type=_seed, default=0, help="the first seed; the others count up (default: 0)")


def _add_workers(p: argparse.ArgumentParser, default: int | None, default_text: str) -> None:
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=default,
        help=f"worker processes running the runs side by side, each with --threads threads "
        f"(default: {default_text}; results do not depend on it)",
    )


def _add_experiments(sub) -> None:
    p = sub.add_parser(
        "experiments",
        help="measure PPO's claims over seeds: sample efficiency, stability, reward hacking (about 6 minutes)",
        description="Three experiments on the same pretrained policy and reward model per seed: (1) PPO against "
        "vanilla policy gradient with equal sampled answers and an equal learning-rate search, (2) clipped against "
        "unclipped surrogate with 16 steps per batch, at a third of the default learning rate and 10 times that, "
        "(3) no KL penalty, a fixed one and the "
        "adaptive controller, run long. Writes OUT/experiments.json (per-seed numbers and every run's settings) "
        "and the figures 06_sample_efficiency.png, 06_stability.png and 06_reward_hacking.png (into figures/ for "
        "the full lesson run, else into OUT).",
    )
    _add_seeds(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced version (1/3 of the iterations, one learning rate per method, fewer variants) "
        "for the notebook and tests; figures go into OUT",
    )
    _add_workers(p, None, "the number of CPU cores")
    _add_common(p, "runs/experiments")


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="PPO against PPO with V = 0, GRPO, RLOO, DPO and best-of-n on the same task and seeds (about 2 minutes)",
        description="Per seed, from the same pretrained policy and reward model: PPO with its learned critic, PPO "
        "with V = 0, GRPO and RLOO with equal sampled answers and an equal learning-rate search; DPO on the reward "
        "model's preference pairs; best-of-n for n = 1..64. Writes OUT/compare.json and the figures "
        "07_rl_methods.png, 07_gold_vs_kl.png and 07_dpo_best_of_n.png (into figures/ for the full lesson run "
        "with 3 or more seeds, else into OUT).",
    )
    _add_seeds(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced version (1/6 of the iterations, one learning rate, half of the pairs, n up to 16)",
    )
    _add_workers(p, 2, "2")
    _add_common(p, "runs/compare")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="speed: generation with and without the KV cache, one PPO iteration split up, each stage of run",
        description="Measure generation throughput with and without the KV cache, a pretraining step, one PPO "
        "iteration split into generation / scoring / bookkeeping / update, and the wall time of each stage of "
        "`run` trained afresh, and the FLOP/s of a pretraining step and a PPO update next to plain matrix products at "
        "the same shapes. Prints tables and writes OUT/bench.json.",
    )
    p.add_argument("--preset", default="lesson", help="model and stage settings: lesson (default) or tiny")
    p.add_argument(
        "--lengths",
        type=_positive_int,
        nargs="+",
        default=list(LENGTHS),
        help=f"answer lengths in tokens for the generation table (default: {' '.join(map(str, LENGTHS))})",
    )
    p.add_argument("--batch", type=_positive_int, default=128, help="answers generated at once (default: 128)")
    p.add_argument(
        "--repeats", type=_positive_int, default=5, help="timed repeats per measurement, best kept (default: 5)"
    )
    p.add_argument("--iterations", type=_positive_int, default=10, help="PPO iterations timed in table 3 (default: 10)")
    p.add_argument(
        "--skip-stages",
        action="store_true",
        help="skip table 4 (training every stage afresh, about 2 minutes for the lesson); table 3 then uses "
        "the cached stages",
    )
    _add_common(p, "runs/bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lesson",
        description="PPO fine-tuning of a Seq2Seq Transformer from a learned reward, end to end.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_run, _add_experiments, _add_compare, _add_bench):
        add_command(sub)
    return parser


def _command(name: str):
    """The function that does command ``name`` (looked up at call time, so a test can replace one)."""
    return {"run": run_command, "experiments": experiments_command, "compare": compare_command, "bench": bench_command}[
        name
    ]


def _prepare(args) -> None:
    """Check the options that can be checked before any training (the folders written to included)
    and set up threads."""
    import torch

    from .checkpoints import cache_root, check_writable_folder

    if getattr(args, "preset", None) is not None:
        get_preset(args.preset)
    if getattr(args, "first_seed", None) is not None:
        last_seed = args.first_seed + (getattr(args, "seeds", None) or 3) - 1  # 3: the default count
        if last_seed > MAX_SEED:
            raise ValueError(f"--first-seed: expected the last seed to be at most {MAX_SEED}, got {last_seed}")
    args.device = resolve_device(args.device)
    check_writable_folder(args.out, "--out")
    check_writable_folder(cache_root(), "PPO_LESSON_CACHE")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def main(argv=None) -> int:
    keep_freed_memory()  # fewer page faults a training step, the same numbers (allocator.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        _command(args.command)(args)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    except RunInterrupted as err:
        parser.exit(130, f"{parser.prog} {args.command}: {err}\n")
    except RuntimeError as err:  # TrainingError, RunFailed: a non-finite loss or a failed write; says what was kept
        parser.exit(1, f"{parser.prog} {args.command}: {err}\n")
    except OSError as err:  # a write that failed after the checks (disk full): say so without a traceback
        parser.exit(1, f"{parser.prog} {args.command}: error: {err}\n")
    return 0
