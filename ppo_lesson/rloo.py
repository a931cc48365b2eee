"""RLOO, REINFORCE leave-one-out (Ahmadian et al. 2024): PPO without the critic, with a baseline
that costs nothing to learn.

Dropped from PPO: the value head, its loss, GAE and the whitening of advantages. Replaced by: k
answers to each source; the return of answer i is its reward-model score minus the KL penalty of
our PPO summed over its tokens (``kl_penalty_rewards``, sequence level), and its baseline is the
mean return of the other k - 1 answers. Every token of the answer gets that one advantage, which
is unbiased because the baseline does not depend on answer i.
Kept: PPO's clipped objective over K epochs of minibatches (as TRL's ``RLOOTrainer`` does); with
``epochs=1, minibatches=1`` the update is the paper's plain REINFORCE step."""

from __future__ import annotations

from dataclasses import dataclass

from .config import _check
from .group import GroupConfig, check_groups, finetune_group
from .ppo import kl_penalty_rewards


@dataclass(frozen=True)
class RLOOConfig(GroupConfig):
    """RLOO's settings: the shared group settings plus the KL penalty in the reward."""

    kl_beta: float = 0.2  # weight of the KL penalty in the return (fixed; PPO's starting value)

    def __post_init__(self):
        super().__post_init__()
        _check(self.kl_beta >= 0, "kl_beta", "a float >= 0", self.kl_beta)


def leave_one_out_baselines(returns, group_size: int):
    """Baseline of each answer (N,): the mean return of the other ``group_size - 1`` answers of its
    group (rows i // group_size), computed as (group sum - own return) / (group_size - 1)."""
    check_groups(returns, group_size)
    groups = returns.view(-1, group_size)
    return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


def sequence_returns(scores, logprobs, ref_logprobs, mask, kl_beta: float):
    """Return of each answer (N,): score - kl_beta * sum over real tokens of (log p - log p_ref)."""
    return kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_beta).sum(1)


def finetune_rloo(
    policy, reference, reward_model, cfg, rloo_cfg: RLOOConfig, device="cpu", callback=None, progress=True
):
    """Fine-tune ``policy`` in place with RLOO; returns one dict of statistics per iteration."""
    if not isinstance(rloo_cfg, RLOOConfig):
        raise TypeError(f"rloo_cfg: expected an RLOOConfig, got {type(rloo_cfg).__name__}")

    def advantages(batch):  # return minus leave-one-out baseline, copied onto each real token: (N, T)
        mask = batch["mask"]
        returns = sequence_returns(
            batch["scores"], batch["old_logprobs"], batch["ref_logprobs"], mask, rloo_cfg.kl_beta
        )
        return (returns - leave_one_out_baselines(returns, rloo_cfg.group_size))[:, None] * mask

    return finetune_group(
        policy, reference, reward_model, cfg, rloo_cfg, advantages, 0.0, "rloo", device, callback, progress
    )
