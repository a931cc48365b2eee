"""What the comparison of notebook 07 is judged by: the per-seed summary (best learning rate of each
method, final numbers, the differences the lesson asks about) and its printed report."""

from __future__ import annotations

from ..beyond_ppo import RL_METHODS
from ..curves import CURVE_WINDOW
from ..stats import lr_text, mean_or_none, rounded, trailing_mean


def _rounded_mean(values) -> float | None:
    return rounded(mean_or_none(values))


def summarize(result: dict) -> dict:
    """Per method: the learning-rate search, the best learning rate and per-seed final numbers;
    per seed: the differences the lesson asks about."""
    methods = {}
    for method in RL_METHODS:
        runs = [r for r in result["rl"] if r["method"] == method]
        learning_rates = sorted({r["lr"] for r in runs})
        gold = {lr: [r["final"]["gold_reward"] for r in runs if r["lr"] == lr] for lr in learning_rates}
        search = {lr: _rounded_mean(values) for lr, values in gold.items()}
        best_lr = max(search, key=search.get)
        per_seed = [_rl_row(r) for r in runs if r["lr"] == best_lr]
        methods[method] = {"lr_search": search, "best_lr": best_lr, "per_seed": per_seed}
    methods["dpo"] = _dpo_summary(result["dpo"])
    return {"methods": methods, "per_seed": [_differences(result, methods, seed) for seed in result["seeds"]]}


def _dpo_summary(records: list[dict]) -> dict:
    """DPO's learning-rate search and, at the best learning rate, each seed's final numbers and passes."""
    search = {}
    for record in records:
        for run in record["runs"].values():
            search.setdefault(run["lr"], []).append(run["final"]["gold_reward"])
    best = max(search, key=lambda lr: _rounded_mean(search[lr]))
    return {
        "lr_search": {lr: _rounded_mean(gold) for lr, gold in search.items()},
        "best_lr": best,
        "per_seed": [
            {"seed": r["seed"], **_final_numbers(r["runs"][str(best)]["final"]), "passes": _passes(r, best)}
            for r in records
        ],
    }


def _differences(result: dict, methods: dict, seed: int) -> dict:
    """One seed's differences to PPO, and best-of-n at the KL bound nearest to PPO's KL."""
    final = {m: next(p for p in methods[m]["per_seed"] if p["seed"] == seed) for m in methods}
    bon = next(r["rows"] for r in result["best_of_n"] if r["seed"] == seed)
    ppo_gold, ppo_kl = final["ppo"]["gold_reward"], final["ppo"]["kl_to_reference"]
    matched = min(bon, key=lambda row: abs(row["kl_bound"] - ppo_kl))
    return {
        "seed": seed,
        "critic_gain": rounded(ppo_gold - final["ppo_v0"]["gold_reward"]),
        "grpo_minus_ppo": rounded(final["grpo"]["gold_reward"] - ppo_gold),
        "rloo_minus_ppo": rounded(final["rloo"]["gold_reward"] - ppo_gold),
        "dpo_minus_ppo": rounded(final["dpo"]["gold_reward"] - ppo_gold),
        "dpo_kl_minus_ppo_kl": rounded(final["dpo"]["kl_to_reference"] - ppo_kl),
        "best_of_n_at_ppo_kl": {"n": matched["n"], "kl_bound": matched["kl_bound"], "gold": matched["gold_reward"]},
    }


def _rl_row(run: dict) -> dict:
    gold = trailing_mean([h["gold_reward"] for h in run["history"]], CURVE_WINDOW)
    return {
        "seed": run["seed"],
        **_final_numbers(run["final"]),
        "on_policy_gold_half": rounded(gold[len(gold) // 2 - 1]) if len(gold) > 1 else None,
        "on_policy_gold_end": rounded(gold[-1]),
        "seconds": run["seconds"],
    }


def _final_numbers(final: dict) -> dict:
    return {k: final[k] for k in ("gold_reward", "valid_fraction", "kl_to_reference", "mean_terms")}


def _passes(record: dict, lr: float) -> list:
    return [(h["passes"], h["gold_reward"], h["kl"]) for h in record["runs"][str(lr)]["history"]]


def report(result: dict) -> str:
    """The summary as plain text: per method and seed, then the per-seed differences."""
    summary, plan = result["summary"], result["plan"]
    accuracy = ", ".join(f"seed {r['seed']}: {r['reward_model_accuracy']:.3f}" for r in result["stages"])
    lines = [
        f"reward model held-out pair accuracy: {accuracy}",
        f"RL methods: {plan['answers_per_run']} sampled answers per run ({plan['iterations']} iterations); "
        f"learning rates {plan['learning_rates']}, best by mean final gold",
        "final gold / valid / KL to reference (nats) / seconds, per seed:",
    ]
    for method, label in {**RL_METHODS, "dpo": "DPO"}.items():
        info = summary["methods"][method]
        search = ", ".join(f"{lr_text(lr)}: {g:.3f}" for lr, g in info["lr_search"].items())
        cells = "; ".join(
            f"{p['gold_reward']:.3f} / {p['valid_fraction']:.3f} / {p['kl_to_reference']:.2f}"
            + (f" / {p['seconds']:.0f}s" if "seconds" in p else "")
            for p in info["per_seed"]
        )
        lines.append(f"  {label:<22} lr {lr_text(info['best_lr'])} ({search}): {cells}")
    lines.append("per seed: critic gain (PPO - V=0), GRPO - PPO, RLOO - PPO, DPO - PPO (gold), DPO - PPO (KL):")
    for row in summary["per_seed"]:
        bon = row["best_of_n_at_ppo_kl"]
        lines.append(
            f"  seed {row['seed']}: {row['critic_gain']:+.3f}, {row['grpo_minus_ppo']:+.3f}, "
            f"{row['rloo_minus_ppo']:+.3f}, {row['dpo_minus_ppo']:+.3f}, {row['dpo_kl_minus_ppo_kl']:+.2f}; "
            f"best-of-{bon['n']} at a KL bound of {bon['kl_bound']:.2f}: gold {bon['gold']:.3f}"
        )
    lines += _best_of_n_lines(result["best_of_n"])
    return "\n".join(lines)


def _best_of_n_lines(records: list[dict]) -> list[str]:
    lines = ["best-of-n (mean over seeds): n, gold, proxy, KL bound, plug-in KL estimate"]
    for i, row in enumerate(records[0]["rows"]):
        rows = [r["rows"][i] for r in records]
        gold, proxy, est = (_rounded_mean([r[k] for r in rows]) for k in ("gold_reward", "proxy_reward", "kl_estimate"))
        lines.append(f"  {row['n']:>3}: {gold:.3f}, {proxy:.3f}, {row['kl_bound']:.3f}, {est:.3f}")
    return lines
