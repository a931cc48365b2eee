"""PPO on tokens: one episode is one generated answer, a state is (source, prefix), an action
is the next token. Each token pays a KL penalty to the frozen reference; the reward model's
normalized score arrives on the last real token (EOS)."""

from __future__ import annotations

import random
import time

import torch
from torch import nn

from .config import Config, PPOConfig
from .model import Seq2SeqTransformer
from .pretrain import TrainingError
from .progress import progress_bar
from .reward import RewardModel
from .task import encode_numbers, gold_scores, sample_numbers


class PPOAgent(nn.Module):
    """The policy (a Seq2SeqTransformer) plus a value head that reads the same decoder state.

    The value head starts at zero, so the first advantages are the rewards themselves and the
    critic cannot push the policy around before it has learned anything."""

    def __init__(self, policy: Seq2SeqTransformer):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.cfg.d_model, 1).to(policy.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, src, tokens, temperature: float = 1.0):
        """Re-score sampled answers. Returns logprobs, entropy and values, each (B, T):
        values[:, t] estimates the return from the state in which tokens[:, t] was chosen."""
        logprobs, entropy, hidden = self.policy.score_tokens(src, tokens, temperature)
        return logprobs, entropy, self.value_head(hidden).squeeze(-1)


class PPOMemory:
    """Rollout buffer: per-episode tensors of one batch, handed out as shuffled minibatches."""

    def __init__(self):
        self.data: dict[str, torch.Tensor] = {}

    def store(self, **tensors: torch.Tensor) -> None:
        for name, t in tensors.items():
            size = len(self)
            if self.data and t.size(0) != size:
                raise ValueError(f"{name}: expected {size} episodes like the rest of the buffer, got {t.size(0)}")
            self.data[name] = t

    def __len__(self) -> int:
        return next(iter(self.data.values())).size(0) if self.data else 0

    def clear(self) -> None:
        self.data.clear()

    def minibatches(self, n_minibatches: int, generator: torch.Generator | None = None):
        """Yield ``n_minibatches`` dicts covering a random permutation of the episodes."""
        if not 0 < n_minibatches <= len(self):
            raise ValueError(f"n_minibatches: expected an int in [1, {len(self)}], got {n_minibatches}")
        order = torch.randperm(len(self), generator=generator)
        for idx in order.tensor_split(n_minibatches):
            yield {name: t[idx.to(t.device)] for name, t in self.data.items()}


def check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> None:
    """Raise unless ``mask`` has ``like``'s (batch, time) shape and holds only 0 and 1."""
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


def masked_mean(x, mask):
    """Mean of x over the positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, eps: float = 1e-8):
    """Shift and scale x to mean 0, std 1 over real tokens; 0 at masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


@torch.no_grad()
def compute_gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalized Advantage Estimation over (batch, time) tensors.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, where the
    value past the last real token is 0 (the episode ended). Returns (advantages, returns),
    returns = advantages + values, both 0 at masked positions."""
    check_mask(mask, rewards)
    _check_same_shape(mask, rewards=rewards, values=values)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected a float in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: expected a float in [0, 1], got {lam}")
    rewards, values = rewards * mask, values * mask
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
    policy-gradient surrogate."""
    check_mask(mask, logprobs)
    _check_same_shape(mask, old_logprobs=old_logprobs, advantages=advantages)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps: expected a positive float, got {clip_eps}")
    ratio = torch.exp((logprobs - old_logprobs) * mask)  # masked first: padding never gives inf * 0
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


@torch.no_grad()
def collect_rollouts(
    agent: PPOAgent,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    src,
    cfg: Config,
    kl_beta: float,
    generator: torch.Generator | None = None,
) -> tuple[PPOMemory, dict]:
    """Sample one answer per source, score it, and fill a PPOMemory with everything the update
    needs (old logprobs and values from the same teacher-forced pass the update will use)."""
    pcfg = cfg.ppo
    agent.eval()
    out = agent.policy.generate(src, cfg.task.max_target_len, temperature=pcfg.temperature, generator=generator)
    tokens, mask = out.tokens, out.mask
    old_logprobs, entropy, old_values = agent(src, tokens, pcfg.temperature)
    ref_logprobs, _, _ = reference.score_tokens(src, tokens, pcfg.temperature)
    scores = reward_model.score(src, tokens, mask)
    rewards = kl_penalty_rewards(old_logprobs, ref_logprobs, scores, mask, kl_beta)
    advantages, returns = compute_gae(rewards, old_values, mask, pcfg.gamma, pcfg.lam)
    memory = PPOMemory()
    memory.store(
        src=src,
        tokens=tokens,
        mask=mask,
        old_logprobs=old_logprobs,
        old_values=old_values,
        rewards=rewards,
        advantages=whiten(advantages, mask),
        returns=returns,
    )
    log_ratio = (old_logprobs - ref_logprobs) * mask  # log p / p_ref on the policy's own samples
    gold = gold_scores(src.cpu(), tokens.cpu(), mask.cpu(), cfg.task)
    stats = {
        "proxy_reward": scores.mean().item(),
        "gold_reward": gold.mean().item(),
        "valid_fraction": (gold > -1).float().mean().item(),
        "kl": log_ratio.sum(1).mean().item(),
        "kl_k3": (((-log_ratio).exp() - 1 + log_ratio) * mask).sum(1).mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
        "length": mask.sum(1).mean().item(),
        "explained_variance": explained_variance(old_values, returns, mask),
    }
    return memory, stats


def ppo_update(agent: PPOAgent, optimizer, memory: PPOMemory, cfg: PPOConfig, generator=None) -> list[dict]:
    """K epochs of shuffled minibatches over one rollout; stops early when an epoch's mean
    approx_kl exceeds ``cfg.target_kl``. Returns one dict of statistics per minibatch."""
    clip_eps = cfg.clip_eps if cfg.clip else float("inf")
    stats = []
    for epoch in range(cfg.epochs):
        epoch_stats = []
        for mb in memory.minibatches(cfg.minibatches, generator):
            logprobs, entropy, values = agent(mb["src"], mb["tokens"], cfg.temperature)
            mask = mb["mask"]
            pg_loss = clipped_surrogate_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask, clip_eps)
            vf_loss = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip)
            mean_entropy = masked_mean(entropy, mask)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * mean_entropy
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite PPO loss in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            epoch_stats.append(
                {
                    "epoch": epoch,
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "grad_norm": grad_norm.item(),
                    **policy_diagnostics(logprobs, mb["old_logprobs"], mask, cfg.clip_eps),
                }
            )
        stats.extend(epoch_stats)
        mean_kl = sum(s["approx_kl"] for s in epoch_stats) / len(epoch_stats)
        if cfg.target_kl is not None and mean_kl > cfg.target_kl:
            break
    return stats


def finetune_ppo(
    agent: PPOAgent,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    cfg: Config,
    device="cpu",
    callback=None,
    progress: bool = True,
) -> list[dict]:
    """The PPO loop: rollouts, GAE, K epochs of clipped updates, KL-controller step.

    Returns one dict per iteration (proxy_reward, gold_reward, valid_fraction, kl, kl_k3,
    entropy, approx_kl, clipfrac, policy_loss, value_loss, explained_variance, kl_beta, ...).
    The agent stays in eval mode throughout: with dropout off, re-scoring reproduces the
    sampling distribution exactly, so the ratio is 1 before the first step.
    ``callback(history)`` runs after every iteration. Interrupting (Ctrl-C, the notebook's stop
    button) ends the loop after the iteration in progress is discarded and returns the history
    so far; the agent keeps its last completed update."""
    pcfg = cfg.ppo
    for name, module in (("agent", agent), ("reference", reference), ("reward_model", reward_model)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
    agent.to(device)
    reference.to(device).eval().requires_grad_(False)
    reward_model.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(agent.parameters(), lr=pcfg.lr, eps=1e-5)
    controller = kl_controller(pcfg)
    rng = random.Random(cfg.seed + 4)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 4)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 5)
    history: list[dict] = []
    bar = progress_bar(range(pcfg.iterations), desc="ppo", enabled=progress)
    try:
        for it in bar:
            start = time.perf_counter()
            src = encode_numbers(sample_numbers(pcfg.rollout_batch, cfg.task, rng)).to(device)
            kl_beta = controller.value
            memory, rollout = collect_rollouts(agent, reference, reward_model, src, cfg, kl_beta, gen)
            try:
                updates = ppo_update(agent, optimizer, memory, pcfg, shuffle_gen)
            except FloatingPointError as err:
                raise TrainingError("ppo", it, history[-1] if history else None) from err
            controller.update(rollout["kl"], pcfg.rollout_batch)
            row = {
                "iteration": it,
                **rollout,
                **{k: _mean(updates, k) for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac")},
                "epochs_run": updates[-1]["epoch"] + 1,
                "kl_beta": kl_beta,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            bar.set_postfix(gold=f"{row['gold_reward']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(history)
    except KeyboardInterrupt:
        print(f"ppo: interrupted; returning the {len(history)} completed iterations")
    return history


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)
