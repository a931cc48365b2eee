"""What GRPO and RLOO share: several answers to the same source, sampled and scored together,
so that the other answers in the group give the baseline that PPO's critic gave.

Dropped from PPO (notebook 05): the value head, the value loss and GAE. Kept: the rollout
(sample, re-score under the policy and the frozen reference, score with the reward model) and
the update (the clipped surrogate over K epochs of shuffled minibatches, stopped early by
``target_kl``), so that a comparison with PPO changes only the baseline. Each source is repeated
``group_size`` times; with ``sources_per_iteration * group_size == ppo.rollout_batch`` an
iteration samples as many answers as a PPO iteration does."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from .config import Config, _check
from .errors import TrainingError
from .finetune import PPOMemory
from .model import Seq2SeqTransformer
from .ppo import clipped_surrogate_loss, masked_mean, policy_diagnostics
from .progress import progress_bar
from .reward import RewardModel
from .stages import seed_for
from .task import encode_numbers, gold_scores, sample_numbers


@dataclass(frozen=True)
class GroupConfig:
    """Settings both group methods share (GRPO and RLOO add their own KL weight)."""

    iterations: int = 60  # sample + update cycles
    sources_per_iteration: int = 32  # distinct sources per iteration; answers = sources * group_size
    group_size: int = 4  # answers per source: G in GRPO, k in RLOO; at least 2 (one is no group)
    epochs: int = 4  # K: passes over each batch of answers, as in PPO
    minibatches: int = 4  # minibatches per pass
    lr: float = 3e-5  # Adam learning rate (eps 1e-5, as PPO)
    clip_eps: float = 0.2  # epsilon of PPO's clipped surrogate
    target_kl: float | None = 0.1  # early-stop an iteration's epochs when approx_kl exceeds it
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # used both when sampling and when re-scoring

    def __post_init__(self):
        _check(self.iterations >= 0, "iterations", "an integer >= 0", self.iterations)
        _check(
            self.sources_per_iteration > 0, "sources_per_iteration", "a positive integer", self.sources_per_iteration
        )
        _check(self.group_size >= 2, "group_size", "an integer >= 2 (a group needs other answers)", self.group_size)
        _check(self.epochs > 0, "epochs", "a positive integer", self.epochs)
        answers = self.sources_per_iteration * self.group_size
        _check(
            0 < self.minibatches <= answers,
            "minibatches",
            f"an integer in [1, sources_per_iteration * group_size = {answers}]",
            self.minibatches,
        )
        _check(self.lr > 0, "lr", "a positive float", self.lr)
        _check(self.clip_eps > 0, "clip_eps", "a positive float", self.clip_eps)
        _check(self.target_kl is None or self.target_kl > 0, "target_kl", "None or a positive float", self.target_kl)
        _check(self.max_grad_norm > 0, "max_grad_norm", "a positive float", self.max_grad_norm)
        _check(self.temperature > 0, "temperature", "a positive float", self.temperature)

    @property
    def answers_per_iteration(self) -> int:
        return self.sources_per_iteration * self.group_size


def check_groups(rewards: torch.Tensor, group_size: int) -> None:
    """Raise unless ``rewards`` is 1-D and splits into whole groups of ``group_size`` (>= 2) answers."""
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size: expected an integer >= 2, got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards: expected a 1-D tensor whose length is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )


def k3_kl(logprobs, ref_logprobs):
    """Per-token k3 estimate of KL(policy || reference) on the policy's own samples (same shape as
    the inputs): (r - 1) - log r with r = p_ref / p; never negative, unbiased, low variance."""
    log_ratio = ref_logprobs - logprobs
    return log_ratio.exp() - 1 - log_ratio


@torch.no_grad()
def sample_groups(policy, reference, reward_model, src, cfg: Config, gcfg: GroupConfig, generator=None) -> dict:
    """Repeat each source ``group_size`` times (neighbours share a source), sample one answer per
    row, and re-score it. Returns src (N, S), tokens, mask, old_logprobs, ref_logprobs, entropy
    (N, T) and scores, gold (N,), with N = len(src) * group_size."""
    src = src.repeat_interleave(gcfg.group_size, dim=0)
    out = policy.generate(src, cfg.task.max_target_len, temperature=gcfg.temperature, generator=generator)
    old_logprobs, entropy, _ = policy.score_tokens(src, out.tokens, gcfg.temperature)
    ref_logprobs, _, _ = reference.score_tokens(src, out.tokens, gcfg.temperature)
    return {
        "src": src,
        "tokens": out.tokens,
        "mask": out.mask,
        "old_logprobs": old_logprobs,
        "ref_logprobs": ref_logprobs,
        "entropy": entropy,
        "scores": reward_model.score(src, out.tokens, out.mask),
        "gold": gold_scores(src, out.tokens, out.mask, cfg.task),
    }


def rollout_stats(batch: dict) -> dict:
    """The on-policy numbers PPO's ``collect_rollouts`` logs, for a batch from ``sample_groups``."""
    mask = batch["mask"]
    log_ratio = (batch["old_logprobs"] - batch["ref_logprobs"]) * mask
    return {
        "proxy_reward": batch["scores"].mean().item(),
        "gold_reward": batch["gold"].mean().item(),
        "valid_fraction": (batch["gold"] > -1).float().mean().item(),
        "kl": log_ratio.sum(1).mean().item(),
        "kl_k3": (k3_kl(batch["old_logprobs"], batch["ref_logprobs"]) * mask).sum(1).mean().item(),
        "entropy": masked_mean(batch["entropy"], mask).item(),
        "length": mask.sum(1).mean().item(),
    }


def group_update(policy, optimizer, memory: PPOMemory, gcfg: GroupConfig, kl_coef: float, generator=None) -> list:
    """K epochs of the clipped surrogate (plus ``kl_coef`` * k3 KL to the reference, averaged over
    real tokens) on shuffled minibatches; stops when an epoch's approx_kl exceeds target_kl."""
    stats = []
    for epoch in range(gcfg.epochs):
        epoch_stats = []
        for mb in memory.minibatches(gcfg.minibatches, generator):
            mask = mb["mask"]
            logprobs, _, _ = policy.score_tokens(mb["src"], mb["tokens"], gcfg.temperature)
            pg_loss = clipped_surrogate_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask, gcfg.clip_eps)
            kl_loss = masked_mean(k3_kl(logprobs, mb["ref_logprobs"]), mask)
            loss = pg_loss + kl_coef * kl_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), gcfg.max_grad_norm)
            optimizer.step()
            diagnostics = policy_diagnostics(logprobs, mb["old_logprobs"], mask, gcfg.clip_eps)
            epoch_stats.append(
                {"epoch": epoch, "policy_loss": pg_loss.item(), "kl_loss": kl_loss.item(), **diagnostics}
            )
        stats.extend(epoch_stats)
        if gcfg.target_kl is not None and _mean(epoch_stats, "approx_kl") > gcfg.target_kl:
            break
    return stats


def finetune_group(
    policy: Seq2SeqTransformer,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    cfg: Config,
    gcfg: GroupConfig,
    advantages_fn,
    kl_coef: float = 0.0,
    name: str = "group",
    device="cpu",
    callback=None,
    progress: bool = True,
) -> list[dict]:
    """The loop GRPO and RLOO share: sample groups, ``advantages_fn(batch)`` -> per-token advantages
    (N, T), then ``group_update``. Trains ``policy`` in place (the reference and reward model are
    only read). Returns one dict per iteration with PPO's rollout keys plus the update's means.
    Seeds follow PPO's (the "rollouts" and "minibatch_order" streams of ``stages.SEED_OFFSETS``). Ctrl-C ends
    the loop and returns the history so far (the interrupted iteration may be half applied)."""
    for arg, module in (("policy", policy), ("reference", reference), ("reward_model", reward_model)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{arg}: expected a torch.nn.Module, got {type(module).__name__}")
    if policy is reference:
        raise ValueError("reference: expected a frozen copy of the policy, got the policy itself (KL would be 0)")
    policy.to(device).eval()
    reference.to(device).eval()
    reward_model.to(device).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=gcfg.lr, eps=1e-5)
    rng = random.Random(seed_for(cfg, "rollouts"))
    gen = torch.Generator(device=device).manual_seed(seed_for(cfg, "rollouts"))
    shuffle_gen = torch.Generator().manual_seed(seed_for(cfg, "minibatch_order"))
    history: list[dict] = []
    bar = progress_bar(range(gcfg.iterations), desc=name, enabled=progress)
    try:
        for it in bar:
            start = time.perf_counter()
            src = encode_numbers(sample_numbers(gcfg.sources_per_iteration, cfg.task, rng)).to(device)
            batch = sample_groups(policy, reference, reward_model, src, cfg, gcfg, gen)
            memory = PPOMemory()
            memory.store(**{k: batch[k] for k in ("src", "tokens", "mask", "old_logprobs", "ref_logprobs")})
            memory.store(advantages=advantages_fn(batch))
            try:
                updates = group_update(policy, optimizer, memory, gcfg, kl_coef, shuffle_gen)
            except FloatingPointError as err:
                raise TrainingError(name, it, history[-1] if history else None) from err
            row = {
                "iteration": it,
                **rollout_stats(batch),
                **{k: _mean(updates, k) for k in ("policy_loss", "kl_loss", "approx_kl", "clipfrac")},
                "epochs_run": updates[-1]["epoch"] + 1,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            bar.set_postfix(gold=f"{row['gold_reward']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(history)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; returning the {len(history)} completed iterations")
    return history


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)
