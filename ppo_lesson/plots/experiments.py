"""Figures of notebook 06 (the experiments, drawn by `python -m ppo_lesson experiments`): sample efficiency,
stability of the clip, reward hacking."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..stats import lr_text, trailing_mean
from .style import RAW_ALPHA, style_axes


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


def _draw_gold_per_sample(ax, curves: dict, colors, gold_level: float, smooth: int) -> None:
    """Gold against sampled answers: one faint line per seed and their bold mean, per method."""
    for color, (method, per_seed) in zip(colors, curves.items()):
        smoothed = {seed: trailing_mean(gold, smooth) for seed, (_, gold) in per_seed.items()}
        samples = next(iter(per_seed.values()))[0]
        for gold in smoothed.values():
            ax.plot(samples, gold, color=color, alpha=RAW_ALPHA, lw=1)
        mean = [sum(vals) / len(vals) for vals in zip(*smoothed.values())]
        ax.plot(samples, mean, color=color, lw=2.2, label=f"{method}, mean of {len(per_seed)} seed(s)")
    ax.axhline(gold_level, color="black", ls="--", lw=1, label=f"gold level {gold_level:g}")
    ax.set_xlabel("sampled answers (rollouts)")
    ax.set_ylabel(f"gold reward ({smooth}-iteration mean, on-policy)")
    ax.set_title("Gold per sampled answer, best lr of each")
    style_axes(ax, legend="small")


def _draw_lr_search(ax, lr_search: dict, colors, n_seeds: int) -> None:
    """Final gold against the learning rate: a dot per seed and a line through the means, per method."""
    for color, (method, search) in zip(colors, lr_search.items()):
        lrs = sorted(search)
        for lr in lrs:
            ax.scatter([lr] * len(search[lr]), search[lr], color=color, alpha=0.45, s=18)
        ax.plot(lrs, [sum(search[lr]) / len(search[lr]) for lr in lrs], "o-", color=color, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final gold reward (evaluation set)")
    ax.set_title(f"Learning-rate search: final gold ({n_seeds} seed(s); dots: seeds)")
    style_axes(ax, legend="small")


def _draw_samples_to_level(ax, samples_to_level: dict, colors, gold_level: float, budget, smooth: int) -> None:
    """Sampled answers until the gold level, per seed and learning rate; an x above the budget for a miss."""
    never = budget * 1.08 if budget else None
    for color, (method, search) in zip(colors, samples_to_level.items()):
        lrs, means = sorted(search), []
        for lr in lrs:
            reached = [x for x in search[lr] if x is not None]
            missed = len(search[lr]) - len(reached)
            ax.scatter([lr] * len(reached), reached, color=color, alpha=0.45, s=18)
            if never and missed:
                ax.scatter([lr] * missed, [never] * missed, color=color, marker="x", s=30)
            means.append(sum(reached) / len(reached) if reached else float("nan"))
        ax.plot(lrs, means, "o-", color=color, label=f"{method} (mean of seeds that reached it)")
    if never:
        ax.axhline(budget, color="gray", lw=1, ls=":", label=f"budget ({budget} answers); x: never")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"sampled answers to reach gold {gold_level:g}")
    ax.set_title(f"Samples to reach gold {gold_level:g} ({smooth}-iteration mean)")
    style_axes(ax, legend="small")


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
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    _draw_gold_per_sample(axes[0], curves, colors, gold_level, smooth)
    _draw_lr_search(axes[1], lr_search, colors, n_seeds)
    if samples_to_level:
        _draw_samples_to_level(axes[2], samples_to_level, colors, gold_level, budget, smooth)
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
        ax_gold.set_title(f"lr {lr_text(lr)}: gold reward (one line per seed)")
        ax_gold.set_ylabel(f"gold reward ({smooth}-iteration mean)")
        scale = _kl_axis(ax_kl, "y", [k for r in runs if r["lr"] == lr for k in trailing_mean(r["kl"], smooth)])
        ax_kl.set_title(f"lr {lr_text(lr)}: KL to the reference")
        ax_kl.set_ylabel(f"KL (nats per answer{scale}), {smooth}-iteration mean")
        for ax in (ax_gold, ax_kl):
            ax.set_xlabel("PPO iteration")
        style_axes(ax_gold, ax_kl, legend="small")
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
    style_axes(ax_proxy, ax_gold, ax_kl, legend="small")
    fig.suptitle("Reward hacking" + (f" (lr {lr_text(lr)}; dots: end of training)" if lr else ""))
    return fig


def plot_variant_curves(histories: dict, smooth: int = 5, title: str = "One run of each variant"):
    """Three panels over PPO iterations, one line per labelled history: the rollout's gold reward
    (trailing mean of ``smooth``), its KL to the reference, and how far each iteration's update moved
    the policy (approx_kl, its minibatches' mean, log scale): what the three claims are about."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for label, history in histories.items():
        it = [h["iteration"] for h in history]
        axes[0].plot(it, trailing_mean([h["gold_reward"] for h in history], smooth), label=label)
        axes[1].plot(it, [h["kl"] for h in history], label=label)
        axes[2].plot(it, [h["approx_kl"] for h in history], label=label)
    axes[2].set_yscale("log")
    ylabels = (f"gold reward ({smooth}-iteration mean)", "KL to the reference (nats/answer)", "approx_kl of the update")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(ylabel)
    style_axes(*axes)
    style_axes(axes[0], legend="small")
    fig.suptitle(title)
    return fig
