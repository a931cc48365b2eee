"""One task = one run, spread over worker processes of a few threads each. A worker trains (or loads
from the stage cache) each seed's pretrained policy and reward model once and keeps them for the
seed's other runs. Runs are independent given their settings (every generator is seeded from the
config), so the numbers do not depend on how many workers there are."""

from __future__ import annotations

import multiprocessing
import time
from functools import cache

import torch

from ..allocator import keep_freed_memory
from ..config import get_preset
from ..evaluate import evaluate_policy
from ..pipeline import pretrained_policy, trained_reward_model
from ..progress import progress_bar
from ..stats import rounded
from ..variants import EVAL_SAMPLES_PER_NUMBER


@cache
def cached_stages(preset: str, seed: int, device: str):
    """(cfg, pretrained policy, reward model, their training facts) of one seed, once per process."""
    cfg = get_preset(preset, seed=seed)
    policy, pretrain_info = pretrained_policy(cfg, device=device, progress=False)
    reward_model, reward_info = trained_reward_model(cfg, policy, device=device, progress=False)
    return cfg, policy, reward_model, {"pretrain": pretrain_info, "reward": reward_info}


def stage_facts(task: dict) -> dict:
    """Train (or load) one seed's pretrained policy and reward model; returns their facts and the
    pretrained policy's metrics on the evaluation set."""
    start = time.perf_counter()
    cfg, policy, reward_model, info = cached_stages(task["preset"], task["seed"], task["device"])
    before = evaluate_policy(policy, cfg, policy, reward_model, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    return {
        "seed": task["seed"],
        "from_cache": {"pretrain": info["pretrain"]["from_cache"], "reward_model": info["reward"]["from_cache"]},
        "reward_model_accuracy": round(info["reward"]["heldout_accuracy"], 4),
        "before": rounded(before),
        "seconds": time.perf_counter() - start,
    }


def _start_worker(threads: int) -> None:
    """What a worker process does first: the command line's malloc settings (allocator.py), its threads."""
    keep_freed_memory()
    torch.set_num_threads(threads)


def result_header(preset: str, seeds, quick: bool, device, workers: int, threads: int, plan: dict, stages) -> dict:
    """What every multi-seed result starts with: how it was run, its plan and each seed's stages."""
    return {
        "preset": preset,
        "seeds": seeds,
        "quick": quick,
        "device": device,
        "workers": workers,
        "threads_per_worker": threads,
        "rollout_batch": get_preset(preset, seed=seeds[0]).ppo.rollout_batch,
        "plan": plan,
        "stages": stages,
    }


def map_tasks(fn, tasks: list[dict], workers: int, threads: int, desc: str, progress: bool, cost=None) -> list:
    """Results of ``fn`` over ``tasks`` (in the tasks' order), in-process or over worker processes;
    ``cost(task)``, if given, a rough relative cost: the costliest start first, so all finish together."""
    bar = progress_bar(desc=desc, total=len(tasks), enabled=progress)
    results = [None] * len(tasks)
    if workers <= 1 or len(tasks) <= 1:
        torch.set_num_threads(threads)
        for i, task in enumerate(tasks):
            results[i] = fn(task)
            bar.update()
    else:
        order = sorted(range(len(tasks)), key=lambda i: -cost(tasks[i])) if cost else list(range(len(tasks)))
        # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_start_worker, initargs=(threads,)) as pool:
            for i, result in zip(order, pool.imap(fn, [tasks[i] for i in order])):
                results[i] = result
                bar.update()
    bar.close()
    return results
