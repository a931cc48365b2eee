"""Notebook 07's comparison over seeds: PPO against the methods that drop its pieces, on one task
whose true (gold) reward is known.

Per seed, every method starts from the same pretrained policy and reward model (the cached stages):

- RL methods, with equal sampled answers per run and an equal learning-rate search (the same
  learning rates for each, best by final gold on the evaluation set, averaged over seeds): PPO
  with its learned critic, PPO with V = 0, GRPO and RLOO. The group methods sample
  ``group_size`` answers per source and so 1/group_size as many sources per iteration; epochs,
  minibatches and target_kl are PPO's.
- DPO on the preference pairs the reward model learned from (its training split), the same
  number of learning rates: gold and KL against passes over the pairs.
- Best-of-n with the reward model, n = 1 .. max_n: gold and proxy against n and against its KL bound.

The methods themselves are in ``ppo_lesson.beyond_ppo``; here each run is a task of the pool."""

from __future__ import annotations

import time

from ..best_of_n import BestOfNConfig, best_of_n_curve
from ..beyond_ppo import RL_METHODS, comparison_plan, dpo_training_pairs, train_dpo, train_rl_method
from ..config import get_preset
from ..evaluate import evaluate_policy
from ..stats import rounded
from ..variants import EVAL_SAMPLES_PER_NUMBER
from .comparison_report import summarize
from .pool import cached_stages, map_tasks, result_header, stage_facts

HISTORY_KEYS = ("gold_reward", "proxy_reward", "valid_fraction", "kl", "explained_variance")


def run_comparison(
    preset: str = "lesson", seeds=(0, 1, 2), quick: bool = False, device="cpu", workers: int = 1, threads: int = 1,
    progress: bool = True,
) -> dict:  # fmt: skip
    """Run every method on every seed; returns the plan, every run's record and the summary."""
    start = time.perf_counter()
    seeds, device = [int(s) for s in seeds], str(device)
    plan = comparison_plan(get_preset(preset, seed=seeds[0]), quick)
    base = {"preset": preset, "device": device, "plan": plan}
    stages = map_tasks(stage_facts, [{**base, "seed": s} for s in seeds], workers, threads, "compare", progress)
    tasks = [{**base, "kind": "dpo", "seed": s} for s in seeds]  # the longest first: they finish together
    tasks += [
        {**base, "kind": "rl", "method": m, "lr": lr, "seed": s}
        for lr in sorted(plan["learning_rates"], reverse=True)
        for m in RL_METHODS
        for s in seeds
    ]
    tasks += [{**base, "kind": "best_of_n", "seed": s} for s in seeds]
    records = map_tasks(_run_task, tasks, workers, threads, "compare", progress)
    result = {
        **result_header(preset, seeds, quick, device, workers, threads, plan, stages),
        **{kind: [r for r in records if r["kind"] == kind] for kind in ("rl", "dpo", "best_of_n")},
        "seconds_total": round(time.perf_counter() - start, 1),
    }
    result["summary"] = summarize(result)
    return result


def _run_task(task: dict) -> dict:
    return {"rl": _rl_task, "dpo": _dpo_task, "best_of_n": _best_of_n_task}[task["kind"]](task)


def _rl_task(task: dict) -> dict:
    """One RL method at one learning rate on one seed."""
    cfg, policy, reward_model, _ = cached_stages(task["preset"], task["seed"], task["device"])
    trained, reference, history, seconds = train_rl_method(
        task["method"], task["lr"], cfg, task["plan"], policy, reward_model, task["device"]
    )
    final = evaluate_policy(trained, cfg, reference, reward_model, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    return {
        "kind": "rl",
        "method": task["method"],
        "lr": task["lr"],
        "seed": task["seed"],
        "history": [rounded({k: h[k] for k in HISTORY_KEYS if k in h}) for h in history],
        "final": rounded(final),
        "seconds": round(seconds, 2),
    }


def _dpo_task(task: dict) -> dict:
    """DPO at every learning rate of the plan, on one seed's training pairs (collected once)."""
    cfg, policy, _, _ = cached_stages(task["preset"], task["seed"], task["device"])
    plan, device = task["plan"], task["device"]
    start = time.perf_counter()
    pairs = dpo_training_pairs(cfg, plan, policy, device)
    seconds_pairs = time.perf_counter() - start
    runs = {}
    for lr in plan["dpo"]["learning_rates"]:
        run = train_dpo(lr, cfg, plan, policy, pairs, device)
        runs[str(lr)] = {"lr": lr, "history": rounded(run["history"]), "final": rounded(run["final"])}
    return {
        "kind": "dpo",
        "seed": task["seed"],
        "pairs": len(pairs["src"]),
        "seconds_pairs": round(seconds_pairs, 2),
        "runs": runs,
    }


def _best_of_n_task(task: dict) -> dict:
    cfg, policy, reward_model, _ = cached_stages(task["preset"], task["seed"], task["device"])
    start = time.perf_counter()
    rows = best_of_n_curve(policy, reward_model, cfg, BestOfNConfig(**task["plan"]["best_of_n"]))
    return {"kind": "best_of_n", "seed": task["seed"], "rows": rounded(rows), "seconds": time.perf_counter() - start}
