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

    Returns (policy, info) with info = {from_cache, seconds, history, metrics}. The global random
    state afterwards is the same either way, so what follows does not depend on the cache."""
    device = resolve_device(device)
    path = stage_path(cfg, "pretrain")
    payload = _load_stage(path, "policy", cfg, ("task", "model", "pretrain")) if reuse else None
    if payload is not None:
        policy = Seq2SeqTransformer(cfg.model)
        policy.load_state_dict(payload["state_dict"])
        policy, info = policy.to(device), {**payload["extra"], "from_cache": True, "seconds": 0.0}
    else:
        set_seed(cfg.seed)
        start = time.perf_counter()
        policy = Seq2SeqTransformer(cfg.model).to(device)
        history = pretrain(policy, cfg, device=device, callback=callback, progress=progress)
        seconds = time.perf_counter() - start
        extra = {"history": history, "metrics": evaluate_policy(policy, cfg), "train_seconds": seconds}
        save_checkpoint(path, policy.state_dict(), cfg, "policy", extra)
        info = {**extra, "from_cache": False, "seconds": seconds}
    set_seed(cfg.seed)
    return policy.eval(), info


def trained_reward_model(
    cfg: Config, policy: Seq2SeqTransformer, device="cpu", reuse: bool = True, progress: bool = True, callback=None
):
    """The Bradley-Terry reward model on pairs sampled from ``policy``, normalized on its samples.

    Returns (reward_model, info) with info = {from_cache, seconds, history, heldout_accuracy, ...};
    like ``pretrained_policy``, it leaves the same random state whether cached or trained."""
    device = resolve_device(device)
    path = stage_path(cfg, "reward")
    payload = _load_stage(path, "reward_model", cfg, ("task", "model", "pretrain", "reward")) if reuse else None
    if payload is not None:
        rm = RewardModel(cfg.model)
        rm.load_state_dict(payload["state_dict"])
        rm, info = rm.to(device), {**payload["extra"], "from_cache": True, "seconds": 0.0}
    else:
        set_seed(cfg.seed + 1)
        start = time.perf_counter()
        pairs = collect_preferences(policy, cfg, device=device)
        rm = reward_model_from_policy(policy) if cfg.reward.init_from_policy else RewardModel(cfg.model).to(device)
        result = train_reward_model(rm, pairs, cfg, device=device, callback=callback, progress=progress)
        result["normalization"] = normalize_reward_model(rm, policy, cfg, device=device)
        result["n_pairs"] = len(pairs["src"])
        result["train_seconds"] = time.perf_counter() - start
        save_checkpoint(path, rm.state_dict(), cfg, "reward_model", result)
        info = {**result, "from_cache": False, "seconds": result["train_seconds"]}
    set_seed(cfg.seed + 1)
    return rm.eval(), info


def _load_stage(path, kind: str, cfg: Config, sections) -> dict | None:
    """A cached stage's checkpoint, or None when there is none or it does not fit (then say why)."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, kind, cfg, sections=sections)
    except CheckpointError as err:
        print(f"cache: ignoring {path.name} ({err}); training again")
        return None


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
