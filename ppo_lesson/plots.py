"""Every figure of the lesson, as functions that return a matplotlib Figure.

``save_figure(fig, name)`` writes ``figures/<name>.png`` (or into another folder), so the
notebooks and the CLI produce the same files the README shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


def save_figure(fig, name: str, folder=None) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png`` (default: the repository's figures/); returns the path."""
    folder = Path(folder) if folder is not None else FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _smooth(values, window: int):
    """Trailing moving average (the first points average what is there so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_ppo_history(history: list[dict], title: str = "PPO fine-tuning", smooth: int = 5):
    """Six panels over PPO iterations: proxy and gold reward, validity, KL to the reference,
    clipfrac and approx_kl, entropy, value loss and explained variance."""
    it = [h["iteration"] for h in history]
    panels = [
        ("reward", [("proxy_reward", "proxy (reward model)"), ("gold_reward", "gold (hidden human)")], "mean reward"),
        ("validity", [("valid_fraction", "valid answers")], "fraction"),
        ("KL to reference", [("kl", "KL (k1, in the reward)"), ("kl_k3", "KL (k3, display)")], "nats per answer"),
        ("update size", [("clipfrac", "clipfrac"), ("approx_kl", "approx_kl")], "value"),
        ("entropy", [("entropy", "policy entropy")], "nats per token"),
        ("critic", [("value_loss", "value loss"), ("explained_variance", "explained variance")], "value"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (panel, keys, ylabel) in zip(axes.flat, panels):
        for key, label in keys:
            raw = [h[key] for h in history]
            (line,) = ax.plot(it, raw, alpha=0.3)
            ax.plot(it, _smooth(raw, smooth), color=line.get_color(), label=label)
        ax.set_title(panel)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (faint: per iteration, solid: {smooth}-iteration mean)")
    return fig


def plot_gold_before_after(gold_before, gold_after, title: str = "Gold score of sampled answers"):
    """Histograms of gold scores (-1 invalid, 1 shortest valid sum) before and after PPO."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    bins = [-1.05, -0.95, 0.0, 0.03, 0.05, 0.09, 0.11, 0.2, 0.3, 0.45, 0.55, 0.9, 1.05]
    ax.hist([list(map(float, gold_before)), list(map(float, gold_after))], bins=bins,
            label=["before PPO (pretrained)", "after PPO"], color=["tab:gray", "tab:blue"])
    ax.set_xlabel("gold score (-1 = invalid, 1 = shortest possible sum, halves per extra term)")
    ax.set_ylabel("number of answers")
    ax.set_title(title)
    ax.legend()
    return fig
