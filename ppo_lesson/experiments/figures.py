"""The three figures of notebook 06's experiments: the curves each draws, taken from the run records."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..curves import CURVE_WINDOW
from ..plots import experiments as experiment_plots
from ..plots import style
from ..stats import lr_text
from .summary import curve, runs_of

FIGURES = {  # figure names; the full lesson run writes them into the repository's figures/
    "sample_efficiency": "06_sample_efficiency",
    "stability": "06_stability",
    "reward_hacking": "06_reward_hacking",
}
METHOD_LABELS = {"ppo": "PPO", "pg": "vanilla PG"}


def figure_data(result: dict) -> dict:
    """The curves each figure draws, keyed by experiment (the keyword arguments of its plot function)."""
    plan = result["plan"]
    stability = [
        {
            "label": "clipped" if run["clip"] else "unclipped",
            "lr": run["lr"],
            "seed": r["seed"],
            "iteration": curve(r, "iteration"),
            "gold": curve(r, "gold_reward"),
            "kl": curve(r, "kl"),
        }
        for run in plan["stability"]["runs"]
        for r in runs_of(result, "stability", run["variant"])
    ]
    hacking = [
        {
            "label": run["variant"],
            "seed": r["seed"],
            "iteration": curve(r, "iteration"),
            "kl": curve(r, "kl"),
            "proxy": curve(r, "proxy_reward"),
            "gold": curve(r, "gold_reward"),
        }
        for run in plan["reward_hacking"]["runs"]
        for r in runs_of(result, "reward_hacking", run["variant"])
    ]
    return {
        "sample_efficiency": _sample_efficiency_data(result),
        "stability": {"runs": stability},
        "reward_hacking": {"runs": hacking, "lr": plan["reward_hacking"]["lr"]},
    }


def _sample_efficiency_data(result: dict) -> dict:
    """Gold against sampled answers at each method's best learning rate, and the learning-rate search."""
    batch, eff = result["rollout_batch"], result["summary"]["sample_efficiency"]
    curves, search, speed = {}, {}, {}
    for method, info in eff["methods"].items():
        label = METHOD_LABELS[method]
        curves[f"{label} (lr {lr_text(info['best_lr'])})"] = {
            r["seed"]: ([(h["iteration"] + 1) * batch for h in r["history"]], curve(r, "gold_reward"))
            for r in runs_of(result, "sample_efficiency", info["best_variant"])
        }
        search[label] = {v["lr"]: v["final_gold"] for v in info["search"].values()}
        speed[label] = {v["lr"]: v["samples_to_level"] for v in info["search"].values()}
    return {
        "curves": curves,
        "lr_search": search,
        "samples_to_level": speed,
        "gold_level": eff["gold_level"],
        "budget": eff["samples_per_run"],
    }


def make_figures(result: dict) -> dict:
    """The three figures (matplotlib Figures), keyed by experiment."""
    data = figure_data(result)
    return {
        "sample_efficiency": experiment_plots.plot_sample_efficiency(
            **data["sample_efficiency"], n_seeds=len(result["seeds"])
        ),
        "stability": experiment_plots.plot_stability(**data["stability"]),
        # long, noisy runs whose trend matters: a wider window than the other figures
        "reward_hacking": experiment_plots.plot_reward_hacking(**data["reward_hacking"], smooth=2 * CURVE_WINDOW),
    }


def save_figures(result: dict, folder) -> list[str]:
    """Write the three figures into ``folder``; returns their paths."""
    paths = []
    for name, fig in make_figures(result).items():
        paths.append(str(style.save_figure(fig, FIGURES[name], folder)))
        plt.close(fig)
    return paths
