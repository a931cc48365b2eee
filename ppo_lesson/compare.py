"""PPO against the methods that drop its pieces, on one task whose true (gold) reward is known:
``python -m ppo_lesson compare``.

Per seed, every method starts from the same pretrained policy and reward model (the cached stages):

- RL methods, with equal sampled answers per run and an equal learning-rate search (the same
  learning rates for each, best by final gold on the evaluation set, averaged over seeds): PPO
  with its learned critic, PPO with V = 0, GRPO and RLOO. The group methods sample
  ``group_size`` answers per source and so 1/group_size as many sources per iteration; epochs,
  minibatches and target_kl are PPO's.
- DPO on the preference pairs the reward model learned from (its training split), the same
  number of learning rates: gold and KL against passes over the pairs.
- Best-of-n with the reward model, n = 1 .. max_n: gold and proxy against n and against its KL bound.

Runs are independent given their settings (each seeds its own generators), so they are spread
over worker processes of one thread each; the numbers do not depend on how many.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import time
from functools import cache
from pathlib import Path

import torch

from .best_of_n import BestOfNConfig, best_of_n_curve
from .compare_report import RL_METHODS, report, rounded, summarize
from .config import Config, PPOConfig, get_preset, set_seed
from .dpo import DPOConfig, finetune_dpo
from .evaluate import evaluate_policy
from .grpo import GRPOConfig, finetune_grpo
from .pipeline import pretrained_policy, run_ppo, trained_reward_model
from .progress import progress_bar
from .reward import collect_preferences, split_pairs
from .rloo import RLOOConfig, finetune_rloo

FIGURES = {"rl": "07_rl_methods", "plane": "07_gold_vs_kl", "dpo_bon": "07_dpo_best_of_n"}
HISTORY_KEYS = ("gold_reward", "proxy_reward", "valid_fraction", "kl", "explained_variance")
EVAL_SAMPLES_PER_NUMBER = 8  # final evaluation: every source number this many times (as notebook 06)


def ppo_without_critic() -> dict:
    """PPO settings for "V = 0": ``use_critic=False`` where ``PPOConfig`` has that field; otherwise
    ``vf_coef=0``, which keeps the zero-initialized value head exactly at 0 (the value loss is its
    only gradient, and Adam moves nothing whose gradients are all 0)."""
    if "use_critic" in {f.name for f in dataclasses.fields(PPOConfig)}:
        return {"use_critic": False}
    return {"vf_coef": 0.0}


def comparison_plan(cfg: Config, quick: bool = False) -> dict:
    """Every method's settings. Full: the preset's PPO iterations (60 for the lesson, 7680 answers
    per run, notebook 05's budget), two learning rates per RL method, two for DPO (an Adam step
    on a whole answer's log-probability moves the policy more than PPO's clipped token steps,
    so its grid sits lower) over two passes of all the reward model's training pairs, best-of-n
    up to 64; ``quick``: a sixth of the iterations, one learning rate each, one DPO pass over a
    quarter of the pairs, best-of-n up to 16."""
    iterations = max(1, round(cfg.ppo.iterations / 6)) if quick else cfg.ppo.iterations
    group_size = 4
    if cfg.ppo.rollout_batch % group_size:
        raise ValueError(
            f"ppo.rollout_batch: expected a multiple of group_size={group_size}, got {cfg.ppo.rollout_batch}"
        )
    shared = {
        "iterations": iterations,
        "sources_per_iteration": cfg.ppo.rollout_batch // group_size,
        "group_size": group_size,
        "epochs": cfg.ppo.epochs,
        "minibatches": cfg.ppo.minibatches,
        "clip_eps": cfg.ppo.clip_eps,
        "target_kl": cfg.ppo.target_kl,
        "max_grad_norm": cfg.ppo.max_grad_norm,
        "temperature": cfg.ppo.temperature,
    }
    return {
        "iterations": iterations,
        "answers_per_run": iterations * cfg.ppo.rollout_batch,
        "learning_rates": [1e-4] if quick else [3e-5, 1e-4],
        "group": shared,
        "ppo_without_critic": ppo_without_critic(),
        "dpo": {"learning_rates": [1e-5] if quick else [3e-6, 1e-5], "epochs": 1 if quick else 2},
        "dpo_pair_fraction": 0.25 if quick else 1.0,
        "best_of_n": {"max_n": 16 if quick else 64, "samples_per_number": 2 if quick else 4},
    }


# ----- one task per run; worker processes load each seed's cached stages once -----


@cache
def _stages(preset: str, seed: int, device: str):
    cfg = get_preset(preset, seed=seed)
    policy, pretrain_info = pretrained_policy(cfg, device=device, progress=False)
    reward_model, reward_info = trained_reward_model(cfg, policy, device=device, progress=False)
    return cfg, policy, reward_model, {"pretrain": pretrain_info, "reward": reward_info}


def _stage_task(task: dict) -> dict:
    """Train (or load) one seed's pretrained policy and reward model; returns their facts."""
    _, _, _, info = _stages(task["preset"], task["seed"], task["device"])
    return {
        "kind": "stages",
        "seed": task["seed"],
        "from_cache": {"pretrain": info["pretrain"]["from_cache"], "reward_model": info["reward"]["from_cache"]},
        "reward_model_accuracy": round(info["reward"]["heldout_accuracy"], 4),
    }


def _train_rl(method: str, lr: float, cfg: Config, plan: dict, policy, reward_model, device):
    """One RL run from copies of ``policy``; returns (trained policy, reference, history, seconds)."""
    if method in ("ppo", "ppo_v0"):
        critic = plan["ppo_without_critic"] if method == "ppo_v0" else {}
        run_cfg = cfg.replace(ppo={"lr": lr, "iterations": plan["iterations"], **critic})
        agent, reference, history, seconds = run_ppo(run_cfg, policy, reward_model, device=device, progress=False)
        return agent.policy, reference, history, seconds
    set_seed(cfg.seed + 2)
    reference, trained = copy.deepcopy(policy).eval(), copy.deepcopy(policy)
    start = time.perf_counter()
    if method == "grpo":
        history = finetune_grpo(
            trained, reference, reward_model, cfg, GRPOConfig(lr=lr, **plan["group"]), device, progress=False
        )
    else:
        history = finetune_rloo(
            trained, reference, reward_model, cfg, RLOOConfig(lr=lr, **plan["group"]), device, progress=False
        )
    return trained, reference, history, time.perf_counter() - start


def _rl_task(task: dict) -> dict:
    cfg, policy, reward_model, _ = _stages(task["preset"], task["seed"], task["device"])
    trained, reference, history, seconds = _train_rl(
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
    cfg, policy, _, _ = _stages(task["preset"], task["seed"], task["device"])
    plan = task["plan"]
    start = time.perf_counter()
    fraction = plan["dpo_pair_fraction"]  # below 1: the first pairs of the same stream, fewer of them
    pair_cfg = cfg.replace(reward={"n_pairs": max(10, round(fraction * cfg.reward.n_pairs))}) if fraction < 1 else cfg
    pairs = collect_preferences(policy, pair_cfg, device=task["device"])
    train, _ = split_pairs(pairs, cfg.reward.heldout_fraction, cfg.seed)  # fraction 1: the reward model's own split
    keep = len(train["src"])
    seconds_pairs = time.perf_counter() - start
    runs = {}
    for lr in plan["dpo"]["learning_rates"]:
        set_seed(cfg.seed + 2)
        trained, reference = copy.deepcopy(policy), copy.deepcopy(policy).eval()
        dpo_cfg = DPOConfig(lr=lr, epochs=plan["dpo"]["epochs"])
        history = finetune_dpo(trained, reference, train, cfg, dpo_cfg, device=task["device"], progress=False)
        final = evaluate_policy(trained, cfg, reference, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
        runs[str(lr)] = {"lr": lr, "history": rounded(history), "final": rounded(final)}
    return {"kind": "dpo", "seed": task["seed"], "pairs": keep, "seconds_pairs": round(seconds_pairs, 2), "runs": runs}


def _best_of_n_task(task: dict) -> dict:
    cfg, policy, reward_model, _ = _stages(task["preset"], task["seed"], task["device"])
    start = time.perf_counter()
    rows = best_of_n_curve(policy, reward_model, cfg, BestOfNConfig(**task["plan"]["best_of_n"]))
    return {"kind": "best_of_n", "seed": task["seed"], "rows": rounded(rows), "seconds": time.perf_counter() - start}


def _run_task(task: dict) -> dict:
    return {"stages": _stage_task, "rl": _rl_task, "dpo": _dpo_task, "best_of_n": _best_of_n_task}[task["kind"]](task)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _map_tasks(tasks: list[dict], workers: int, threads: int, progress: bool) -> list[dict]:
    """``_run_task`` over ``tasks`` in their order, in-process or over spawned worker processes
    (spawn, not fork: a forked child of a process that already ran torch's thread pool can hang)."""
    bar = progress_bar(desc="compare", total=len(tasks), enabled=progress)
    if workers <= 1:
        torch.set_num_threads(threads)
        results = []
        for task in tasks:
            results.append(_run_task(task))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (threads,)) as pool:
            results = []
            for result in pool.imap(_run_task, tasks):
                results.append(result)
                bar.update()
    bar.close()
    return results


def run_comparison(
    preset: str = "lesson", seeds=(0, 1, 2), quick: bool = False, device="cpu", workers: int = 1, threads: int = 1,
    progress: bool = True,
) -> dict:  # fmt: skip
    """Run every method on every seed; returns the plan, every run's record and the summary."""
    start = time.perf_counter()
    seeds, device = [int(s) for s in seeds], str(device)
    plan = comparison_plan(get_preset(preset, seed=seeds[0]), quick)
    base = {"preset": preset, "device": device, "plan": plan}
    stages = _map_tasks([{**base, "kind": "stages", "seed": s} for s in seeds], workers, threads, progress)
    tasks = [{**base, "kind": "dpo", "seed": s} for s in seeds]  # the longest first: they finish together
    tasks += [
        {**base, "kind": "rl", "method": m, "lr": lr, "seed": s}
        for lr in sorted(plan["learning_rates"], reverse=True)
        for m in RL_METHODS
        for s in seeds
    ]
    tasks += [{**base, "kind": "best_of_n", "seed": s} for s in seeds]
    records = _map_tasks(tasks, workers, threads, progress)
    cfg = get_preset(preset, seed=seeds[0])
    result = {
        "preset": preset,
        "seeds": seeds,
        "quick": quick,
        "device": device,
        "workers": workers,
        "threads_per_worker": threads,
        "rollout_batch": cfg.ppo.rollout_batch,
        "plan": plan,
        "stages": stages,
        "rl": [r for r in records if r["kind"] == "rl"],
        "dpo": [r for r in records if r["kind"] == "dpo"],
        "best_of_n": [r for r in records if r["kind"] == "best_of_n"],
        "seconds_total": round(time.perf_counter() - start, 1),
    }
    result["summary"] = summarize(result)
    return result


def save_figures(result: dict, folder=None) -> list[str]:
    """Write the three comparison figures into ``folder`` (default: ``plots.figures_dir()``)."""
    from . import compare_plots, plots

    paths = []
    for key, fig in compare_plots.comparison_figures(result).items():
        paths.append(str(plots.save_figure(fig, FIGURES[key], folder)))
        plots.plt.close(fig)
    return paths


def compare_command(args) -> dict:
    """The ``compare`` command: run, write compare.json and the figures, print the report."""
    out = Path(args.out)
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    threads = args.threads or 1
    result = run_comparison(
        args.preset, seeds, args.quick, args.device, args.workers, threads, progress=not args.no_progress
    )
    full = args.preset == "lesson" and not args.quick and n_seeds >= 3
    result["figures"] = save_figures(result, None if full else out)  # only the full run replaces figures/07_*
    result["command"] = (
        f"python -m ppo_lesson compare --preset {args.preset} --seeds {n_seeds} --first-seed {seeds[0]}"
        + (" --quick" if args.quick else "")
        + f" --workers {args.workers} --threads {threads}"
    )
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(f"\nseconds: {result['seconds_total']} ({args.workers} worker(s) x {threads} thread(s))")
    print(f"wrote {out / 'compare.json'} and {', '.join(result['figures'])}")
    return result


def add_parser(sub, add_common, seed_type, positive_int) -> None:
    """The ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="PPO against PPO with V = 0, GRPO, RLOO, DPO and best-of-n on the same task and seeds (about 10 minutes)",
        description="Per seed, from the same pretrained policy and reward model: PPO with its learned critic, PPO "
        "with V = 0, GRPO and RLOO with equal sampled answers and an equal learning-rate search; DPO on the reward "
        "model's preference pairs; best-of-n for n = 1..64. Writes OUT/compare.json and the figures "
        "07_rl_methods.png, 07_gold_vs_kl.png and 07_dpo_best_of_n.png (into figures/ for the full lesson run "
        "with 3 or more seeds, else into OUT).",
    )
    p.add_argument("--preset", default="lesson", help="settings to start from: lesson (default) or tiny")
    p.add_argument("--seeds", type=positive_int, default=None, help="how many seeds (default: 3, or 1 with --quick)")
    p.add_argument("--first-seed", type=seed_type, default=0, help="the first seed; the others count up (default: 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced version (1/6 of the iterations, one learning rate, a quarter of the pairs, n up to 16)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes side by side, each with --threads threads (default: 2; results do not depend on it)",
    )
    add_common(p, "runs/compare")
    p.set_defaults(handler=compare_command)
