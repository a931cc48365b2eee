"""Figures of notebook 03 (the reward model): Bradley-Terry, training curves, score against gold, near misses,
score normalization."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from .style import SMALL_FONT, plot_raw_and_smoothed, style_axes, valid_color


def plot_bradley_terry(max_margin: float = 6.0):
    """Left: P(chosen beats rejected) = sigmoid(r_c - r_r). Right: the Bradley-Terry loss
    -log sigmoid(r_c - r_r) against the margin, with its gradient."""
    margin = torch.linspace(-max_margin, max_margin, 241)
    prob = torch.sigmoid(margin)
    loss = -torch.nn.functional.logsigmoid(margin)
    fig, (ax_p, ax_l) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax_p.plot(margin, prob, color="tab:blue")
    ax_p.axhline(0.5, color="0.5", lw=0.8, ls=":")
    ax_p.set_ylabel("P(chosen preferred)")
    ax_p.set_title("Bradley-Terry: P = sigmoid(r_chosen - r_rejected)")
    ax_l.plot(margin, loss, color="tab:red", label="loss = -log sigmoid(margin)")
    ax_l.plot(margin, prob - 1, color="tab:green", ls="--", label="d loss / d margin = sigmoid(margin) - 1")
    ax_l.axhline(0, color="0.5", lw=0.8)
    ax_l.set_ylabel("loss (nats) / gradient")
    ax_l.set_title("The loss pushes the margin up, and stops caring once it is large")
    ax_l.legend()
    for ax in (ax_p, ax_l):
        ax.axvline(0, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("margin r_chosen - r_rejected (reward units)")
    style_axes(ax_p, ax_l)
    return fig


def plot_reward_history(history: list[dict], smooth: int = 20):
    """Bradley-Terry loss and batch accuracy (share of pairs ranked right) over training steps."""
    steps = [h["step"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for ax, key, color, ylabel in (
        (ax_l, "loss", "tab:red", "Bradley-Terry loss (nats per pair)"),
        (ax_a, "accuracy", "tab:green", "batch accuracy (chosen scored higher)"),
    ):
        values = [h[key] for h in history]
        plot_raw_and_smoothed(ax, steps, values, smooth, f"{smooth}-step mean", color=color, raw_lw=1)
        ax.set_xlabel("training step (one batch of pairs)")
        ax.set_ylabel(ylabel)
        style_axes(ax, legend="normal")
    ax_l.axhline(math.log(2), color="0.5", ls=":", lw=1)
    ax_l.text(steps[-1], math.log(2), "log 2: a coin flip", ha="right", va="bottom", fontsize=8, color="0.4")
    ax_a.set_ylim(0, 1.02)
    fig.suptitle("Reward model training")
    return fig


def plot_reward_vs_gold(scores, gold, title: str = "Reward model score against the hidden gold score"):
    """Strip plot: the reward model's (normalized) score of each sampled answer, grouped by its
    gold score; a black bar marks each group's mean."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    gold = torch.as_tensor(gold, dtype=torch.float32)
    levels = sorted(set(gold.tolist()))
    jitter = torch.rand(len(scores), generator=torch.Generator().manual_seed(0)) * 0.5 - 0.25
    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    for i, level in enumerate(levels):
        sel = gold == level
        ax.scatter(i + jitter[sel], scores[sel], s=10, alpha=0.5, color=valid_color(level))
        ax.plot([i - 0.35, i + 0.35], [scores[sel].mean()] * 2, color="black", lw=2)
    ax.set_xticks(range(len(levels)), [f"{v:g}\n(n={int((gold == v).sum())})" for v in levels])
    ax.set_xlabel("gold score of the answer (-1 invalid; 1 shortest sum)")
    ax.set_ylabel("reward model score (normalized)")
    corr = torch.corrcoef(torch.stack([scores, gold]))[0, 1].item()
    ax.set_title(f"{title} (correlation {corr:.2f})")
    style_axes(ax, grid="y")
    return fig


def plot_near_misses(labels, scores, gold, title: str = "Where the reward model is wrong"):
    """Horizontal bars: the reward model's normalized score of hand-made answers (``labels``),
    coloured by the gold verdict (blue valid, red invalid), with the gold score as a marker."""
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.4), constrained_layout=True)
    ys = list(range(len(labels)))[::-1]
    colors = [valid_color(g) for g in gold]
    ax.barh(ys, [float(s) for s in scores], color=colors, alpha=0.7, label="reward model score (normalized)")
    ax.scatter([float(g) for g in gold], ys, marker="D", color="black", zorder=3, label="gold score")
    ax.set_yticks(ys, list(labels))
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlabel("score (blue bars: valid answers, red bars: invalid ones)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=SMALL_FONT)
    style_axes(ax, grid="x")
    return fig


def plot_score_normalization(raw, normalized):
    """Histograms of reward-model scores of reference samples, raw and normalized (mean 0, std 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for ax, values, name, color in ((axes[0], raw, "raw", "tab:gray"), (axes[1], normalized, "normalized", "tab:blue")):
        values = torch.as_tensor(values, dtype=torch.float32)
        mean, std = values.mean().item(), values.std().item()
        ax.hist(values.tolist(), bins=40, color=color)
        ax.axvline(mean, color="black", lw=1.5, label=f"mean {mean:.2f}")
        ax.axvspan(mean - std, mean + std, color=color, alpha=0.15, label=f"mean +- std ({std:.2f})")
        ax.set_xlabel(f"{name} reward-model score")
        ax.set_ylabel("number of answers")
        ax.set_title(f"{name.capitalize()} scores of reference samples")
        style_axes(ax, grid="y", legend="normal")
    return fig
