"""Notebook 07's methods side by side: PPO with its learned critic, PPO with V = 0, GRPO, RLOO, DPO and
best-of-n, each started from the same pretrained policy and reward model with the budget of one plan.

``run_methods`` runs every method once, in this process, for one seed; ``python -m ppo_lesson compare``
runs the same functions over seeds and learning rates in worker processes."""

from __future__ import annotations

import copy
import time

from .best_of_n import BestOfNConfig, best_of_n_curve
from .config import Config, set_seed
from .dpo import DPOConfig, finetune_dpo
from .evaluate import evaluate_policy
from .grpo import GRPOConfig, finetune_grpo
from .pipeline import run_ppo
from .reward import collect_preferences, split_pairs
from .rloo import RLOOConfig, finetune_rloo
from .stages import seed_for
from .variants import EVAL_SAMPLES_PER_NUMBER, ppo_without_critic

RL_METHODS = {"ppo": "PPO (learned critic)", "ppo_v0": "PPO, V = 0", "grpo": "GRPO", "rloo": "RLOO"}
GROUP_SIZE = 4  # answers per source for GRPO and RLOO


def comparison_plan(cfg: Config, quick: bool = False) -> dict:
    """Every method's settings. Full: the preset's PPO iterations (60 for the lesson, 7680 answers
    per run, notebook 05's budget), two learning rates per RL method (the preset's and 3 times it),
    two for DPO (an Adam step on a whole answer's log-probability moves the policy more than PPO's
    clipped token steps, so its grid sits lower) over two passes of all the reward model's training
    pairs, best-of-n up to 64; ``quick``: a sixth of the iterations, one learning rate each, one DPO
    pass over half of the pairs, best-of-n up to 16."""
    iterations = max(1, round(cfg.ppo.iterations / 6)) if quick else cfg.ppo.iterations
    if cfg.ppo.rollout_batch % GROUP_SIZE:
        raise ValueError(
            f"ppo.rollout_batch: expected a multiple of group_size={GROUP_SIZE}, got {cfg.ppo.rollout_batch}"
        )
    shared = {
        "iterations": iterations,
        "sources_per_iteration": cfg.ppo.rollout_batch // GROUP_SIZE,
        "group_size": GROUP_SIZE,
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
        "learning_rates": [cfg.ppo.lr] if quick else [cfg.ppo.lr, round(3 * cfg.ppo.lr, 10)],
        "group": shared,
        "ppo_without_critic": ppo_without_critic(),
        "dpo": {"learning_rates": [1e-5] if quick else [3e-6, 1e-5], "epochs": 1 if quick else 2},
        "dpo_pair_fraction": 0.5 if quick else 1.0,
        "best_of_n": {"max_n": 16 if quick else 64, "samples_per_number": 2 if quick else 4},
    }


def train_rl_method(method: str, lr: float, cfg: Config, plan: dict, policy, reward_model, device="cpu"):
    """One RL run (a key of ``RL_METHODS``) from copies of ``policy``; returns (trained policy,
    reference, history, seconds)."""
    if method in ("ppo", "ppo_v0"):
        critic = plan["ppo_without_critic"] if method == "ppo_v0" else {}
        run_cfg = cfg.replace(ppo={"lr": lr, "iterations": plan["iterations"], **critic})
        agent, reference, history, seconds = run_ppo(run_cfg, policy, reward_model, device=device, progress=False)
        return agent.policy, reference, history, seconds
    set_seed(seed_for(cfg, "ppo_setup"))
    reference, trained = copy.deepcopy(policy).eval(), copy.deepcopy(policy)
    finetune, group_cfg = (finetune_grpo, GRPOConfig) if method == "grpo" else (finetune_rloo, RLOOConfig)
    start = time.perf_counter()
    history = finetune(trained, reference, reward_model, cfg, group_cfg(lr=lr, **plan["group"]), device, progress=False)
    return trained, reference, history, time.perf_counter() - start


def dpo_training_pairs(cfg: Config, plan: dict, policy, device="cpu") -> dict:
    """The preference pairs DPO trains on: the reward model's own training split (fraction 1), or the
    first pairs of the same stream, fewer of them."""
    fraction = plan["dpo_pair_fraction"]
    pair_cfg = cfg.replace(reward={"n_pairs": max(10, round(fraction * cfg.reward.n_pairs))}) if fraction < 1 else cfg
    pairs = collect_preferences(policy, pair_cfg, device=device)
    train, _ = split_pairs(pairs, cfg.reward.heldout_fraction, cfg.seed)
    return train


def train_dpo(lr: float, cfg: Config, plan: dict, policy, pairs: dict, device="cpu") -> dict:
    """DPO at learning rate ``lr`` from a copy of ``policy``; returns its history and final metrics."""
    set_seed(seed_for(cfg, "ppo_setup"))
    trained, reference = copy.deepcopy(policy), copy.deepcopy(policy).eval()
    dpo_cfg = DPOConfig(lr=lr, epochs=plan["dpo"]["epochs"])
    history = finetune_dpo(trained, reference, pairs, cfg, dpo_cfg, device=device, progress=False)
    final = evaluate_policy(trained, cfg, reference, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    return {"lr": lr, "history": history, "final": final}


def run_methods(cfg: Config, plan: dict, policy, reward_model, device="cpu") -> dict:
    """Every method once for ``cfg.seed``, at the first learning rate of each grid, in this process:
    {"rl": {method: {"history", "final"}}, "dpo": {"lr", "history", "final"}, "best_of_n": rows}."""
    rl = {}
    for method in RL_METHODS:
        trained, reference, history, _ = train_rl_method(
            method, plan["learning_rates"][0], cfg, plan, policy, reward_model, device
        )
        final = evaluate_policy(trained, cfg, reference, reward_model, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
        rl[method] = {"history": history, "final": final}
    pairs = dpo_training_pairs(cfg, plan, policy, device)
    dpo = train_dpo(plan["dpo"]["learning_rates"][0], cfg, plan, policy, pairs, device)
    best_of_n = best_of_n_curve(policy, reward_model, cfg, BestOfNConfig(**plan["best_of_n"]))
    return {"rl": rl, "dpo": dpo, "best_of_n": best_of_n}
