"""The exact small examples behind notebook 04's GAE and beta explorers: their maths and figures.

- GAE on one episode, written as the sum it is, A_t = sum_l (gamma * lam)^l delta_{t+l}
  (``ppo.compute_gae`` computes the same thing with a backward recursion);
- the KL-regularized optimum of a categorical policy, pi*(y) ~ pi_ref(y) exp(r(y) / beta),
  with its expected reward and its KL to the reference."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

# ---- GAE on one episode ----------------------------------------------------------------------


def td_errors(rewards, values, gamma: float) -> torch.Tensor:
    """delta_t = r_t + gamma * V(s_{t+1}) - V(s_t) for one episode (T,), with V = 0 after its last token."""
    rewards, values = torch.as_tensor(rewards, dtype=torch.float32), torch.as_tensor(values, dtype=torch.float32)
    if rewards.dim() != 1 or rewards.shape != values.shape:
        expected = f"one episode shaped like rewards {tuple(rewards.shape)}"
        raise ValueError(f"values: expected {expected}, got {tuple(values.shape)}")
    next_values = torch.cat([values[1:], torch.zeros(1)])
    return rewards + gamma * next_values - values


def gae_by_sum(rewards, values, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, advantages), both (T,): A_t = sum over l >= 0 of (gamma * lam)^l * delta_{t+l}."""
    delta = td_errors(rewards, values, gamma)
    steps = torch.arange(len(delta))
    lag = steps[None, :] - steps[:, None]  # lag[t, k] = k - t
    weights = torch.where(lag >= 0, (gamma * lam) ** lag.clamp(min=0).double(), torch.zeros((), dtype=torch.float64))
    return delta, (weights.float() @ delta)


def plot_gae_terms(tokens, rewards, values, gamma: float, lam: float):
    """Bars of delta_t and A_t per token of one episode, with the two limits lambda = 0 (A = delta)
    and lambda = 1 (A = discounted reward-to-go - V) as markers."""
    delta, advantages = gae_by_sum(rewards, values, gamma, lam)
    _, monte_carlo = gae_by_sum(rewards, values, gamma, 1.0)
    xs = torch.arange(len(tokens)).float()
    fig, ax = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
    ax.bar(xs - 0.2, delta.tolist(), width=0.4, color="tab:gray", label="TD error delta_t (= A_t at lambda 0)")
    ax.bar(xs + 0.2, advantages.tolist(), width=0.4, color="tab:blue", label=f"A_t at lambda {lam:g}")
    ax.plot((xs + 0.2).tolist(), monte_carlo.tolist(), "k_", ms=18, mew=2, label="A_t at lambda 1 (return - V)")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(xs.tolist(), list(tokens))
    ax.set_xlabel("generated token (the action at step t)")
    ax.set_ylabel("advantage (reward units)")
    ax.set_title(f"GAE on one episode: gamma {gamma:g}, lambda {lam:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


# ---- the KL-regularized optimum ----------------------------------------------------------------


def tilted_policy(ref_probs, rewards, beta: float) -> torch.Tensor:
    """pi*(y) = pi_ref(y) exp(r(y) / beta) / Z, the maximizer of E_pi[r] - beta KL(pi || pi_ref); (K,)."""
    if not beta > 0:
        raise ValueError(f"beta: expected a positive float, got {beta!r}")
    ref_probs = torch.as_tensor(ref_probs, dtype=torch.float64)
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if ref_probs.dim() != 1 or (ref_probs <= 0).any() or abs(ref_probs.sum().item() - 1) > 1e-6:
        raise ValueError(f"ref_probs: expected a positive probability vector summing to 1, got {ref_probs.tolist()}")
    return torch.softmax(ref_probs.log() + rewards / beta, dim=0)


def kl_divergence(probs, ref_probs) -> float:
    """KL(p || q) = sum p log(p / q) in nats, for categorical p, q (K,); terms with p = 0 count 0."""
    p, q = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(ref_probs, dtype=torch.float64)
    return torch.where(p > 0, p * (p / q).log(), torch.zeros((), dtype=torch.float64)).sum().item()


def tilt_summary(ref_probs, rewards, beta: float) -> dict:
    """pi* at beta, its expected reward E_pi*[r], KL(pi* || pi_ref) and the objective E[r] - beta KL."""
    probs = tilted_policy(ref_probs, rewards, beta)
    expected = (probs * torch.as_tensor(rewards, dtype=torch.float64)).sum().item()
    kl = kl_divergence(probs, ref_probs)
    return {"probs": probs, "expected_reward": expected, "kl": kl, "objective": expected - beta * kl}


def plot_tilt(labels, ref_probs, rewards, beta: float, betas=None):
    """Left: pi_ref and pi* at ``beta`` per answer. Right: E_pi*[r] and KL(pi* || pi_ref) over a range of
    beta (log scale), the current beta marked."""
    betas = betas if betas is not None else [10 ** (k / 10) for k in range(-20, 21)]
    now = tilt_summary(ref_probs, rewards, beta)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    xs = torch.arange(len(labels)).float()
    left.bar((xs - 0.2).tolist(), [float(p) for p in ref_probs], width=0.4, color="tab:gray", label="pi_ref")
    left.bar((xs + 0.2).tolist(), now["probs"].tolist(), width=0.4, color="tab:orange", label=f"pi* (beta {beta:.3g})")
    left.set_xticks(xs.tolist(), [f"{a} (r {r:+.2g})" for a, r in zip(labels, rewards)], rotation=25, ha="right")
    left.set_xlabel("answer and its reward")
    left.set_ylabel("probability")
    left.set_title("pi* = pi_ref exp(r / beta) / Z")
    left.legend(fontsize=8)
    rows = [tilt_summary(ref_probs, rewards, b) for b in betas]
    right.plot(betas, [r["expected_reward"] for r in rows], color="tab:orange", label="E_pi*[r]")
    right.plot(betas, [r["kl"] for r in rows], color="tab:purple", label="KL(pi* || pi_ref), nats")
    right.plot([beta, beta], [now["expected_reward"], now["kl"]], "ko")
    right.set_xscale("log")
    right.set_xlabel("beta (log scale)")
    right.set_ylabel("expected reward / KL (nats)")
    right.set_title(f"at beta {beta:.3g}: E[r] {now['expected_reward']:.3g}, KL {now['kl']:.3g}")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return fig


def log_partition(ref_probs, rewards, beta: float) -> float:
    """beta * log Z, with Z = sum pi_ref exp(r / beta): the largest value of E_pi[r] - beta KL(pi || pi_ref)."""
    ref_probs = torch.as_tensor(ref_probs, dtype=torch.float64)
    return beta * torch.logsumexp(ref_probs.log() + torch.as_tensor(rewards, dtype=torch.float64) / beta, dim=0).item()
