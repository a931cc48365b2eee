"""Command line: ``python -m ppo_lesson run|experiments|bench``. ``--help`` on each explains it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import PRESETS, get_preset, resolve_device


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _add_common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument(
        "--out", default=out_default, help=f"folder for results, created if missing (default: {out_default})"
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
    run.add_argument("--preset", default="lesson", help=f"settings to use: one of {sorted(PRESETS)} (default: lesson)")
    run.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (default: 0)")
    run.add_argument(
        "--reuse",
        action="store_true",
        help="take the pretrained policy and reward model from the stage cache when present "
        "(default: train every stage afresh, so the timings are honest)",
    )
    _add_common(run, "runs/lesson")
    from . import bench, experiments

    experiments.add_parser(sub, _add_common, _seed, _positive_int)
    bench.add_parser(sub, _add_common, _positive_int)
    return parser


def _prepare(args) -> None:
    """Check the options that can be checked before any training and set up threads."""
    import torch

    if getattr(args, "preset", None) is not None:
        get_preset(args.preset)
    args.device = resolve_device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: expected a folder, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out: the folder {out} is not writable")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def run_command(args) -> dict:
    """The ``run`` command: every stage, then summary.json, metrics.jsonl, checkpoints and figures."""
    import torch

    from . import plots
    from .checkpoints import save_checkpoint
    from .evaluate import evaluate_policy, sample_table
    from .pipeline import pretrained_policy, run_ppo, trained_reward_model

    cfg = get_preset(args.preset, seed=args.seed)
    out, device, progress = Path(args.out), args.device, not args.no_progress
    start = time.perf_counter()
    policy, pre = pretrained_policy(cfg, device=device, reuse=args.reuse, progress=progress)
    rm, rew = trained_reward_model(cfg, policy, device=device, reuse=args.reuse, progress=progress)
    before = evaluate_policy(policy, cfg, reference=policy, reward_model=rm, samples_per_number=16, return_scores=True)

    metrics_path = out / "metrics.jsonl"
    metrics_file = metrics_path.open("w")

    def log_iteration(history):  # one line per iteration, flushed: an interrupted run keeps them
        metrics_file.write(json.dumps(history[-1]) + "\n")
        metrics_file.flush()

    try:
        agent, reference, history, seconds_ppo = run_ppo(
            cfg, policy, rm, device=device, progress=progress, callback=log_iteration
        )
    finally:
        metrics_file.close()
    after = evaluate_policy(
        agent.policy, cfg, reference=reference, reward_model=rm, samples_per_number=16, return_scores=True
    )
    seconds_total = time.perf_counter() - start

    save_checkpoint(out / "policy_pretrained.pt", policy.state_dict(), cfg, "policy")
    save_checkpoint(out / "reward_model.pt", rm.state_dict(), cfg, "reward_model")
    save_checkpoint(out / "policy_ppo.pt", agent.policy.state_dict(), cfg, "policy", {"iterations": len(history)})
    if history:
        plots.save_figure(plots.plot_ppo_history(history), "ppo_curves", out)
    plots.save_figure(
        plots.plot_gold_before_after(before["gold_scores"], after["gold_scores"]), "gold_before_after", out
    )
    plots.plt.close("all")

    summary = {
        "preset": args.preset,
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "gold_reward_before": before["gold_reward"],
        "gold_reward_after": after["gold_reward"],
        "proxy_reward_before": before["proxy_reward"],
        "proxy_reward_after": after["proxy_reward"],
        "valid_fraction_before": before["valid_fraction"],
        "valid_fraction_after": after["valid_fraction"],
        "mean_terms_before": before["mean_terms"],
        "mean_terms_after": after["mean_terms"],
        "distinct_valid_before": before["distinct_valid"],
        "distinct_valid_after": after["distinct_valid"],
        "kl_to_reference": after["kl_to_reference"],
        "reward_model_accuracy": rew["heldout_accuracy"],
        "ppo_iterations": len(history),
        "interrupted": len(history) < cfg.ppo.iterations,
        "from_cache": {"pretrain": pre["from_cache"], "reward_model": rew["from_cache"]},
        "seconds_pretrain": pre["seconds"],
        "seconds_reward_model": rew["seconds"],
        "seconds_ppo": seconds_ppo,
        "seconds_total": seconds_total,
        "samples_after": sample_table(agent.policy, cfg, range(cfg.task.min_number, cfg.task.max_number + 1, 5)),
        "config": cfg.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_table(before, after, summary, out)
    return summary


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
    if summary["interrupted"]:
        print(f"interrupted after {summary['ppo_iterations']} PPO iterations; results so far are saved")
    print(f"wrote {out}/summary.json, metrics.jsonl, checkpoints and figures")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        args.handler(args) if hasattr(args, "handler") else run_command(args)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    except RuntimeError as err:  # TrainingError: a non-finite loss; nothing was saved from it
        parser.exit(1, f"{parser.prog} {args.command}: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
