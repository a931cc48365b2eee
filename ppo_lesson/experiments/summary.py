"""The numbers each claim of notebook 06 is judged by, per seed and their means (``summary`` in
experiments.json)."""

from __future__ import annotations

from ..curves import CURVE_WINDOW, gold_at_fractions, samples_to_reach, worst_drop
from ..stats import mean_or_none, rounded, trailing_mean


def runs_of(result: dict, experiment: str, variant: str | None = None) -> list[dict]:
    """The records of one experiment (of one of its variants), in seed order."""
    return [r for r in result["runs"] if r["experiment"] == experiment and (variant is None or r["variant"] == variant)]


def curve(run: dict, key: str) -> list[float]:
    """One metric of a run's history, per iteration."""
    return [h[key] for h in run["history"]]


def summarize(result: dict) -> dict:
    """Per-seed numbers of each experiment (and their means), as stored in experiments.json."""
    return {
        "sample_efficiency": _sample_efficiency(result),
        "stability": _stability(result),
        "reward_hacking": _reward_hacking(result),
    }


def _sample_efficiency(result: dict) -> dict:
    """Per method: the learning-rate search, the best learning rate, and per-seed numbers at it."""
    plan, batch = result["plan"]["sample_efficiency"], result["rollout_batch"]
    summary = {"gold_level": plan["gold_level"], "samples_per_run": plan["samples"], "methods": {}}
    for method in ("ppo", "pg"):
        search = {}
        for run in (r for r in plan["runs"] if r["method"] == method):
            runs = runs_of(result, "sample_efficiency", run["variant"])
            search[run["variant"]] = {
                "lr": run["lr"],
                "final_gold_mean": rounded(mean_or_none([r["final"]["gold_reward"] for r in runs])),
                "final_gold": [r["final"]["gold_reward"] for r in runs],
                "samples_to_level": [  # per seed, None: never
                    samples_to_reach(curve(r, "gold_reward"), plan["gold_level"], batch) for r in runs
                ],
            }
        best = max(search, key=lambda v: search[v]["final_gold_mean"])
        per_seed = [_efficiency_row(r, plan["gold_level"], batch) for r in runs_of(result, "sample_efficiency", best)]
        summary["methods"][method] = {
            "search": search,
            "search_budget": f"{len(search)} learning rates x {len(result['seeds'])} seeds x {plan['samples']} "
            "sampled answers; best by final gold (evaluation set) averaged over seeds",
            "best_variant": best,
            "best_lr": search[best]["lr"],
            "per_seed": per_seed,
            "gold_with_equal_samples_mean": rounded(mean_or_none([p["gold_with_equal_samples"] for p in per_seed])),
            "seeds_reaching_level": sum(p["samples_to_level"] is not None for p in per_seed),
        }
    return summary


def _efficiency_row(run: dict, gold_level: float, batch: int) -> dict:
    gold = curve(run, "gold_reward")
    return {
        "seed": run["seed"],
        "samples_to_level": samples_to_reach(gold, gold_level, batch),
        "gold_with_equal_samples": run["final"]["gold_reward"],
        "gold_on_policy_at_samples": rounded(gold_at_fractions(gold, batch)),
        "valid_fraction": run["final"]["valid_fraction"],
        "kl_to_reference": run["final"]["kl_to_reference"],
    }


def _stability(result: dict) -> dict:
    summary = {}
    for run in result["plan"]["stability"]["runs"]:
        rows = [
            {
                "seed": r["seed"],
                "final_gold": r["final"]["gold_reward"],
                "best_gold": rounded(max(trailing_mean(curve(r, "gold_reward"), CURVE_WINDOW))),
                "worst_drop": rounded(worst_drop(curve(r, "gold_reward"))),
                "final_valid_fraction": r["final"]["valid_fraction"],
                "final_kl_to_reference": r["final"]["kl_to_reference"],
                "max_approx_kl": rounded(max(curve(r, "approx_kl"))),
                "mean_clipfrac": rounded(mean_or_none(curve(r, "clipfrac"))),
            }
            for r in runs_of(result, "stability", run["variant"])
        ]
        keys = ("final_gold", "worst_drop", "final_kl_to_reference")
        summary[run["variant"]] = {"per_seed": rows, **_means(rows, keys)}
    return summary


def _reward_hacking(result: dict) -> dict:
    summary = {}
    for run in result["plan"]["reward_hacking"]["runs"]:
        rows = [_hacking_row(r) for r in runs_of(result, "reward_hacking", run["variant"])]
        keys = ("final_gold", "final_proxy", "final_valid_fraction", "final_kl_to_reference")
        summary[run["variant"]] = {"per_seed": rows, **_means(rows, keys)}
    return summary


def _hacking_row(run: dict) -> dict:
    gold = trailing_mean(curve(run, "gold_reward"), CURVE_WINDOW)
    peak = max(range(len(gold)), key=gold.__getitem__)
    return {
        "seed": run["seed"],
        "final_gold": run["final"]["gold_reward"],
        "final_proxy": run["final"]["proxy_reward"],
        "final_valid_fraction": run["final"]["valid_fraction"],
        "final_kl_to_reference": run["final"]["kl_to_reference"],
        "peak_gold": rounded(gold[peak]),
        "peak_gold_iteration": peak,
        "final_kl_beta": run["history"][-1]["kl_beta"],
        "fooled": run["fooled"]["top"],
    }


def _means(rows: list[dict], keys) -> dict:
    return {f"{k}_mean": rounded(mean_or_none([r[k] for r in rows])) for k in keys}
