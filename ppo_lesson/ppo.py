"""PPO's objective on tokens, piece by piece (notebook 04): masked statistics, GAE, the clipped
surrogate, the clipped value loss, the per-token KL penalty and the KL controllers.

One episode is one generated answer, a state is (source, prefix), an action is the next token. Each
token pays a KL penalty to the frozen reference; the reward model's normalized score arrives on the
last real token (EOS). ``finetune.py`` puts these pieces together into the training loop."""

from __future__ import annotations

import torch

from .config import PPOConfig


def check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> None:
    """Raise unless ``mask`` has ``like``'s (batch, time) shape and holds only 0 and 1."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a (batch, time) tensor of 0 and 1, got {type(mask).__name__}")
    if mask.shape != like.shape or mask.dim() != 2:
        raise ValueError(
            f"{name}: expected a (batch, time) tensor of shape {tuple(like.shape)}, got {tuple(mask.shape)}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name}: expected only 0 and 1 (1 on real tokens), got other values")


def _check_same_shape(mask, **tensors):
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(f"{name}: expected shape {tuple(mask.shape)} like mask, got {tuple(t.shape)}")


def only_real(x, mask):
    """x where mask is 1, exactly 0 elsewhere: a NaN or inf on a padded position never leaks
    (multiplying by the mask would turn it into NaN, and its gradient too)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x, mask):
    """Mean of x over the positions where mask is 1."""
    return only_real(x, mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, eps: float = 1e-8):
    """Shift and scale x to mean 0, std 1 over real tokens; 0 at masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return only_real((x - mean) * torch.rsqrt(var + eps), mask)


@torch.no_grad()
def compute_gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalized Advantage Estimation over (batch, time) tensors.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, where the
    value past the last real token is 0 (the episode ended). Returns (advantages, returns),
    returns = advantages + values, both 0 at masked positions. gamma and lam are checked by PPOConfig."""
    check_mask(mask, rewards)
    _check_same_shape(mask, rewards=rewards, values=values)
    rewards, values = only_real(rewards, mask), only_real(values, mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, clip_eps: float = 0.2):
    """PPO's clipped objective, as a loss to minimize (all tensors (batch, time)).

    ratio = exp(logprobs - old_logprobs); loss = masked mean over real tokens of
    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)). ``clip_eps=inf`` gives the unclipped
    policy-gradient surrogate; PPOConfig checks clip_eps."""
    check_mask(mask, logprobs)
    _check_same_shape(mask, old_logprobs=old_logprobs, advantages=advantages)
    # masked first: padding gives ratio 1 and advantage 0, so neither the loss nor its gradient sees inf or NaN
    ratio = torch.exp(only_real(logprobs - old_logprobs, mask))
    advantages = only_real(advantages, mask)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return masked_mean(torch.max(unclipped, clipped), mask)


@torch.no_grad()
def policy_diagnostics(logprobs, old_logprobs, mask, clip_eps: float = 0.2) -> dict:
    """approx_kl = mean((ratio - 1) - log ratio) (k3, never negative), clipfrac = share of real
    tokens with |ratio - 1| > clip_eps, and the largest |ratio - 1|."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = log_ratio.exp()
    return {
        "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),
        "clipfrac": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask).item(),
        "ratio_max_dev": ((ratio - 1).abs() * mask).max().item(),
    }


def value_loss(values, old_values, returns, mask, value_clip: float = 0.2):
    """Clipped value loss: 0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2), where V_clipped
    stays within value_clip of the values at rollout time."""
    _check_same_shape(mask, values=values, old_values=old_values, returns=returns)
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_beta: float):
    """Per-token rewards (batch, time): -kl_beta * (logp - logp_ref) on every real token, plus the
    reward model's score (batch,) on the last real token. 0 after EOS."""
    check_mask(mask, logprobs)
    _check_same_shape(mask, ref_logprobs=ref_logprobs)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores: expected shape ({mask.size(0)},), one per episode, got {tuple(scores.shape)}")
    rewards = -kl_beta * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(last), device=mask.device), last] += scores * (mask.sum(1) > 0)
    return rewards


def explained_variance(values, returns, mask) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 is a perfect critic)."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return (1.0 - var_residual / var_returns.clamp(min=1e-8)).item()


class AdaptiveKLController:
    """Ziegler et al. (2019): e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon."""

    def __init__(self, kl_beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """A constant kl_beta, with the same interface as the adaptive one."""

    def __init__(self, kl_beta: float):
        self.value = kl_beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


def kl_controller(cfg: PPOConfig):
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_beta, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_beta)
