"""Figures of notebook 07 (beyond PPO, drawn by `python -m ppo_lesson compare`): the RL methods side by side,
gold against KL, DPO and best-of-n."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..beyond_ppo import RL_METHODS
from ..curves import CURVE_WINDOW
from ..stats import lr_text, trailing_mean
from .style import RAW_ALPHA, SMALL_FONT, style_axes

COLORS = {"ppo": "C0", "ppo_v0": "C1", "grpo": "C2", "rloo": "C3", "dpo": "C4", "best_of_n": "C7"}
"""One colour per method in every figure of the comparison."""


def comparison_figures(result: dict) -> dict:
    """The three figures of a comparison result, keyed like ``compare.FIGURES``."""
    return {"rl": plot_rl_methods(result), "plane": plot_gold_vs_kl(result), "dpo_bon": plot_dpo_best_of_n(result)}


def _best_runs(result: dict, method: str) -> list[dict]:
    """The runs of ``method`` at its best learning rate (one per seed)."""
    best_lr = result["summary"]["methods"][method]["best_lr"]
    return [r for r in result["rl"] if r["method"] == method and r["lr"] == best_lr]


def plot_rl_methods(result: dict):
    """Left: on-policy gold against sampled answers (faint: seeds; bold: their mean), each method
    at its best learning rate. Middle: validity the same way. Right: wall seconds per run."""
    batch = result["rollout_batch"]
    fig, (ax_gold, ax_valid, ax_time) = plt.subplots(1, 3, figsize=(17, 4.3), constrained_layout=True)
    for method, label in RL_METHODS.items():
        runs, color = _best_runs(result, method), COLORS[method]
        lr = result["summary"]["methods"][method]["best_lr"]
        for ax, key in ((ax_gold, "gold_reward"), (ax_valid, "valid_fraction")):
            curves = [trailing_mean([h[key] for h in r["history"]], CURVE_WINDOW) for r in runs]
            samples = [(i + 1) * batch for i in range(len(curves[0]))]
            for curve in curves:
                ax.plot(samples, curve, color=color, alpha=RAW_ALPHA, lw=1)
            mean = [sum(v) / len(v) for v in zip(*curves)]
            ax.plot(samples, mean, color=color, lw=2.2, label=f"{label} (lr {lr_text(lr)})")
        seconds = [r["seconds"] for r in runs]
        ax_time.scatter([label] * len(seconds), seconds, color=color, s=30)
    ax_gold.set(xlabel="sampled answers", ylabel=f"gold reward ({CURVE_WINDOW}-iteration mean, on-policy)")
    ax_gold.set_title(f"Gold per sampled answer ({len(result['seeds'])} seed(s), best lr of each)")
    ax_valid.set(xlabel="sampled answers", ylabel="valid answers (on-policy)", title="Validity")
    ax_time.set(ylabel="wall seconds per run", title="Cost (1 thread per run; machine shared)")
    style_axes(ax_gold, legend="small")
    style_axes(ax_valid, ax_time)
    return fig


def plot_gold_vs_kl(result: dict):
    """Final gold on the evaluation set against KL to the reference: each RL method's runs (one
    marker per seed, best learning rate), DPO's path over passes, and best-of-n at its KL bound."""
    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    for method, label in RL_METHODS.items():
        rows = result["summary"]["methods"][method]["per_seed"]
        ax.scatter(
            [r["kl_to_reference"] for r in rows], [r["gold_reward"] for r in rows], color=COLORS[method], s=40,
            label=label, zorder=3,
        )  # fmt: skip
    dpo_lr = result["summary"]["methods"]["dpo"]["best_lr"]
    for i, record in enumerate(result["dpo"]):
        history = record["runs"][str(dpo_lr)]["history"]
        ax.plot(
            [h["kl"] for h in history], [h["gold_reward"] for h in history], "o-", color=COLORS["dpo"], ms=3,
            alpha=0.7, label=f"DPO over passes (lr {lr_text(dpo_lr)})" if i == 0 else None,
        )  # fmt: skip
    rows = list(zip(*[r["rows"] for r in result["best_of_n"]]))
    bound = [r[0]["kl_bound"] for r in rows]
    gold = [sum(x["gold_reward"] for x in r) / len(r) for r in rows]
    ax.plot(bound, gold, "s--", color=COLORS["best_of_n"], label="best-of-n at its KL bound (n = 1, 2, 4, ...)")
    ax.set(xlabel="KL to the reference (nats per answer)", ylabel="gold reward (evaluation set)")
    ax.set_title("Gold against KL to the reference: who buys more gold per nat")
    style_axes(ax, legend="small")
    return fig


def _draw_dpo_passes(ax_dpo, dpo_records: list[dict]) -> None:
    """DPO's gold (left axis) and KL (right axis, gray) against passes, per seed; line style per learning rate."""
    ax_dpo_kl = ax_dpo.twinx()
    styles = dict(zip(sorted({run["lr"] for r in dpo_records for run in r["runs"].values()}), ("-", "--", ":")))
    for record in dpo_records:
        for run in record["runs"].values():
            passes = [h["passes"] for h in run["history"]]
            style = styles[run["lr"]]
            label = f"lr {lr_text(run['lr'])}" if record is dpo_records[0] else None
            ax_dpo.plot(passes, [h["gold_reward"] for h in run["history"]], style, color=COLORS["dpo"], label=label)
            ax_dpo_kl.plot(passes, [h["kl"] for h in run["history"]], style, color="gray", alpha=0.7)
    ax_dpo.set(xlabel="passes over the preference pairs", ylabel="gold reward (purple)")
    ax_dpo_kl.set_ylabel("KL to the reference, nats (gray)")
    ax_dpo.set_title("DPO: gold and KL per pass")
    ax_dpo.legend(fontsize=SMALL_FONT, loc="lower right")
    style_axes(ax_dpo)


def _draw_best_of_n(ax_n, ax_kl, best_of_n_records: list[dict]) -> None:
    """Best-of-n against n (log 2 axis): gold and proxy of the kept answer; the KL estimate against its bound."""
    for record in best_of_n_records:
        n = [row["n"] for row in record["rows"]]
        first = record is best_of_n_records[0]
        for key, color, label in (("gold_reward", "black", "gold"), ("proxy_reward", COLORS["best_of_n"], "proxy")):
            ax_n.plot(n, [row[key] for row in record["rows"]], "o-", color=color, ms=3, label=label if first else None)
        ax_kl.plot(n, [row["kl_estimate"] for row in record["rows"]], "o-", color="C4", ms=3,
                   label="plug-in estimate from samples" if first else None)  # fmt: skip
    ax_kl.plot(n, [row["kl_bound"] for row in best_of_n_records[0]["rows"]], "k--", label="log n - (n-1)/n")
    for ax in (ax_n, ax_kl):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (answers sampled, best kept)")
    ax_n.set(ylabel="reward of the kept answer", title="Best-of-n: gold and proxy against n")
    ax_kl.set(ylabel="KL to the reference (nats)", title="Best-of-n: KL bound and estimate")
    style_axes(ax_n, ax_kl, legend="small")


def plot_dpo_best_of_n(result: dict):
    """Left: DPO's gold and KL against passes over the pairs, per seed and learning rate. Middle:
    best-of-n's gold and proxy against n. Right: its KL bound against the plug-in estimate."""
    fig, (ax_dpo, ax_n, ax_kl) = plt.subplots(1, 3, figsize=(17, 4.3), constrained_layout=True)
    _draw_dpo_passes(ax_dpo, result["dpo"])
    _draw_best_of_n(ax_n, ax_kl, result["best_of_n"])
    return fig
