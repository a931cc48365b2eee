"""The PPO variants of notebooks 06 and 07, each PPO with one piece changed, as overrides of
``cfg.ppo``; and a plain loop that runs named variants on the cached stages of each seed.

The multi-seed experiments (``python -m ppo_lesson experiments``) run the same variants with
the same ``run_variant``, spread over worker processes."""

from __future__ import annotations

from .config import Config, get_preset
from .evaluate import evaluate_policy
from .pipeline import pretrained_policy, run_ppo, trained_reward_model
from .progress import progress_bar

EVAL_SAMPLES_PER_NUMBER = 8  # final evaluation of a run: every source number this many times


def vanilla_pg(lr: float) -> dict:
    """PPO settings that reduce it to vanilla policy gradient: one gradient step per batch of answers
    (the ratio is 1 at that step, so clipping never acts); advantages and KL penalty unchanged."""
    return {"epochs": 1, "minibatches": 1, "lr": lr}


def heavy_reuse(clip: bool) -> dict:
    """The clipped (``clip=True``) or unclipped surrogate on 4 epochs x 4 minibatches, 16 gradient steps
    on every batch of answers (four times the lesson's 2 x 2), with the early stop on ``approx_kl`` off:
    the many steps on old answers are where the clip matters, and it is the only brake left."""
    return {"clip": clip, "target_kl": None, "epochs": 4, "minibatches": 4}


def no_kl_penalty() -> dict:
    """No KL penalty at all: nothing holds the policy near the reference."""
    return {"kl_beta": 0.0, "adaptive_kl": False}


def fixed_kl_penalty(kl_beta: float) -> dict:
    """A KL penalty of fixed strength ``kl_beta`` (the controller off)."""
    return {"kl_beta": kl_beta, "adaptive_kl": False}


def adaptive_kl_penalty(kl_beta: float) -> dict:
    """The adaptive controller, starting at ``kl_beta`` and steering the KL toward ``ppo.kl_target``."""
    return {"kl_beta": kl_beta, "adaptive_kl": True}


def ppo_without_critic() -> dict:
    """PPO with "V = 0": no critic and no value loss, so the advantages are the whitened
    lambda-discounted rewards-to-go (a REINFORCE-like baseline)."""
    return {"use_critic": False}


def run_variant(cfg: Config, overrides: dict, policy, reward_model, device="cpu") -> dict:
    """One PPO run of ``cfg`` with ``overrides`` of ``cfg.ppo``, from ``policy``; returns its settings,
    per-iteration history, final metrics on the evaluation set, and the trained policy and reference."""
    run_cfg = cfg.replace(ppo=overrides)
    agent, reference, history, seconds = run_ppo(run_cfg, policy, reward_model, device=device, progress=False)
    final = evaluate_policy(agent.policy, run_cfg, reference, reward_model, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    return {
        "cfg": run_cfg,
        "history": history,
        "final": final,
        "seconds": seconds,
        "policy": agent.policy,
        "reference": reference,
    }


def run_variants(preset: str, variants: dict[str, dict], seeds=(0,), device="cpu", progress: bool = True) -> list:
    """Every named variant on every seed, one after another in this process, each from its seed's
    pretrained policy and reward model (from the stage cache). Returns one row per run: variant,
    seed, history and final metrics."""
    rows = []
    bar = progress_bar(desc="PPO runs", total=len(variants) * len(seeds), enabled=progress)
    for seed in seeds:
        cfg = get_preset(preset, seed=seed)
        policy, _ = pretrained_policy(cfg, device=device, progress=False)
        reward_model, _ = trained_reward_model(cfg, policy, device=device, progress=False)
        for name, overrides in variants.items():
            run = run_variant(cfg, overrides, policy, reward_model, device)
            rows.append({"variant": name, "seed": seed, "history": run["history"], "final": run["final"]})
            bar.update()
    bar.close()
    return rows
