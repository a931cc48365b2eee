"""Figures of notebook 05 (the PPO loop): the training curves, per-token rewards of a rollout, gold before
and after, a learned critic against V = 0. The CLI's `run` draws the first and third as well."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import SymLogNorm

from ..stats import trailing_mean
from .style import plot_raw_and_smoothed, style_axes

HISTORY_PANELS = (
    ("reward", [("proxy_reward", "proxy (reward model)"), ("gold_reward", "gold (hidden human)")], "mean reward"),
    ("validity", [("valid_fraction", "valid answers")], "fraction"),
    ("KL to reference", [("kl", "KL (k1, in the reward)"), ("kl_k3", "KL (k3, display)")], "nats per answer"),
    ("update size", [("clipfrac", "clipfrac"), ("approx_kl", "approx_kl")], "value"),
    ("entropy", [("entropy", "policy entropy")], "nats per token"),
    ("critic", [("value_loss", "value loss"), ("explained_variance", "explained variance")], "value"),
)
"""The panels of ``plot_ppo_history``: (title, [(metric key, legend label)], y label)."""


def plot_ppo_history(history: list[dict], title: str = "PPO fine-tuning", smooth: int = 5):
    """Six panels over PPO iterations: proxy and gold reward, validity, KL to the reference,
    clipfrac and approx_kl, entropy, value loss and explained variance."""
    it = [h["iteration"] for h in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (panel, keys, ylabel) in zip(axes.flat, HISTORY_PANELS):
        for key, label in keys:
            plot_raw_and_smoothed(ax, it, [h[key] for h in history], smooth, label)
        ax.set_title(panel)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(ylabel)
        style_axes(ax, legend="small")
    fig.suptitle(f"{title} (faint: per iteration, solid: {smooth}-iteration mean)")
    return fig


def plot_gold_before_after(gold_before, gold_after, title: str = "Gold score of sampled answers"):
    """Histograms of gold scores (-1 invalid, 1 shortest valid sum) before and after PPO."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    bins = [-1.05, -0.95, 0.0, 0.03, 0.05, 0.09, 0.11, 0.2, 0.3, 0.45, 0.55, 0.9, 1.05]
    ax.hist(
        [list(map(float, gold_before)), list(map(float, gold_after))],
        bins=bins,
        label=["before PPO (pretrained)", "after PPO"],
        color=["tab:gray", "tab:blue"],
    )
    ax.set_xlabel("gold score (-1 = invalid, 1 = shortest possible sum, halves per extra term)")
    ax.set_ylabel("number of answers")
    ax.set_title(title)
    ax.legend()
    return fig


def plot_critic_comparison(histories: dict, smooth: int = 5, title: str = "A learned critic against V = 0"):
    """Two panels over PPO iterations for each labelled history: rollout gold reward (trailing mean
    of ``smooth`` iterations) and the critic's explained variance."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for label, history in histories.items():
        it = [h["iteration"] for h in history]
        axes[0].plot(it, trailing_mean([h["gold_reward"] for h in history], smooth), label=label)
        axes[1].plot(it, [h["explained_variance"] for h in history], label=label)
    for ax, ylabel in zip(axes, ("gold reward of the rollout (trailing mean)", "explained variance")):
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(ylabel)
    style_axes(*axes, legend="normal")
    fig.suptitle(title)
    return fig


def plot_rollout_rewards(answers: list[list[str]], rewards, sources=None, title: str = "Per-token rewards"):
    """Heat map of per-token rewards (episodes x tokens) with each token written in its cell;
    positions after EOS are blank. ``answers``: the token strings of each episode; ``sources``:
    optional row labels (the numbers N). The colour scale is symmetric-log, so that small KL
    penalties stay visible next to the reward-model score on EOS."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    shown = torch.full((len(answers), rewards.size(1)), float("nan"))
    for row, tokens in enumerate(answers):
        shown[row, : len(tokens)] = rewards[row, : len(tokens)]
    limit = max(float(shown.nan_to_num(0).abs().max()), 0.1)
    norm = SymLogNorm(linthresh=0.01, vmin=-limit, vmax=limit)
    fig, ax = plt.subplots(figsize=(0.7 * rewards.size(1) + 3, 0.5 * len(answers) + 1.4), constrained_layout=True)
    image = ax.imshow(shown, cmap="RdBu", norm=norm, aspect="auto")
    for row, tokens in enumerate(answers):
        for t, token in enumerate(tokens):
            value = shown[row, t].item() + 0.0  # + 0.0 writes -0.0 as 0.00
            color = "white" if abs(float(norm(value)) - 0.5) > 0.35 else "black"
            ax.text(t, row, f"{token}\n{value:+.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(rewards.size(1)))
    ax.set_yticks(range(len(answers)), [f"N={n}" for n in sources] if sources is not None else range(len(answers)))
    ax.set_xlabel("token position t (blank: after EOS, masked)")
    ax.set_ylabel("episode")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="reward r_t (symmetric log scale)")
    return fig
