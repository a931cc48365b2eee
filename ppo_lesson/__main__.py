"""Command line: ``python -m ppo_lesson run|experiments|compare|bench``. ``--help`` on each explains it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .config import MAX_SEED, PRESETS, get_preset, resolve_device


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lesson",
        description="PPO fine-tuning of a Seq2Seq Transformer from a learned reward, end to end.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    from . import bench, compare, experiments

    experiments.add_parser(sub, _add_common, _seed, _positive_int)
    compare.add_parser(sub, _add_common, _seed, _positive_int)
    bench.add_parser(sub, _add_common, _positive_int)
    return parser


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


STAGING = "unfinished"  # the folder inside --out where a run writes until it is complete (what --resume continues)
INCOMPLETE = "INCOMPLETE"  # a marker in --out while a finished run's files are moved in
RESULTS = (  # what a complete run leaves in --out; summary.json last, since it marks a complete run
    "metrics.jsonl",
    "policy_pretrained.pt",
    "reward_model.pt",
    "policy_ppo.pt",
    "ppo_curves.png",
    "gold_before_after.png",
    "summary.json",
)


class RunInterrupted(Exception):
    """The run was stopped (Ctrl-C); the message says what was kept and how to continue."""


class RunFailed(RuntimeError):
    """Training diverged or the results could not be written; the message says what was kept."""


def run_command(args) -> dict:
    """The ``run`` command: every stage, then summary.json, metrics.jsonl, checkpoints and figures.

    The run writes into ``out/unfinished/`` (with a checkpoint after every PPO iteration) and moves its
    files into ``out`` only when it is complete, so a run that fails or is interrupted leaves the
    previous results in ``out`` untouched; ``--resume out`` continues it."""
    from .pretrain import TrainingError

    out = Path(args.out)
    staging = out / STAGING
    start = time.perf_counter()
    try:
        cfg, info, models, history, seconds_ppo = (_resume if args.resume else _start)(args, staging)
        if len(history) < cfg.ppo.iterations:  # finetune_ppo caught a Ctrl-C and kept what was complete
            raise KeyboardInterrupt
        before, after, summary = _write_results(staging, cfg, info, models, history, args)
        summary["seconds_ppo"], summary["seconds_total"] = seconds_ppo, time.perf_counter() - start
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _publish(staging, out)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted. {_what_was_kept(out, staging)}") from None
    except TrainingError as err:
        message = str(err).replace("Nothing was saved from this run; try", "Try")  # the message below says what was
        raise RunFailed(f"{message} {_what_was_kept(out, staging, resumable=False)}") from None
    except OSError as err:
        raise RunFailed(f"could not write the results ({err}). {_what_was_kept(out, staging)}") from None
    _print_table(before, after, summary, out)
    return summary


def _start(args, staging: Path):
    """Train (or take from the cache) the pretrained policy and the reward model, then run PPO with a
    checkpoint in ``staging`` after every iteration. Returns (cfg, info, models, history, seconds)."""
    from .evaluate import evaluate_policy
    from .pipeline import pretrained_policy, run_ppo, trained_reward_model

    preset, seed = args.preset or "lesson", args.seed or 0
    cfg, device, progress = get_preset(preset, seed=seed), args.device, not args.no_progress
    if staging.exists():
        print(f"discarding the unfinished run in {staging} (continue one with --resume instead)")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    policy, pre = pretrained_policy(cfg, device=device, reuse=args.reuse, progress=progress)
    rm, rew = trained_reward_model(cfg, policy, device=device, reuse=args.reuse, progress=progress)
    before = evaluate_policy(policy, cfg, reference=policy, reward_model=rm, samples_per_number=16, return_scores=True)
    info = {
        "preset": preset,
        "seed": seed,
        "before": before,
        "reward_model_accuracy": rew["heldout_accuracy"],
        "from_cache": {"pretrain": pre["from_cache"], "reward_model": rew["from_cache"]},
        "seconds_pretrain": pre["seconds"],
        "seconds_reward_model": rew["seconds"],
    }
    (staging / "run.json").write_text(json.dumps(info) + "\n")
    agent, reference, history, seconds = run_ppo(
        cfg, policy, rm, device, progress, _metrics_logger(staging), checkpoint=staging / "ppo_state.pt"
    )
    return cfg, info, (agent, reference, rm), history, seconds


def _resume(args, staging: Path):
    """Continue the PPO run saved in ``staging`` (same return as ``_start``)."""
    from .pipeline import resume_ppo

    if args.preset is not None or args.seed is not None:
        raise ValueError("--resume: expected no --preset or --seed (the unfinished run's own are used)")
    if Path(args.out) != Path(args.resume):
        raise ValueError(f"--out: expected no --out with --resume (the results go to {args.resume})")
    checkpoint, run_info = staging / "ppo_state.pt", staging / "run.json"
    if not (checkpoint.is_file() and run_info.is_file()):
        raise ValueError(f"--resume: expected an unfinished run in {args.resume}, but {checkpoint} is missing")
    info = json.loads(run_info.read_text())
    cfg, agent, reference, rm, history, seconds = resume_ppo(
        checkpoint, args.device, not args.no_progress, _metrics_logger(staging)
    )
    return cfg, info, (agent, reference, rm), history, seconds


def _metrics_logger(staging: Path):
    """A callback that keeps ``staging/metrics.jsonl`` equal to the history (one line per iteration)."""

    def log(history):
        (staging / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))

    return log


def _write_results(staging: Path, cfg, info: dict, models, history: list[dict], args):
    """Evaluate the fine-tuned policy; write metrics, checkpoints and figures into ``staging``.
    Returns (before, after, summary) without the PPO timings."""
    import torch

    from . import plots
    from .checkpoints import save_checkpoint
    from .evaluate import evaluate_policy, sample_table

    agent, reference, rm = models
    before = info["before"]
    after = evaluate_policy(
        agent.policy, cfg, reference=reference, reward_model=rm, samples_per_number=16, return_scores=True
    )
    _metrics_logger(staging)(history)
    save_checkpoint(staging / "policy_pretrained.pt", reference.state_dict(), cfg, "policy")
    save_checkpoint(staging / "reward_model.pt", rm.state_dict(), cfg, "reward_model")
    save_checkpoint(staging / "policy_ppo.pt", agent.policy.state_dict(), cfg, "policy", {"iterations": len(history)})
    if history:
        plots.save_figure(plots.plot_ppo_history(history), "ppo_curves", staging)
    plots.save_figure(
        plots.plot_gold_before_after(before["gold_scores"], after["gold_scores"]), "gold_before_after", staging
    )
    plots.plt.close("all")
    summary = {
        "preset": info["preset"],
        "seed": info["seed"],
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        **{f"{key}_{when}": m[key] for key in _COMPARED for when, m in (("before", before), ("after", after))},
        "kl_to_reference": after["kl_to_reference"],
        "reward_model_accuracy": info["reward_model_accuracy"],
        "ppo_iterations": len(history),
        "interrupted": False,  # an interrupted run writes no summary: its state waits in unfinished/
        "from_cache": info["from_cache"],
        "seconds_pretrain": info["seconds_pretrain"],
        "seconds_reward_model": info["seconds_reward_model"],
        "samples_after": sample_table(agent.policy, cfg, range(cfg.task.min_number, cfg.task.max_number + 1, 5)),
        "config": cfg.to_dict(),
    }
    return before, after, summary


_COMPARED = ("gold_reward", "proxy_reward", "valid_fraction", "mean_terms", "distinct_valid")


def _publish(staging: Path, out: Path) -> None:
    """Move a complete run from ``staging`` into ``out``, replacing the previous one. While the files
    move, ``out/INCOMPLETE`` says that the folder mixes two runs; it goes once all are in place."""
    marker = out / INCOMPLETE
    marker.write_text(
        f"A run was moving its results into this folder and stopped half-way: these files may come from two "
        f"runs. Those not moved yet are in {STAGING}/; python -m ppo_lesson run --resume {out} finishes the move.\n"
    )
    for name in RESULTS:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)  # the previous run's, which this run did not make
    marker.unlink()
    shutil.rmtree(staging)


def _what_was_kept(out: Path, staging: Path, resumable: bool = True) -> str:
    """Where a stopped run left things, in words: the state of ``out`` and what ``staging`` holds."""
    from .checkpoints import CheckpointError, load_checkpoint

    if (out / INCOMPLETE).exists():
        kept = f"{out} is marked {INCOMPLETE}: it stopped while moving the new results in."
    elif (out / "summary.json").exists():
        kept = f"{out} still holds the previous complete run."
    else:
        kept = f"{out} holds no complete run."
    try:
        saved = load_checkpoint(staging / "ppo_state.pt", "ppo_state")
    except CheckpointError:
        return f"{kept} Nothing of this run was saved."
    done, total = saved["extra"]["iteration"], saved["config"]["ppo"]["iterations"]
    if not resumable:
        return f"{kept} This run's state after its last good PPO iteration ({done} of {total}) is in {staging}."
    return (
        f"{kept} This run's state after {done} of {total} PPO iterations is saved in {staging}; "
        f"continue with: python -m ppo_lesson run --resume {out}"
    )


def _print_table(before: dict, after: dict, summary: dict, out: Path) -> None:
    rows = [
        ("gold reward (hidden human)", "gold_reward"),
        ("proxy reward (reward model)", "proxy_reward"),
        ("valid answers", "valid_fraction"),
        ("terms per valid answer", "mean_terms"),
        ("distinct valid answers per N", "distinct_valid"),
        ("KL to reference (nats)", "kl_to_reference"),
    ]
    print(f"\n{'metric':<32}{'before PPO':>12}{'after PPO':>12}")
    for label, key in rows:
        print(f"{label:<32}{before[key]:>12.3f}{after[key]:>12.3f}")
    print(f"\nreward model held-out pair accuracy: {summary['reward_model_accuracy']:.3f}")
    cached = [k for k, v in summary["from_cache"].items() if v]
    print(
        f"seconds: pretrain {summary['seconds_pretrain']:.1f}, reward model {summary['seconds_reward_model']:.1f}, "
        f"ppo {summary['seconds_ppo']:.1f}, total {summary['seconds_total']:.1f}"
        + (f" (from cache: {', '.join(cached)})" if cached else "")
    )
    print(f"wrote {out}/summary.json, metrics.jsonl, checkpoints and figures")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        args.handler(args) if hasattr(args, "handler") else run_command(args)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    except RunInterrupted as err:
        parser.exit(130, f"{parser.prog} {args.command}: {err}\n")
    except RuntimeError as err:  # TrainingError, RunFailed: a non-finite loss or a failed write; says what was kept
        parser.exit(1, f"{parser.prog} {args.command}: {err}\n")
    except OSError as err:  # a write that failed after the checks (disk full): say so without a traceback
        parser.exit(1, f"{parser.prog} {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
