"""The experiments of notebook 06, run: every run of the plan on every seed, each one task of the
process pool, recorded with its exact settings, its per-iteration history and its final metrics."""

from __future__ import annotations

import dataclasses
import time

import torch

from ..config import Config, get_preset
from ..evaluate import evaluation_sources
from ..stats import rounded
from ..task import decode, ended_with_eos, gold_scores, source_numbers
from ..variants import EVAL_SAMPLES_PER_NUMBER, run_variant
from .plan import EXPERIMENTS, experiment_plan
from .pool import cached_stages, map_tasks, result_header, stage_facts
from .summary import summarize

HISTORY_KEYS = (
    "iteration", "gold_reward", "proxy_reward", "valid_fraction", "kl", "kl_beta",
    "approx_kl", "clipfrac", "entropy", "epochs_run",
)  # fmt: skip


def run_experiments(
    preset: str = "lesson",
    seeds=(0, 1, 2),
    quick: bool = False,
    device="cpu",
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Run the three experiments for every seed; returns the plan, a summary and every run's record.

    Each record holds the run's exact PPO settings, its per-iteration history (on-policy rollout
    metrics) and its final metrics on the fixed evaluation set."""
    start = time.perf_counter()
    seeds, device = [int(s) for s in seeds], str(device)
    plan = experiment_plan(get_preset(preset, seed=seeds[0]), quick)
    stage_tasks = [{"preset": preset, "seed": s, "device": device} for s in seeds]
    stages = map_tasks(stage_facts, stage_tasks, workers, threads, "pretrain + reward model", progress)
    seconds_stages = time.perf_counter() - start
    tasks = [
        {**run, "experiment": name, "preset": preset, "seed": s, "device": device}
        for name in EXPERIMENTS
        for run in plan[name]["runs"]
        for s in seeds
    ]
    records = map_tasks(_run_task, tasks, workers, threads, "PPO runs", progress, cost=_relative_cost)
    result = {**result_header(preset, seeds, quick, device, workers, threads, plan, stages), "runs": records}
    result["summary"] = summarize(result)
    result["seconds"] = {
        "stages": round(seconds_stages, 1),
        "ppo_runs": round(time.perf_counter() - start - seconds_stages, 1),
        "ppo_runs_sum": round(sum(r["seconds"] for r in records), 1),
        "total": round(time.perf_counter() - start, 1),
    }
    return result


def _run_task(task: dict) -> dict:
    """One PPO run on the cached stages of its seed: fine-tune, then evaluate on the fixed evaluation set."""
    cfg, policy, reward_model, _ = cached_stages(task["preset"], task["seed"], task["device"])
    run = run_variant(cfg, task["ppo"], policy, reward_model, task["device"])
    record = {
        "experiment": task["experiment"],
        "variant": task["variant"],
        "seed": task["seed"],
        "settings": {"ppo": dataclasses.asdict(run["cfg"].ppo), "seed": cfg.seed, "preset": task["preset"]},
        "history": [{k: rounded(h[k]) for k in HISTORY_KEYS} for h in run["history"]],
        "final": rounded(run["final"]),
        "seconds": round(run["seconds"], 2),
    }
    if task["experiment"] == "reward_hacking":
        record["fooled"] = rounded(fooled_samples(run["policy"], run["cfg"], reward_model))
    return record


def _relative_cost(task: dict) -> float:
    """Rough relative cost of a PPO run: iterations times (sampling + gradient steps per batch)."""
    ppo = task.get("ppo", {})
    return ppo.get("iterations", 1) * (2 + ppo.get("epochs", 4) * ppo.get("minibatches", 4) / 4)


@torch.no_grad()
def fooled_samples(policy, cfg: Config, reward_model, n: int = 5, seed: int = 1234) -> dict:
    """Answers the reward model loves and the gold scorer rejects: the highest proxy scores among
    the invalid answers (gold -1) the policy samples on the evaluation set, distinct (N, answer)."""
    device = policy.device
    src = evaluation_sources(cfg, EVAL_SAMPLES_PER_NUMBER).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = policy.eval().generate(src, cfg.task.max_target_len, temperature=cfg.ppo.temperature, generator=gen)
    gold = gold_scores(src, out.tokens, out.mask, cfg.task)
    proxy = reward_model.score(src, out.tokens, out.mask).cpu()
    finished = ended_with_eos(out.tokens, out.mask).cpu()
    numbers = source_numbers(src.cpu())
    rows, seen = [], set()
    for i in proxy.argsort(descending=True).tolist():
        key = (numbers[i], decode(out.tokens[i].cpu()))
        if gold[i] > -1 or key in seen:
            continue
        seen.add(key)
        rows.append({"N": key[0], "answer": key[1], "ended": bool(finished[i]), "proxy": round(proxy[i].item(), 3)})
        if len(rows) == n:
            break
    invalid = gold == -1
    return {
        "top": rows,
        "invalid_fraction": invalid.float().mean().item(),
        "proxy_invalid_mean": proxy[invalid].mean().item() if invalid.any() else None,
        "proxy_valid_mean": proxy[~invalid].mean().item() if (~invalid).any() else None,
    }
