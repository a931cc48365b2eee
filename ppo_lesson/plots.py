"""Every figure of the lesson, as functions that return a matplotlib Figure.

``save_figure(fig, name)`` writes ``figures/<name>.png`` (or into another folder), so the
notebooks and the CLI produce the same files the README shows."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import SymLogNorm

from .evaluate import trailing_mean

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


def figures_dir() -> Path:
    """Where ``save_figure`` writes by default: $PPO_LESSON_FIGURES when set (the tests point it at a
    scratch folder, so running them never rewrites the committed figures), else the repository's figures/."""
    env = os.environ.get("PPO_LESSON_FIGURES")
    return Path(env) if env else FIGURES_DIR


def save_figure(fig, name: str, folder=None) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png`` (default: ``figures_dir()``); returns the path."""
    folder = Path(folder) if folder is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


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
            ax.plot(it, trailing_mean(raw, smooth), color=line.get_color(), label=label)
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
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def _kl_axis(ax, which: str, values) -> str:
    """A symlog KL axis when the KL spans more than a decade above 1 nat (runs that drift far), else linear."""
    if max(values, default=0.0) > 10:
        (ax.set_xscale if which == "x" else ax.set_yscale)("symlog", linthresh=1.0)
        return ", symlog"
    return ""


def _by_label(runs: list[dict]) -> dict:
    """Runs grouped by their "label", in first-seen order."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    return groups


def plot_sample_efficiency(
    curves: dict,
    lr_search: dict,
    gold_level: float,
    n_seeds: int,
    samples_to_level: dict | None = None,
    budget: int | None = None,
    smooth: int = 5,
):
    """Left: on-policy gold reward against sampled answers, one faint line per seed and their mean,
    for each method at its best learning rate. Middle: the learning-rate search, final gold reward
    on the evaluation set per seed (dots) and its mean (line). Right (when ``samples_to_level`` is
    given): sampled answers until the gold level is reached, per seed and learning rate.

    curves: {method: {seed: (samples, gold)}}; lr_search: {method: {lr: [final gold per seed]}};
    samples_to_level: {method: {lr: [samples or None (never) per seed]}}; budget: samples per run."""
    n_panels = 3 if samples_to_level else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6.2 * n_panels, 4.3), constrained_layout=True)
    ax, ax_lr = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (method, per_seed) in zip(colors, curves.items()):
        smoothed = {seed: trailing_mean(gold, smooth) for seed, (_, gold) in per_seed.items()}
        samples = next(iter(per_seed.values()))[0]
        for gold in smoothed.values():
            ax.plot(samples, gold, color=color, alpha=0.3, lw=1)
        mean = [sum(vals) / len(vals) for vals in zip(*smoothed.values())]
        ax.plot(samples, mean, color=color, lw=2.2, label=f"{method}, mean of {len(per_seed)} seed(s)")
    ax.axhline(gold_level, color="black", ls="--", lw=1, label=f"gold level {gold_level:g}")
    ax.set_xlabel("sampled answers (rollouts)")
    ax.set_ylabel(f"gold reward ({smooth}-iteration mean, on-policy)")
    ax.set_title("Gold per sampled answer, best lr of each")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for color, (method, search) in zip(colors, lr_search.items()):
        lrs = sorted(search)
        for lr in lrs:
            ax_lr.scatter([lr] * len(search[lr]), search[lr], color=color, alpha=0.45, s=18)
        ax_lr.plot(lrs, [sum(search[lr]) / len(search[lr]) for lr in lrs], "o-", color=color, label=method)
    ax_lr.set_xscale("log")
    ax_lr.set_xlabel("learning rate (log scale)")
    ax_lr.set_ylabel("final gold reward (evaluation set)")
    ax_lr.set_title(f"Learning-rate search: final gold ({n_seeds} seed(s); dots: seeds)")
    ax_lr.legend(fontsize=8)
    ax_lr.grid(alpha=0.3)
    if samples_to_level:
        ax_s = axes[2]
        never = budget * 1.08 if budget else None
        for color, (method, search) in zip(colors, samples_to_level.items()):
            lrs, means = sorted(search), []
            for lr in lrs:
                reached = [x for x in search[lr] if x is not None]
                missed = len(search[lr]) - len(reached)
                ax_s.scatter([lr] * len(reached), reached, color=color, alpha=0.45, s=18)
                if never and missed:
                    ax_s.scatter([lr] * missed, [never] * missed, color=color, marker="x", s=30)
                means.append(sum(reached) / len(reached) if reached else float("nan"))
            ax_s.plot(lrs, means, "o-", color=color, label=f"{method} (mean of seeds that reached it)")
        if never:
            ax_s.axhline(budget, color="gray", lw=1, ls=":", label=f"budget ({budget} answers); x: never")
        ax_s.set_xscale("log")
        ax_s.set_xlabel("learning rate (log scale)")
        ax_s.set_ylabel(f"sampled answers to reach gold {gold_level:g}")
        ax_s.set_title(f"Samples to reach gold {gold_level:g} ({smooth}-iteration mean)")
        ax_s.legend(fontsize=8)
        ax_s.grid(alpha=0.3)
    return fig


def plot_stability(runs: list[dict], smooth: int = 5):
    """Gold reward (top) and KL to the reference (bottom) over PPO iterations, clipped against
    unclipped surrogate, one column per learning rate, one line per seed.

    runs: [{label, lr, seed, iteration, gold, kl}]."""
    lrs = sorted({r["lr"] for r in runs})
    fig, axes = plt.subplots(2, len(lrs), figsize=(6.2 * len(lrs), 7), squeeze=False, constrained_layout=True)
    colors = dict(zip(_by_label(runs), ("tab:blue", "tab:red", "tab:green", "tab:purple")))
    for col, lr in enumerate(lrs):
        ax_gold, ax_kl = axes[0, col], axes[1, col]
        for label, group in _by_label([r for r in runs if r["lr"] == lr]).items():
            for i, run in enumerate(group):
                kwargs = {"color": colors[label], "alpha": 0.8, "lw": 1.3, "label": label if i == 0 else None}
                ax_gold.plot(run["iteration"], trailing_mean(run["gold"], smooth), **kwargs)
                ax_kl.plot(run["iteration"], trailing_mean(run["kl"], smooth), **kwargs)
        ax_gold.set_title(f"lr {lr:.0e}: gold reward (one line per seed)")
        ax_gold.set_ylabel(f"gold reward ({smooth}-iteration mean)")
        scale = _kl_axis(ax_kl, "y", [k for r in runs if r["lr"] == lr for k in trailing_mean(r["kl"], smooth)])
        ax_kl.set_title(f"lr {lr:.0e}: KL to the reference")
        ax_kl.set_ylabel(f"KL (nats per answer{scale}), {smooth}-iteration mean")
        for ax in (ax_gold, ax_kl):
            ax.set_xlabel("PPO iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Clipped against unclipped surrogate, same K epochs, no early stop")
    return fig


def plot_reward_hacking(runs: list[dict], lr: float | None = None, smooth: int = 5):
    """Proxy (reward model) and gold reward against the KL to the reference, and the KL over
    iterations, for each KL setting; one line per seed, a dot at its end.

    runs: [{label, seed, iteration, kl, proxy, gold}]."""
    fig, (ax_proxy, ax_gold, ax_kl) = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    colors = dict(zip(_by_label(runs), ("tab:red", "tab:orange", "tab:blue", "tab:green")))
    for label, group in _by_label(runs).items():
        for i, run in enumerate(group):
            kl = trailing_mean(run["kl"], smooth)
            kwargs = {"color": colors[label], "alpha": 0.8, "lw": 1.3, "label": label if i == 0 else None}
            for ax, key in ((ax_proxy, "proxy"), (ax_gold, "gold")):
                values = trailing_mean(run[key], smooth)
                ax.plot(kl, values, **kwargs)
                ax.plot(kl[-1:], values[-1:], "o", color=colors[label], ms=5)
            ax_kl.plot(run["iteration"], kl, **kwargs)
    all_kl = [k for run in runs for k in trailing_mean(run["kl"], smooth)]
    for ax, what in ((ax_proxy, "proxy reward (reward model, normalized)"), (ax_gold, "gold reward (hidden human)")):
        scale = _kl_axis(ax, "x", all_kl)
        ax.set_xlabel(f"KL to the reference (nats per answer{scale})")
        ax.set_ylabel(f"{what}, {smooth}-iteration mean")
        ax.set_title(what.split(" (")[0].capitalize() + " against KL")
    scale = _kl_axis(ax_kl, "y", all_kl)
    ax_kl.set_xlabel("PPO iteration")
    ax_kl.set_ylabel(f"KL to the reference (nats per answer{scale})")
    ax_kl.set_title("KL to the reference over training")
    for ax in (ax_proxy, ax_gold, ax_kl):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Reward hacking" + (f" (lr {lr:.0e}; dots: end of training)" if lr else ""))
    return fig


# ---- notebooks 02, 03, 05: pretraining, reward model, one rollout ----------------------------


def plot_teacher_forcing(source: str, target: str):
    """The shifted target of teacher forcing: the decoder reads [BOS, y1 .. y_{T-1}] and position t
    is trained to predict label y_t, the true next token, with EOS as the last label."""
    inputs = ["BOS", *target]
    labels = [*target, "EOS"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 3.1), constrained_layout=True)
    for t, (x, y) in enumerate(zip(inputs, labels)):
        for row, text, color in ((0, x, "tab:blue"), (1.6, y, "tab:orange")):
            ax.add_patch(plt.Rectangle((t - 0.32, row - 0.32), 0.64, 0.64, fc=color, alpha=0.25, ec=color))
            ax.text(t, row, text, ha="center", va="center", fontsize=11 if len(text) == 1 else 8)
        ax.annotate("", xy=(t, 1.25), xytext=(t, 0.35), arrowprops={"arrowstyle": "->", "color": "0.3"})
        if t + 1 < len(inputs):  # the true token at t is the decoder's input at t + 1
            arrow = {"arrowstyle": "->", "color": "tab:green", "ls": "--", "alpha": 0.6}
            ax.annotate("", xy=(t + 1 - 0.2, 0.35), xytext=(t + 0.2, 1.25), arrowprops=arrow)
    ax.text(-0.6, 0, "decoder input", ha="right", va="center", color="tab:blue")
    ax.text(-0.6, 1.6, "labels", ha="right", va="center", color="tab:orange")
    ax.set_xlim(-2.6, len(labels) - 0.4)
    ax.set_ylim(-0.6, 2.2)
    ax.set_xticks(range(len(labels)))
    ax.set_xlabel("decoder position t (grey: position t predicts the label above; green: the true token is fed next)")
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Teacher forcing on the pair {source} -> {target}: the input is the label shifted right by one")
    return fig


def plot_pretrain_history(history: list[dict], total_steps: int | None = None, smooth: int = 25):
    """Teacher-forcing loss (cross-entropy per target token) over optimizer steps, with the
    learning-rate schedule on a second axis. ``total_steps`` fixes the x range (live drawing)."""
    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(8, 3.8), constrained_layout=True)
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1)
    ax.plot(steps, trailing_mean(loss, smooth), color="tab:blue", label=f"loss ({smooth}-step mean)")
    ax.set_ylim(0, max(loss) * 1.05)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax_lr = ax.twinx()
    ax_lr.plot(steps, [h["lr"] for h in history], color="tab:gray", ls="--", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_ylim(bottom=0)
    if total_steps:
        ax.set_xlim(0, total_steps)
    lines = ax.get_legend_handles_labels()
    lr_lines = ax_lr.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    ax.set_title(f"Supervised pretraining: step {steps[-1] + 1}, loss {trailing_mean(loss, smooth)[-1]:.3f}")
    return fig


def plot_next_token_distributions(distributions: dict, tokens, title: str = "Next-token distribution", samples=None):
    """Grouped bars: one probability distribution over ``tokens`` per entry of ``distributions``
    ({label: probabilities}), e.g. one per sampling temperature. ``samples`` (lines of text, such
    as sampled answers) are listed in a panel on the right."""
    if samples is None:
        fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    else:
        fig, (ax, ax_text) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=(3, 1.2), constrained_layout=True)
        ax_text.axis("off")
        ax_text.text(0, 1, "\n".join(samples), va="top", family="monospace", fontsize=9, transform=ax_text.transAxes)
    width = 0.8 / max(1, len(distributions))
    for i, (label, probs) in enumerate(distributions.items()):
        xs = [x + (i - (len(distributions) - 1) / 2) * width for x in range(len(tokens))]
        ax.bar(xs, [float(p) for p in probs], width=width, label=label)
    ax.set_xticks(range(len(tokens)), list(tokens))
    ax.set_xlabel("next token")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    if len(distributions) > 1:
        ax.legend()
    return fig


def plot_policy_taste(gold, extra_terms, title: str = "The pretrained policy has no taste"):
    """Left: histogram of gold scores of sampled answers. Right: how many terms the valid answers
    use beyond the fewest possible (0 = a shortest sum, what the hidden human prefers)."""
    fig, (ax_gold, ax_terms) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    gold = [float(g) for g in gold]
    levels = sorted(set(gold))
    counts = [gold.count(v) for v in levels]
    ax_gold.bar(range(len(levels)), counts, color=["tab:red" if v < 0 else "tab:blue" for v in levels])
    ax_gold.set_xticks(range(len(levels)), [f"{v:g}" for v in levels], rotation=30)
    ax_gold.set_xlabel("gold score (-1 invalid; 1 shortest sum; halves per extra term)")
    ax_gold.set_ylabel("number of answers")
    ax_gold.set_title(f"Gold scores (mean {sum(gold) / len(gold):.3f})")
    top = max(extra_terms) if extra_terms else 0
    ax_terms.hist(list(extra_terms), bins=[x - 0.5 for x in range(top + 2)], color="tab:blue", rwidth=0.85)
    ax_terms.set_xticks(range(top + 1))
    ax_terms.set_xlabel("terms beyond the fewest possible (valid answers)")
    ax_terms.set_ylabel("number of answers")
    share = sum(1 for e in extra_terms if e == 0) / max(1, len(extra_terms))
    ax_terms.set_title(f"Only {share:.0%} of valid answers are a shortest sum")
    for ax in (ax_gold, ax_terms):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return fig


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
        ax.grid(alpha=0.3)
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
        ax.plot(steps, values, color=color, alpha=0.3, lw=1)
        ax.plot(steps, trailing_mean(values, smooth), color=color, label=f"{smooth}-step mean")
        ax.set_xlabel("training step (one batch of pairs)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
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
        color = "tab:red" if level < 0 else "tab:blue"
        ax.scatter(i + jitter[sel], scores[sel], s=10, alpha=0.5, color=color)
        ax.plot([i - 0.35, i + 0.35], [scores[sel].mean()] * 2, color="black", lw=2)
    ax.set_xticks(range(len(levels)), [f"{v:g}\n(n={int((gold == v).sum())})" for v in levels])
    ax.set_xlabel("gold score of the answer (-1 invalid; 1 shortest sum)")
    ax.set_ylabel("reward model score (normalized)")
    corr = torch.corrcoef(torch.stack([scores, gold]))[0, 1].item()
    ax.set_title(f"{title} (correlation {corr:.2f})")
    ax.grid(alpha=0.3, axis="y")
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
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
    return fig


def plot_near_misses(labels, scores, gold, title: str = "Where the reward model is wrong"):
    """Horizontal bars: the reward model's normalized score of hand-made answers (``labels``),
    coloured by the gold verdict (blue valid, red invalid), with the gold score as a marker."""
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.4), constrained_layout=True)
    ys = list(range(len(labels)))[::-1]
    colors = ["tab:red" if g < 0 else "tab:blue" for g in gold]
    ax.barh(ys, [float(s) for s in scores], color=colors, alpha=0.7, label="reward model score (normalized)")
    ax.scatter([float(g) for g in gold], ys, marker="D", color="black", zorder=3, label="gold score")
    ax.set_yticks(ys, list(labels))
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlabel("score (blue bars: valid answers, red bars: invalid ones)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
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


# ---- notebook 01: the Transformer --------------------------------------------------------


def plot_embeddings(weight, labels, title: str = "Token embeddings"):
    """An embedding table (vocabulary x d_model) as a heat map, and the cosine similarity
    between every pair of token vectors."""
    weight = torch.as_tensor(weight, dtype=torch.float32)
    unit = weight / weight.norm(dim=1, keepdim=True).clamp(min=1e-8)
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True, width_ratios=(2, 1))
    limit = float(weight.abs().max())
    image = ax_w.imshow(weight, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax_w.set_yticks(range(len(labels)), list(labels))
    ax_w.set_xlabel("embedding dimension")
    ax_w.set_ylabel("token")
    ax_w.set_title(f"{title}: one learned vector per token")
    fig.colorbar(image, ax=ax_w, label="value")
    image = ax_c.imshow(unit @ unit.T, cmap="RdBu", vmin=-1, vmax=1)
    _token_axes(ax_c, labels, labels)
    ax_c.tick_params(axis="x", rotation=90)
    ax_c.set_xlabel("token")
    ax_c.set_ylabel("token")
    ax_c.set_title("Cosine similarity between tokens")
    fig.colorbar(image, ax=ax_c, label="cosine similarity")
    return fig


def plot_positional_encoding(table, dims=(0, 1, 6, 7, 20, 21)):
    """The sinusoidal position table (positions x dimensions) as a heat map, a few of its
    dimensions as curves over positions, and the dot product between every pair of positions."""
    table = torch.as_tensor(table, dtype=torch.float32)
    fig, (ax_map, ax_dims, ax_sim) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    image = ax_map.imshow(table.T, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", origin="lower")
    ax_map.set_xlabel("position (token index)")
    ax_map.set_ylabel("embedding dimension")
    ax_map.set_title("Sinusoidal positional encodings")
    fig.colorbar(image, ax=ax_map, label="value")
    for d in dims:
        kind = "sin" if d % 2 == 0 else "cos"
        ax_dims.plot(
            table[:, d],
            label=f"dim {d} ({kind}, wavelength {2 * math.pi * 10000 ** ((d - d % 2) / table.size(1)):.3g})",
        )
    ax_dims.set_xlabel("position (token index)")
    ax_dims.set_ylabel("value")
    ax_dims.set_title("Low dimensions turn fast, high ones slowly")
    ax_dims.legend(fontsize=7, loc="lower left")
    ax_dims.grid(alpha=0.3)
    image = ax_sim.imshow(table @ table.T, cmap="viridis", origin="lower")
    ax_sim.set_xlabel("position j")
    ax_sim.set_ylabel("position i")
    ax_sim.set_title("Dot product p_i . p_j depends on i - j")
    fig.colorbar(image, ax=ax_sim, label="dot product")
    return fig


def _token_axes(ax, queries, keys, fontsize=8):
    ax.set_xticks(range(len(keys)), list(keys), fontsize=fontsize)
    ax.set_yticks(range(len(queries)), list(queries), fontsize=fontsize)


def plot_masks(panels):
    """Attention masks as images, one panel per (title, mask, query_labels, key_labels); mask is a
    (queries, keys) bool tensor, True (white) where a query may look at a key."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False, constrained_layout=True)
    for ax, (title, mask, queries, keys) in zip(axes.flat, panels):
        ax.imshow(torch.as_tensor(mask).float(), cmap="gray", vmin=0, vmax=1)
        _token_axes(ax, queries, keys)
        ax.set_xlabel("key (looked at)")
        ax.set_ylabel("query (looking)")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Attention masks: white = may attend, black = blocked (score set to -inf before the softmax)")
    return fig


def plot_attention_maps(panels, title: str = "Attention weights"):
    """Heat maps of attention weights: one row per (title, weights, query_labels, key_labels) with
    weights of shape (heads, queries, keys), one column per head. Each row sums to 1."""
    n_heads = max(torch.as_tensor(w).size(0) for _, w, _, _ in panels)
    fig, axes = plt.subplots(
        len(panels), n_heads, figsize=(2.9 * n_heads + 1, 2.7 * len(panels)), squeeze=False, constrained_layout=True
    )
    image = None
    for row, (name, weights, queries, keys) in enumerate(panels):
        weights = torch.as_tensor(weights, dtype=torch.float32)
        for head in range(n_heads):
            ax = axes[row, head]
            if head >= weights.size(0):
                ax.axis("off")
                continue
            image = ax.imshow(weights[head], cmap="viridis", vmin=0, vmax=1)
            _token_axes(ax, queries, keys, fontsize=7)
            ax.set_title(f"{name}, head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel("query")
            if row == len(panels) - 1:
                ax.set_xlabel("key")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (rows sum to 1)")
    fig.suptitle(title)
    return fig


def plot_kv_cache_speed(rows: list[dict]):
    """Generation time with and without the KV cache against the answer length, from the rows of
    ``bench.bench_generation`` (length, batch, seconds_cache, seconds_no_cache)."""
    lengths = [r["length"] for r in rows]
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for key, label, color in (
        ("seconds_no_cache", "without cache", "tab:red"),
        ("seconds_cache", "with KV cache", "tab:blue"),
    ):
        seconds = [r[key] for r in rows]
        ax_s.plot(lengths, seconds, "o-", color=color, label=label)
        ax_t.plot(lengths, [1000 * s / n for s, n in zip(seconds, lengths)], "o-", color=color, label=label)
    ax_s.set_ylabel(f"seconds to generate a batch of {rows[0]['batch']}")
    speedup = rows[-1]["seconds_no_cache"] / rows[-1]["seconds_cache"]
    ax_s.set_title(f"Total time (speed-up at {lengths[-1]} tokens: {speedup:.1f}x)")
    ax_t.set_ylabel("milliseconds per generated token (whole batch)")
    ax_t.set_title("Average time per token: flat with the cache, growing without")
    for ax in (ax_s, ax_t):
        ax.set_xlabel("answer length (tokens)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


# ---- notebook 04: the clipped objective, GAE, the KL penalty ----------------------------


def draw_clip_objective(ax, clip_eps: float = 0.2, advantage: float = 1.0, ratio_max: float = 2.0):
    """One panel of the PPO paper's Figure 1 on ``ax``: L^CLIP = min(r A, clip(r, 1-eps, 1+eps) A)
    against the ratio r, the unclipped r A dashed, the region where the clip makes it flat shaded."""
    ratio = torch.linspace(0.0, ratio_max, 401)
    unclipped = ratio * advantage
    clipped = torch.minimum(unclipped, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    ax.plot(ratio, unclipped, "--", color="tab:gray", label="unclipped r A")
    ax.plot(ratio, clipped, color="tab:blue", lw=2.2, label="L$^{CLIP}$ = min(r A, clip(r) A)")
    if advantage > 0:
        ax.axvspan(1 + clip_eps, ratio_max, color="tab:orange", alpha=0.15, label="flat: zero gradient")
    elif advantage < 0:
        ax.axvspan(0, 1 - clip_eps, color="tab:orange", alpha=0.15, label="flat: zero gradient")
    for edge in (1 - clip_eps, 1 + clip_eps):
        ax.axvline(edge, color="tab:orange", ls=":", lw=1)
    ax.plot([1.0], [advantage], "o", color="tab:red", label="r = 1 (before the update)")
    ax.axhline(0, color="0.5", lw=0.8)
    sign = ">" if advantage > 0 else "<" if advantage < 0 else "="
    ax.set_title(f"A = {advantage:.3g} (A {sign} 0), clip_eps = {clip_eps:.3g}")
    ax.set_xlabel("probability ratio r = pi_new(a|s) / pi_old(a|s)")
    ax.set_ylabel("objective to maximize (units of A)")
    ax.set_xlim(0, ratio_max)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left" if advantage < 0 else "upper left")


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
        ratio = torch.as_tensor(run["ratio"], dtype=torch.float32)
        for a, name in enumerate(action_labels):
            ax.plot(ratio[:, a], label=name)
        ax.axhspan(1 - clip_eps, 1 + clip_eps, color="tab:orange", alpha=0.15, label=f"1 +- clip_eps ({clip_eps:g})")
        ax.set_title(f"{label}: ratio of each action")
        ax.set_xlabel("gradient step on the same batch")
        ax.set_ylabel("ratio pi_new(a) / pi_old(a)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_kl = axes[len(runs)]
    for (label, run), color in zip(runs.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        ax_kl.plot(run["kl"], color=color, label=f"{label}: exact KL(old || new)")
        ax_kl.plot(run["approx_kl"], "--", color=color, label=f"{label}: approx_kl on the batch")
    ax_kl.set_title("How far the policy moved")
    ax_kl.set_xlabel("gradient step on the same batch")
    ax_kl.set_ylabel("KL (nats)")
    ax_kl.legend(fontsize=8)
    ax_kl.grid(alpha=0.3)
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
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_kl_controller(betas: dict, target: float):
    """kl_beta over PPO iterations for several observed KLs ({label: [beta per iteration]})."""
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    for label, trajectory in betas.items():
        ax.plot([float(b) for b in trajectory], label=label)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("kl_beta (penalty per nat of KL)")
    ax.set_title(f"Adaptive KL controller (target KL {target:g} nats per answer)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
