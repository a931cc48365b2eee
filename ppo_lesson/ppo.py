"""PPO on tokens: one episode is one generated answer, a state is (source, prefix), an action
is the next token. Each token pays a KL penalty to the frozen reference; the reward model's
normalized score arrives on the last real token (EOS)."""

from __future__ import annotations

import copy
import random
import time

import torch
from torch import nn

from .checkpoints import load_checkpoint, save_checkpoint
from .config import Config, PPOConfig
from .model import Seq2SeqTransformer
from .pretrain import TrainingError
from .progress import progress_bar
from .reward import RewardModel
from .task import encode_numbers, gold_scores, sample_numbers


class PPOAgent(nn.Module):
    """The policy (a Seq2SeqTransformer) plus a value head that reads the same decoder state.

    The value head starts at zero: until the critic has learned something, V(s) = 0 and the
    advantages are the lambda-discounted rewards-to-go. It learns at its own learning rate
    (``PPOConfig.value_lr``, see ``parameter_groups``): at the policy's small one it hardly moves."""

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

    def parameter_groups(self, cfg: PPOConfig) -> list[dict]:
        """Adam parameter groups: the policy at ``cfg.lr``, the value head at ``cfg.value_lr``."""
        return [
            {"params": list(self.policy.parameters()), "lr": cfg.lr},
            {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
        ]


class PPOMemory:
    """Rollout buffer: per-episode tensors of one batch, handed out as shuffled minibatches."""

    def __init__(self):
        self.data: dict[str, torch.Tensor] = {}

    def store(self, **tensors: torch.Tensor) -> None:
        """Add tensors of shape (episodes, ...), all with as many episodes as the buffer already holds."""
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected a tensor with the episodes along dim 0, got {shape}")
        sizes = [t.size(0) for t in (*self.data.values(), *tensors.values())]
        for name, t in tensors.items():
            if t.size(0) != sizes[0]:
                raise ValueError(f"{name}: expected {sizes[0]} episodes like the rest of the buffer, got {t.size(0)}")
        self.data.update(tensors)

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
    if not pcfg.use_critic:  # the "V = 0" baseline: advantages are the rewards-to-go
        old_values = torch.zeros_like(old_values)
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
            vf_loss = torch.zeros(())  # no critic: nothing to fit
            if cfg.use_critic:
                vf_loss = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip)
            mean_entropy = masked_mean(entropy, mask)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * mean_entropy
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite PPO loss in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm, foreach=True)
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


def check_models(agent: PPOAgent, reference: Seq2SeqTransformer, reward_model: RewardModel) -> None:
    """Refuse models of the wrong type, and a reference or reward model that shares parameters with the
    agent: PPO would move it along with the policy (with ``reference=agent.policy`` the KL stays 0)."""
    for name, module, kind in (
        ("agent", agent, PPOAgent),
        ("reference", reference, nn.Module),
        ("reward_model", reward_model, nn.Module),
    ):
        if not isinstance(module, kind):
            raise TypeError(f"{name}: expected a {kind.__module__}.{kind.__name__}, got {type(module).__name__}")
    trained = {id(p) for p in agent.parameters()}
    for name, module in (("reference", reference), ("reward_model", reward_model)):
        shared = sum(id(p) in trained for p in module.parameters())
        if shared:
            raise ValueError(
                f"{name}: expected a model that shares no parameters with the agent being trained "
                f"(pass a copy, e.g. copy.deepcopy(policy)), got one that shares {shared} of them"
            )


class PPOTrainer:
    """Everything a PPO run changes as it goes: the agent, its optimizer, the KL controller, the random
    generators and the history. ``state()`` and ``load_state()`` capture and restore all of it, so an
    interrupted iteration can be undone and a saved run continues exactly as if it never stopped."""

    def __init__(self, agent: PPOAgent, reference, reward_model, cfg: Config, device="cpu"):
        check_models(agent, reference, reward_model)
        self.agent, self.cfg, self.device = agent.to(device), cfg, device
        self.reference = reference.to(device).eval().requires_grad_(False)
        self.reward_model = reward_model.to(device).eval()  # only used under no_grad: its flags stay the caller's
        # fused: one kernel over all parameters instead of a dozen small ops per tensor (same maths)
        self.optimizer = torch.optim.Adam(agent.parameter_groups(cfg.ppo), eps=1e-5, fused=True)
        self.controller = kl_controller(cfg.ppo)
        self.rng = random.Random(cfg.seed + 4)  # draws the source numbers
        self.rollout_generator = torch.Generator(device=device).manual_seed(cfg.seed + 4)  # samples answers
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed + 5)  # orders minibatches
        self.history: list[dict] = []

    def iteration(self) -> dict:
        """One rollout, one update and one KL-controller step; appends the iteration's row to the history."""
        pcfg, it, start = self.cfg.ppo, len(self.history), time.perf_counter()
        src = encode_numbers(sample_numbers(pcfg.rollout_batch, self.cfg.task, self.rng)).to(self.device)
        kl_beta = self.controller.value
        memory, rollout = collect_rollouts(
            self.agent, self.reference, self.reward_model, src, self.cfg, kl_beta, self.rollout_generator
        )
        try:
            updates = ppo_update(self.agent, self.optimizer, memory, pcfg, self.shuffle_generator)
        except FloatingPointError as err:
            raise TrainingError("ppo", it, self.history[-1] if self.history else None) from err
        self.controller.update(rollout["kl"], pcfg.rollout_batch)
        row = {
            "iteration": it,
            **rollout,
            **{k: _mean(updates, k) for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac")},
            "epochs_run": updates[-1]["epoch"] + 1,
            "kl_beta": kl_beta,
            "seconds": time.perf_counter() - start,
        }
        self.history.append(row)
        return row

    def state(self) -> dict:
        """A copy of everything the next iteration depends on (later steps do not change it)."""
        return copy.deepcopy(
            {
                "agent": self.agent.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "kl_beta": self.controller.value,
                "python_random": self.rng.getstate(),
                "rollout_generator": self.rollout_generator.get_state(),
                "shuffle_generator": self.shuffle_generator.get_state(),
                "history": self.history,
            }
        )

    def load_state(self, state: dict) -> None:
        """Go back (or forward) to a state from ``state()`` or ``load_ppo_checkpoint``."""
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.controller.value = state["kl_beta"]
        self.rng.setstate(state["python_random"])
        self.rollout_generator.set_state(state["rollout_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.history = copy.deepcopy(state["history"])

    def save(self, path) -> None:
        """Write the state, the reference and the reward model to ``path`` atomically, as tensors and
        plain Python values only (loadable with ``weights_only=True``)."""
        state = self.state()
        weights = {f"agent.{k}": v for k, v in state.pop("agent").items()}
        weights.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        weights.update({f"reward_model.{k}": v for k, v in self.reward_model.state_dict().items()})
        save_checkpoint(path, weights, self.cfg, "ppo_state", {**state, "iteration": len(self.history)})

    def run_iteration_or_undo(self, checkpoint=None) -> None:
        """One iteration (saved to ``checkpoint`` when given); if anything stops it half-way (Ctrl-C,
        a non-finite loss), every part of the trainer goes back to the last completed iteration."""
        before = self.state()
        try:
            self.iteration()
            if checkpoint is not None:
                self.save(checkpoint)
        except BaseException:
            self.load_state(before)
            raise


def load_ppo_checkpoint(path) -> dict:
    """Read a checkpoint written by ``PPOTrainer.save``: the ``state()`` keys plus config (a Config),
    reference and reward_model (state dicts) and iteration (completed iterations)."""
    payload = load_checkpoint(path, "ppo_state")
    state = {**payload["extra"], "config": Config.from_dict(payload["config"])}
    for part in ("agent", "reference", "reward_model"):
        prefix = f"{part}."
        state[part] = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    return state


def finetune_ppo(
    agent: PPOAgent,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    cfg: Config,
    device="cpu",
    callback=None,
    progress: bool = True,
    checkpoint=None,
    resume: dict | None = None,
) -> list[dict]:
    """The PPO loop: rollouts, GAE, K epochs of clipped updates, KL-controller step.

    Returns one dict per iteration (proxy_reward, gold_reward, valid_fraction, kl, kl_k3,
    entropy, approx_kl, clipfrac, policy_loss, value_loss, explained_variance, epochs_run, kl_beta, ...).
    The agent stays in eval mode throughout: with dropout off, re-scoring reproduces the
    sampling distribution exactly, so the ratio is 1 before the first step.
    ``callback(history)`` runs after every iteration. Interrupting (Ctrl-C, the notebook's stop
    button) discards the iteration in progress and returns the history so far; the agent, its
    optimizer and the KL controller stay exactly at the last completed iteration.
    ``checkpoint``: a path where the whole training state is saved before the first and after every
    completed iteration. ``resume``: a state from ``load_ppo_checkpoint`` to continue from."""
    trainer = PPOTrainer(agent, reference, reward_model, cfg, device)
    if resume is not None:
        if resume["config"] != cfg:
            raise ValueError("resume: expected a checkpoint made with this cfg, got one made with another config")
        trainer.load_state(resume)
    elif checkpoint is not None:
        trainer.save(checkpoint)
    bar = progress_bar(range(len(trainer.history), cfg.ppo.iterations), desc="ppo", enabled=progress)
    try:
        for _ in bar:
            trainer.run_iteration_or_undo(checkpoint)
            row = trainer.history[-1]
            bar.set_postfix(gold=f"{row['gold_reward']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(trainer.history)
    except KeyboardInterrupt:
        print(f"ppo: interrupted; returning the {len(trainer.history)} completed iterations")
    return trainer.history


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)
