"""The ``run`` command: every stage of the lesson, then summary.json, metrics.jsonl, checkpoints and figures
in the results folder (``results.py`` keeps a stopped run from touching the previous results)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .checkpoints import save_checkpoint
from .config import get_preset
from .errors import RunFailed, RunInterrupted, TrainingError
from .evaluate import evaluate_policy, sample_table
from .pipeline import pretrained_policy, resume_ppo, run_ppo, trained_reward_model
from .plots import ppo_loop, style
from .results import STAGING, publish, what_was_kept

COMPARED = ("gold_reward", "proxy_reward", "valid_fraction", "mean_terms", "distinct_valid")  # before and after PPO
TABLE_ROWS = (  # the printed before/after table: label, metric
    ("gold reward (hidden human)", "gold_reward"),
    ("proxy reward (reward model)", "proxy_reward"),
    ("valid answers", "valid_fraction"),
    ("terms per valid answer", "mean_terms"),
    ("distinct valid answers per N", "distinct_valid"),
    ("KL to reference (nats)", "kl_to_reference"),
)


def run_command(args) -> dict:
    """The ``run`` command: train (or resume) into ``out/unfinished/``, write the results there, move
    them into ``out`` once complete, print the before/after table. Returns the summary."""
    out = Path(args.out)
    staging = out / STAGING
    start = time.perf_counter()
    try:
        cfg, info, models, history, seconds_ppo = (_resume if args.resume else _start)(args, staging)
        if len(history) < cfg.ppo.iterations:  # finetune_ppo caught a Ctrl-C and kept what was complete
            raise KeyboardInterrupt
        after = _evaluate_after(cfg, models)
        _save_models_and_figures(staging, cfg, info, models, history, after)
        summary = _summary(cfg, info, after, models, history, args.device)
        summary["seconds_ppo"], summary["seconds_total"] = seconds_ppo, time.perf_counter() - start
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        publish(staging, out)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted. {what_was_kept(out, staging)}") from None
    except TrainingError as err:
        message = str(err).replace("Nothing was saved from this run; try", "Try")  # the message below says what was
        raise RunFailed(f"{message} {what_was_kept(out, staging, resumable=False)}") from None
    except OSError as err:
        raise RunFailed(f"could not write the results ({err}). {what_was_kept(out, staging)}") from None
    _print_table(info["before"], after, summary, out)
    return summary


def _start(args, staging: Path):
    """Train (or take from the cache) the pretrained policy and the reward model, then run PPO with a
    checkpoint in ``staging`` after every iteration. Returns (cfg, info, models, history, seconds)."""
    preset, seed = args.preset or "lesson", args.seed or 0
    cfg, device, progress = get_preset(preset, seed=seed), args.device, not args.no_progress
    if staging.exists():
        print(f"discarding the unfinished run in {staging} (continue one with --resume instead)")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    policy, pretrain_info = pretrained_policy(cfg, device=device, reuse=args.reuse, progress=progress)
    rm, reward_info = trained_reward_model(cfg, policy, device=device, reuse=args.reuse, progress=progress)
    before = evaluate_policy(policy, cfg, reference=policy, reward_model=rm, samples_per_number=16, return_scores=True)
    info = {
        "preset": preset,
        "seed": seed,
        "before": before,
        "reward_model_accuracy": reward_info["heldout_accuracy"],
        "from_cache": {"pretrain": pretrain_info["from_cache"], "reward_model": reward_info["from_cache"]},
        "seconds_pretrain": pretrain_info["seconds"],
        "seconds_reward_model": reward_info["seconds"],
    }
    (staging / "run.json").write_text(json.dumps(info) + "\n")
    agent, reference, history, seconds = run_ppo(
        cfg, policy, rm, device, progress, _metrics_logger(staging), checkpoint=staging / "ppo_state.pt"
    )
    return cfg, info, (agent, reference, rm), history, seconds


def _resume(args, staging: Path):
    """Continue the PPO run saved in ``staging`` (same return as ``_start``)."""
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


def _evaluate_after(cfg, models) -> dict:
    """The fine-tuned policy on the evaluation set, as ``before`` was measured (scores kept for the figure)."""
    agent, reference, rm = models
    return evaluate_policy(
        agent.policy, cfg, reference=reference, reward_model=rm, samples_per_number=16, return_scores=True
    )


def _save_models_and_figures(staging: Path, cfg, info: dict, models, history: list[dict], after: dict) -> None:
    """metrics.jsonl, the three checkpoints and the two figures, into ``staging``."""
    agent, reference, rm = models
    _metrics_logger(staging)(history)
    save_checkpoint(staging / "policy_pretrained.pt", reference.state_dict(), cfg, "policy")
    save_checkpoint(staging / "reward_model.pt", rm.state_dict(), cfg, "reward_model")
    save_checkpoint(staging / "policy_ppo.pt", agent.policy.state_dict(), cfg, "policy", {"iterations": len(history)})
    if history:
        style.save_figure(ppo_loop.plot_ppo_history(history), "ppo_curves", staging)
    gold_figure = ppo_loop.plot_gold_before_after(info["before"]["gold_scores"], after["gold_scores"])
    style.save_figure(gold_figure, "gold_before_after", staging)
    plt.close("all")


def _summary(cfg, info: dict, after: dict, models, history: list[dict], device) -> dict:
    """What summary.json holds, without the PPO timings."""
    before, policy = info["before"], models[0].policy
    return {
        "preset": info["preset"],
        "seed": info["seed"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        **{f"{key}_{when}": m[key] for key in COMPARED for when, m in (("before", before), ("after", after))},
        "kl_to_reference": after["kl_to_reference"],
        "reward_model_accuracy": info["reward_model_accuracy"],
        "ppo_iterations": len(history),
        "interrupted": False,  # an interrupted run writes no summary: its state waits in unfinished/
        "from_cache": info["from_cache"],
        "seconds_pretrain": info["seconds_pretrain"],
        "seconds_reward_model": info["seconds_reward_model"],
        "samples_after": sample_table(policy, cfg, range(cfg.task.min_number, cfg.task.max_number + 1, 5)),
        "config": cfg.to_dict(),
    }


def _print_table(before: dict, after: dict, summary: dict, out: Path) -> None:
    print(f"\n{'metric':<32}{'before PPO':>12}{'after PPO':>12}")
    for label, key in TABLE_ROWS:
        print(f"{label:<32}{before[key]:>12.3f}{after[key]:>12.3f}")
    print(f"\nreward model held-out pair accuracy: {summary['reward_model_accuracy']:.3f}")
    cached = [k for k, v in summary["from_cache"].items() if v]
    print(
        f"seconds: pretrain {summary['seconds_pretrain']:.1f}, reward model {summary['seconds_reward_model']:.1f}, "
        f"ppo {summary['seconds_ppo']:.1f}, total {summary['seconds_total']:.1f}"
        + (f" (from cache: {', '.join(cached)})" if cached else "")
    )
    print(f"wrote {out}/summary.json, metrics.jsonl, checkpoints and figures")
