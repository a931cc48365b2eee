"""The RLHF recipe as three stages: pretrain, reward model, PPO. Each of the first two is cached
(see ``checkpoints.stage_path``) so notebooks build on each other without training twice."""

from __future__ import annotations

import copy
import time
import warnings

from .checkpoints import (
    CheckpointError,
    check_writable_folder,
    load_checkpoint,
    save_checkpoint,
    stage_path,
    weights_fingerprint,
)
from .config import Config, resolve_device, set_seed
from .evaluate import evaluate_policy
from .finetune import PPOAgent, finetune_ppo, load_ppo_checkpoint
from .model import Seq2SeqTransformer
from .pretrain import pretrain
from .reward import (
    RewardModel,
    collect_preferences,
    normalize_reward_model,
    reward_model_from_policy,
    train_reward_model,
)
from .stages import STAGES, seed_for


def pretrained_policy(cfg: Config, device="cpu", reuse: bool = True, progress: bool = True, callback=None):
    """The supervised policy: from the cache when ``reuse`` and present, else trained and cached.

    Returns (policy, info) with info = {from_cache, seconds, history, metrics}. The global random
    state afterwards is the same either way, so what follows does not depend on the cache."""
    device = resolve_device(device)
    path = stage_path(cfg, "pretrain")
    cached = _load_stage(path, "policy", cfg, STAGES["pretrain"].sections, Seq2SeqTransformer) if reuse else None
    if cached is not None:
        policy, payload = cached
        policy, info = policy.to(device), {**payload["extra"], "from_cache": True, "seconds": 0.0}
    else:
        check_writable_folder(path.parent, "PPO_LESSON_CACHE")
        set_seed(seed_for(cfg, "pretrain"))
        start = time.perf_counter()
        policy = Seq2SeqTransformer(cfg.model).to(device)
        history = pretrain(policy, cfg, device=device, callback=callback, progress=progress)
        seconds = time.perf_counter() - start
        extra = {"history": history, "metrics": evaluate_policy(policy, cfg), "train_seconds": seconds}
        _save_stage(path, policy, cfg, "policy", extra)
        info = {**extra, "from_cache": False, "seconds": seconds}
    set_seed(seed_for(cfg, "pretrain"))
    return policy.eval(), info


def trained_reward_model(
    cfg: Config, policy: Seq2SeqTransformer, device="cpu", reuse: bool = True, progress: bool = True, callback=None
):
    """The Bradley-Terry reward model on pairs sampled from ``policy``, normalized on its samples.

    Returns (reward_model, info) with info = {from_cache, seconds, history, heldout_accuracy, ...};
    like ``pretrained_policy``, it leaves the same random state whether cached or trained. ``policy``
    must be built with ``cfg.model``; a cached reward model is used only for the policy it was trained on."""
    if not isinstance(policy, Seq2SeqTransformer):
        raise ValueError(f"policy: expected a Seq2SeqTransformer, got {type(policy).__name__}")
    if policy.cfg != cfg.model:
        differences = ", ".join(
            f"{name} {getattr(policy.cfg, name)} instead of {value}"
            for name, value in vars(cfg.model).items()
            if getattr(policy.cfg, name) != value
        )
        raise ValueError(f"policy: expected a policy built with cfg.model, got one with {differences}")
    device = resolve_device(device)
    path = stage_path(cfg, "reward")
    made_from = {"policy_fingerprint": weights_fingerprint(policy)}
    sections = STAGES["reward"].sections
    cached = _load_stage(path, "reward_model", cfg, sections, RewardModel, made_from) if reuse else None
    if cached is not None:
        rm, payload = cached
        rm, info = rm.to(device), {**payload["extra"], "from_cache": True, "seconds": 0.0}
        if info["normalization"].get("temperature") != cfg.ppo.temperature:  # the key ignores cfg.ppo
            info["normalization"] = normalize_reward_model(
                rm, policy, cfg, device=device, temperature=cfg.ppo.temperature
            )
    else:
        check_writable_folder(path.parent, "PPO_LESSON_CACHE")
        set_seed(seed_for(cfg, "preferences"))
        start = time.perf_counter()
        pairs = collect_preferences(policy, cfg, device=device)
        rm = reward_model_from_policy(policy) if cfg.reward.init_from_policy else RewardModel(cfg.model).to(device)
        result = train_reward_model(rm, pairs, cfg, device=device, callback=callback, progress=progress)
        result["normalization"] = normalize_reward_model(
            rm, policy, cfg, device=device, temperature=cfg.ppo.temperature
        )
        result["n_pairs"] = len(pairs["src"])
        result.update(made_from)
        result["train_seconds"] = time.perf_counter() - start
        _save_stage(path, rm, cfg, "reward_model", result)
        info = {**result, "from_cache": False, "seconds": result["train_seconds"]}
    set_seed(seed_for(cfg, "preferences"))
    return rm.eval(), info


def _load_stage(path, kind: str, cfg: Config, sections, model_class, made_from: dict | None = None):
    """(model, checkpoint) of a cached stage; None when there is none, or when it does not load
    (corrupt, a folder, another kind, seed or size, or ``extra`` differs from ``made_from``: then it
    says why, and the caller trains)."""
    if not path.exists():
        return None
    try:
        payload = load_checkpoint(path, kind, cfg, sections=(*sections, "seed"))
        for key, value in (made_from or {}).items():
            if payload["extra"].get(key) != value:
                raise CheckpointError(f"{key}: expected {value!r} (this call), got {payload['extra'].get(key)!r}")
        model = model_class(cfg.model)
        model.load_state_dict(payload["state_dict"])
    except (CheckpointError, RuntimeError) as err:  # RuntimeError: missing keys or a size mismatch
        reason = " ".join(str(err).split())
        print(f"cache: ignoring {path.name} ({reason[:300]}); training again")
        return None
    return model, payload


def _save_stage(path, model, cfg: Config, kind: str, extra: dict) -> None:
    """Cache a trained stage; a failed write (disk full, the path taken by a folder) only warns, so
    the trained model is still returned."""
    try:
        save_checkpoint(path, model.state_dict(), cfg, kind, extra)
    except OSError as err:
        warnings.warn(f"cache: could not write {path} ({err}); the trained {kind} is used but not cached", stacklevel=3)


def run_ppo(
    cfg: Config,
    policy: Seq2SeqTransformer,
    reward_model: RewardModel,
    device="cpu",
    progress=True,
    callback=None,
    checkpoint=None,
):
    """Fine-tune a copy of ``policy`` with PPO against ``reward_model``; the original stays the
    frozen reference. ``checkpoint``: a path where ``finetune_ppo`` saves the whole training state
    after every iteration (continue it with ``resume_ppo``). Returns (agent, reference, history, seconds)."""
    device = resolve_device(device)
    set_seed(seed_for(cfg, "ppo_setup"))
    reference = copy.deepcopy(policy).to(device).eval()
    agent = PPOAgent(copy.deepcopy(policy).to(device))
    start = time.perf_counter()
    history = finetune_ppo(
        agent, reference, reward_model, cfg, device=device, callback=callback, progress=progress, checkpoint=checkpoint
    )
    return agent, reference, history, time.perf_counter() - start


def resume_ppo(checkpoint, device="cpu", progress=True, callback=None):
    """Continue the PPO run saved in ``checkpoint`` (by ``run_ppo``) where it stopped, with the reference
    and reward model it started with, and keep saving there. Returns (cfg, agent, reference, reward_model,
    history, seconds); the history covers the whole run, so it equals the one an uninterrupted run returns."""
    device = resolve_device(device)
    state = load_ppo_checkpoint(checkpoint)
    cfg = state["config"]
    reference = Seq2SeqTransformer(cfg.model)
    reference.load_state_dict(state["reference"])
    reward_model = RewardModel(cfg.model)
    reward_model.load_state_dict(state["reward_model"])
    reference, reward_model = reference.to(device).eval(), reward_model.to(device).eval()
    agent = PPOAgent(copy.deepcopy(reference))  # its weights are replaced by the checkpoint's
    start = time.perf_counter()
    history = finetune_ppo(
        agent, reference, reward_model, cfg, device, callback, progress, checkpoint=checkpoint, resume=state
    )
    return cfg, agent, reference, reward_model, history, time.perf_counter() - start
