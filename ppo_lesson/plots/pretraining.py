"""Figures of notebook 02 (pretraining): teacher forcing, the loss curve, sampling temperature, the policy's taste."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..stats import trailing_mean
from .style import plot_raw_and_smoothed, style_axes, valid_color


def _draw_teacher_forcing_cells(ax, inputs, labels) -> None:
    """One box per decoder input (bottom row) and label (top row), with the arrows between them."""
    for t, (x, y) in enumerate(zip(inputs, labels)):
        for row, text, color in ((0, x, "tab:blue"), (1.6, y, "tab:orange")):
            ax.add_patch(plt.Rectangle((t - 0.32, row - 0.32), 0.64, 0.64, fc=color, alpha=0.25, ec=color))
            ax.text(t, row, text, ha="center", va="center", fontsize=11 if len(text) == 1 else 8)
        ax.annotate("", xy=(t, 1.25), xytext=(t, 0.35), arrowprops={"arrowstyle": "->", "color": "0.3"})
        if t + 1 < len(inputs):  # the true token at t is the decoder's input at t + 1
            arrow = {"arrowstyle": "->", "color": "tab:green", "ls": "--", "alpha": 0.6}
            ax.annotate("", xy=(t + 1 - 0.2, 0.35), xytext=(t + 0.2, 1.25), arrowprops=arrow)


def plot_teacher_forcing(source: str, target: str):
    """The shifted target of teacher forcing: the decoder reads [BOS, y1 .. y_{T-1}] and position t
    is trained to predict label y_t, the true next token, with EOS as the last label."""
    inputs = ["BOS", *target]
    labels = [*target, "EOS"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 3.1), constrained_layout=True)
    _draw_teacher_forcing_cells(ax, inputs, labels)
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
    plot_raw_and_smoothed(ax, steps, loss, smooth, f"loss ({smooth}-step mean)", color="tab:blue", raw_lw=1)
    ax.set_ylim(0, max(loss) * 1.05)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    style_axes(ax)
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
    style_axes(ax, grid="y", legend="normal" if len(distributions) > 1 else None)
    return fig


def plot_policy_taste(gold, extra_terms, title: str = "The pretrained policy has no taste"):
    """Left: histogram of gold scores of sampled answers. Right: how many terms the valid answers
    use beyond the fewest possible (0 = a shortest sum, what the hidden human prefers)."""
    fig, (ax_gold, ax_terms) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    gold = [float(g) for g in gold]
    levels = sorted(set(gold))
    counts = [gold.count(v) for v in levels]
    ax_gold.bar(range(len(levels)), counts, color=[valid_color(v) for v in levels])
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
    style_axes(ax_gold, ax_terms, grid="y")
    fig.suptitle(title)
    return fig
