"""Figures of notebook 04 (the objective): the clipped surrogate, overshooting without the clip, GAE on one
episode, the adaptive KL controller."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .style import SMALL_FONT, style_axes

CLIP_COLOR = "tab:orange"
"""The clip range 1 +- clip_eps and the region where it flattens the objective."""


def draw_clip_objective(ax, clip_eps: float = 0.2, advantage: float = 1.0, ratio_max: float = 2.0):
    """One panel of the PPO paper's Figure 1 on ``ax``: L^CLIP = min(r A, clip(r, 1-eps, 1+eps) A)
    against the ratio r, the unclipped r A dashed, the region where the clip makes it flat shaded."""
    ratio = torch.linspace(0.0, ratio_max, 401)
    unclipped = ratio * advantage
    clipped = torch.minimum(unclipped, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    ax.plot(ratio, unclipped, "--", color="tab:gray", label="unclipped r A")
    ax.plot(ratio, clipped, color="tab:blue", lw=2.2, label="L$^{CLIP}$ = min(r A, clip(r) A)")
    if advantage > 0:
        ax.axvspan(1 + clip_eps, ratio_max, color=CLIP_COLOR, alpha=0.15, label="flat: zero gradient")
    elif advantage < 0:
        ax.axvspan(0, 1 - clip_eps, color=CLIP_COLOR, alpha=0.15, label="flat: zero gradient")
    for edge in (1 - clip_eps, 1 + clip_eps):
        ax.axvline(edge, color=CLIP_COLOR, ls=":", lw=1)
    ax.plot([1.0], [advantage], "o", color="tab:red", label="r = 1 (before the update)")
    ax.axhline(0, color="0.5", lw=0.8)
    sign = ">" if advantage > 0 else "<" if advantage < 0 else "="
    ax.set_title(f"A = {advantage:.3g} (A {sign} 0), clip_eps = {clip_eps:.3g}")
    ax.set_xlabel("probability ratio r = pi_new(a|s) / pi_old(a|s)")
    ax.set_ylabel("objective to maximize (units of A)")
    ax.set_xlim(0, ratio_max)
    style_axes(ax)
    ax.legend(fontsize=SMALL_FONT, loc="lower left" if advantage < 0 else "upper left")


def plot_clip_objective(clip_eps: float = 0.2, advantages=(1.0, -1.0), ratio_max: float = 2.0):
    """L^CLIP against the ratio, one panel per advantage (default A > 0 and A < 0, as in Figure 1
    of Schulman et al. 2017), the clipped-flat region shaded."""
    fig, axes = plt.subplots(
        1, len(advantages), figsize=(5.6 * len(advantages), 4), squeeze=False, constrained_layout=True
    )
    for ax, advantage in zip(axes.flat, advantages):
        draw_clip_objective(ax, clip_eps, advantage, ratio_max)
    fig.suptitle("PPO's clipped objective: the incentive to move r stops at 1 +- clip_eps")
    return fig


def _draw_ratios(ax, label: str, ratio, action_labels, clip_eps: float) -> None:
    """The probability ratio of each action over gradient steps ((steps + 1, actions)), the clip range shaded."""
    ratio = torch.as_tensor(ratio, dtype=torch.float32)
    for a, name in enumerate(action_labels):
        ax.plot(ratio[:, a], label=name)
    ax.axhspan(1 - clip_eps, 1 + clip_eps, color=CLIP_COLOR, alpha=0.15, label=f"1 +- clip_eps ({clip_eps:g})")
    ax.set_title(f"{label}: ratio of each action")
    ax.set_xlabel("gradient step on the same batch")
    ax.set_ylabel("ratio pi_new(a) / pi_old(a)")
    style_axes(ax, legend="small")


def plot_overshoot(runs: dict, action_labels, clip_eps: float):
    """Repeated gradient steps on one batch of a toy policy. One panel of probability ratios per
    run, and one of the KL to the old policy (exact, and the approx_kl PPO logs) for all runs.

    runs: {label: {"ratio": (steps + 1, actions) tensor, "kl": [...], "approx_kl": [...]}}."""
    n_rows = len(runs) // 2 + 1
    fig, grid = plt.subplots(n_rows, 2, figsize=(11, 3.8 * n_rows), squeeze=False, constrained_layout=True)
    axes = list(grid.flat)
    for ax in axes[len(runs) + 1 :]:
        ax.axis("off")
    for ax, (label, run) in zip(axes, runs.items()):
        _draw_ratios(ax, label, run["ratio"], action_labels, clip_eps)
    ax_kl = axes[len(runs)]
    for (label, run), color in zip(runs.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        ax_kl.plot(run["kl"], color=color, label=f"{label}: exact KL(old || new)")
        ax_kl.plot(run["approx_kl"], "--", color=color, label=f"{label}: approx_kl on the batch")
    ax_kl.set_title("How far the policy moved")
    ax_kl.set_xlabel("gradient step on the same batch")
    ax_kl.set_ylabel("KL (nats)")
    style_axes(ax_kl, legend="small")
    fig.suptitle("Repeated gradient steps on one batch: the clip stops the push near 1 +- clip_eps")
    return fig


def plot_gae_episode(tokens, rewards, values, advantages, returns=None, gamma: float = 1.0, lam: float = 0.95):
    """One episode, token by token: the per-token rewards (bars), the critic's values, the GAE
    advantages and (optionally) the returns. All sequences have one entry per real token."""
    xs = list(range(len(tokens)))
    as_list = lambda x: [float(v) for v in x]  # noqa: E731
    fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(tokens) + 2), 4), constrained_layout=True)
    ax.bar(xs, as_list(rewards), color="tab:gray", alpha=0.6, label="reward r_t")
    ax.plot(xs, as_list(values), "s-", color="tab:purple", label="value V(s_t)")
    if returns is not None:
        ax.plot(xs, as_list(returns), "^--", color="tab:green", label="return = A_t + V(s_t)")
    ax.plot(xs, as_list(advantages), "o-", color="tab:blue", lw=2, label="advantage A_t (GAE)")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(xs, list(tokens))
    ax.set_xlabel("generated token (the action at step t)")
    ax.set_ylabel("reward units (normalized score, nats of KL)")
    ax.set_title(f"GAE on one episode (gamma {gamma:g}, lambda {lam:g})")
    style_axes(ax, legend="small")
    return fig


def plot_kl_controller(betas: dict, target: float):
    """kl_beta over PPO iterations for several observed KLs ({label: [beta per iteration]})."""
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    for label, trajectory in betas.items():
        ax.plot([float(b) for b in trajectory], label=label)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("kl_beta (penalty per nat of KL)")
    ax.set_title(f"Adaptive KL controller (target KL {target:g} nats per answer)")
    style_axes(ax, legend="small")
    return fig
