"""GRPO (Shao et al. 2024, DeepSeekMath): PPO without the critic.

Dropped from PPO: the value head, its loss and GAE. Replaced by: G answers to each source, and
every token of answer i gets one advantage, (r_i - mean of the group) / (std of the group + eps),
so the other answers to the same source are the baseline. Moved: the KL to the reference leaves
the reward and enters the loss, as ``kl_coef`` times the k3 estimator averaged over real tokens.
Kept: PPO's clipped objective, its epochs and minibatches (``group.finetune_group``).

Two choices of ours: the group std is the sample std (Bessel-corrected, as TRL computes it), and
the loss averages over all real tokens of the minibatch, as our PPO does, where the paper first
averages within each answer (which gives short answers' tokens more weight)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import _check
from .group import GroupConfig, check_groups, finetune_group


@dataclass(frozen=True)
class GRPOConfig(GroupConfig):
    """GRPO's settings: the shared group settings plus the KL term of the loss."""

    kl_coef: float = 0.04  # weight of the k3 KL term in the loss (the paper's beta; 0 drops the reference)
    std_eps: float = 1e-4  # added to the group std: a group of equal rewards gets advantage 0, not 0/0

    def __post_init__(self):
        super().__post_init__()
        _check(self.kl_coef >= 0, "kl_coef", "a float >= 0", self.kl_coef)
        _check(self.std_eps > 0, "std_eps", "a positive float", self.std_eps)


def group_advantages(rewards, group_size: int, eps: float = 1e-4):
    """GRPO's advantage of each answer (N,): (r - group mean) / (group std + eps), where the group
    of answer i is the ``group_size`` neighbours it was sampled with (rows i // group_size)."""
    check_groups(rewards, group_size)
    groups = rewards.view(-1, group_size)
    normalized = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)
    return normalized.reshape(-1)


def finetune_grpo(
    policy, reference, reward_model, cfg, grpo_cfg: GRPOConfig, device="cpu", callback=None, progress=True
):
    """Fine-tune ``policy`` in place with GRPO; returns one dict of statistics per iteration."""
    if not isinstance(grpo_cfg, GRPOConfig):
        raise TypeError(f"grpo_cfg: expected a GRPOConfig, got {type(grpo_cfg).__name__}")

    def advantages(batch):  # one number per answer, copied onto each of its real tokens: (N, T)
        per_answer = group_advantages(batch["scores"], grpo_cfg.group_size, grpo_cfg.std_eps)
        return per_answer[:, None] * batch["mask"]

    return finetune_group(
        policy, reference, reward_model, cfg, grpo_cfg, advantages, grpo_cfg.kl_coef, "grpo", device, callback, progress
    )
