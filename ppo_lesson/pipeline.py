"""The RLHF recipe as three stages: pretrain, reward model, PPO. Each of the first two is cached
(see ``checkpoints.stage_path``) so notebooks build on each other without training twice."""

from __future__ import annotations

import copy
import time

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint, stage_path
from .config import Config, resolve_device, set_seed
from .evaluate import evaluate_policy
from .model import Seq2SeqTransformer
from .ppo import PPOAgent, finetune_ppo
from .pretrain import pretrain
from .reward import (
    RewardModel,
    collect_preferences,
    normalize_reward_model,
    reward_model_from_policy,
    train_reward_model,
)


def pretrained_policy(cfg: Config, device="cpu", reuse: bool = True, progress: bool = True, callback=None):
    """The supervised policy: from the cache when ``reuse`` and present, else trained and cached.

    Returns (policy, info) with info = {from_cache, seconds, history, metrics}."""
    device = resolve_device(device)
    path = stage_path(cfg, "pretrain")
    if reuse and path.exists():
        try:
            payload = load_checkpoint(path, "policy", cfg, sections=("task", "model", "pretrain"))
            policy = Seq2SeqTransformer(cfg.model)
            policy.load_state_dict(payload["state_dict"])
            return policy.to(device).eval(), {**payload["extra"], "from_cache": True, "seconds": 0.0}
        except CheckpointError as err:
            print(f"cache: ignoring {path.name} ({err}); training again")
    set_seed(cfg.seed)
    start = time.perf_counter()
    policy = Seq2SeqTransformer(cfg.model).to(device)
    history = pretrain(policy, cfg, device=device, callback=callback, progress=progress)
    seconds = time.perf_counter() - start
    metrics = evaluate_policy(policy, cfg)
    info = {"history": history, "metrics": metrics, "train_seconds": seconds}
    save_checkpoint(path, policy.state_dict(), cfg, "policy", info)
    return policy.eval(), {**info, "from_cache": False, "seconds": seconds}


def trained_reward_model(
    cfg: Config, policy: Seq2SeqTransformer, device="cpu", reuse: bool = True, progress: bool = True, callback=None
):
    """The Bradley-Terry reward model on pairs sampled from ``policy``, normalized on its samples.

    Returns (reward_model, info) with info = {from_cache, seconds, history, heldout_accuracy, ...}."""
    device = resolve_device(device)
    path = stage_path(cfg, "reward")
    if reuse and path.exists():
        try:
            payload = load_checkpoint(path, "reward_model", cfg, sections=("task", "model", "pretrain", "reward"))
            rm = RewardModel(cfg.model)
            rm.load_state_dict(payload["state_dict"])
            return rm.to(device).eval(), {**payload["extra"], "from_cache": True, "seconds": 0.0}
        except CheckpointError as err:
            print(f"cache: ignoring {path.name} ({err}); training again")
    set_seed(cfg.seed + 1)
    start = time.perf_counter()
    pairs = collect_preferences(policy, cfg, device=device)
    rm = reward_model_from_policy(policy) if cfg.reward.init_from_policy else RewardModel(cfg.model).to(device)
    result = train_reward_model(rm, pairs, cfg, device=device, callback=callback, progress=progress)
    result["normalization"] = normalize_reward_model(rm, policy, cfg, device=device)
    result["n_pairs"] = len(pairs["src"])
    seconds = time.perf_counter() - start
    result["train_seconds"] = seconds
    save_checkpoint(path, rm.state_dict(), cfg, "reward_model", result)
    return rm.eval(), {**result, "from_cache": False, "seconds": seconds}


def run_ppo(
    cfg: Config, policy: Seq2SeqTransformer, reward_model: RewardModel, device="cpu", progress=True, callback=None
):
    """Fine-tune a copy of ``policy`` with PPO against ``reward_model``; the original stays the
    frozen reference. Returns (agent, reference, history, seconds)."""
    device = resolve_device(device)
    set_seed(cfg.seed + 2)
    reference = copy.deepcopy(policy).to(device).eval()
    agent = PPOAgent(copy.deepcopy(policy).to(device))
    start = time.perf_counter()
    history = finetune_ppo(agent, reference, reward_model, cfg, device=device, callback=callback, progress=progress)
    return agent, reference, history, time.perf_counter() - start
