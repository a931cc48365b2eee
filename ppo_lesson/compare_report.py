"""What the comparison of ``compare.py`` is judged by: the per-seed summary (best learning rate
of each method, final numbers, the differences the lesson asks about) and its printed report."""

from __future__ import annotations

from .evaluate import trailing_mean

RL_METHODS = {"ppo": "PPO (learned critic)", "ppo_v0": "PPO, V = 0", "grpo": "GRPO", "rloo": "RLOO"}
SMOOTH = 5  # iterations in the trailing mean of the on-policy curves


def summarize(result: dict) -> dict:
    """Per method: the learning-rate search, the best learning rate and per-seed final numbers;
    per seed: the differences the lesson asks about."""
    methods = {}
    for method in RL_METHODS:
        runs = [r for r in result["rl"] if r["method"] == method]
        search = {lr: _mean([r["final"]["gold_reward"] for r in runs if r["lr"] == lr]) for lr in _lrs(runs)}
        best_lr = max(search, key=search.get)
        per_seed = [_rl_row(r) for r in runs if r["lr"] == best_lr]
        methods[method] = {"lr_search": search, "best_lr": best_lr, "per_seed": per_seed}
    dpo_search = {}
    for record in result["dpo"]:
        for run in record["runs"].values():
            dpo_search.setdefault(run["lr"], []).append(run["final"]["gold_reward"])
    dpo_best = max(dpo_search, key=lambda lr: _mean(dpo_search[lr]))
    methods["dpo"] = {
        "lr_search": {lr: _mean(g) for lr, g in dpo_search.items()},
        "best_lr": dpo_best,
        "per_seed": [
            {"seed": r["seed"], **_final_numbers(r["runs"][str(dpo_best)]["final"]), "passes": _passes(r, dpo_best)}
            for r in result["dpo"]
        ],
    }
    per_seed = []
    for seed in result["seeds"]:
        final = {m: next(p for p in methods[m]["per_seed"] if p["seed"] == seed) for m in methods}
        bon = next(r["rows"] for r in result["best_of_n"] if r["seed"] == seed)
        ppo_kl = final["ppo"]["kl_to_reference"]
        matched = min(bon, key=lambda row: abs(row["kl_bound"] - ppo_kl))
        per_seed.append(
            {
                "seed": seed,
                "critic_gain": _round(final["ppo"]["gold_reward"] - final["ppo_v0"]["gold_reward"]),
                "grpo_minus_ppo": _round(final["grpo"]["gold_reward"] - final["ppo"]["gold_reward"]),
                "rloo_minus_ppo": _round(final["rloo"]["gold_reward"] - final["ppo"]["gold_reward"]),
                "dpo_minus_ppo": _round(final["dpo"]["gold_reward"] - final["ppo"]["gold_reward"]),
                "dpo_kl_minus_ppo_kl": _round(final["dpo"]["kl_to_reference"] - ppo_kl),
                "best_of_n_at_ppo_kl": {
                    "n": matched["n"],
                    "kl_bound": matched["kl_bound"],
                    "gold": matched["gold_reward"],
                },
            }
        )
    return {"methods": methods, "per_seed": per_seed}


def _rl_row(run: dict) -> dict:
    gold = trailing_mean([h["gold_reward"] for h in run["history"]], SMOOTH)
    return {
        "seed": run["seed"],
        **_final_numbers(run["final"]),
        "on_policy_gold_half": _round(gold[len(gold) // 2 - 1]) if len(gold) > 1 else None,
        "on_policy_gold_end": _round(gold[-1]),
        "seconds": run["seconds"],
    }


def _final_numbers(final: dict) -> dict:
    return {k: final[k] for k in ("gold_reward", "valid_fraction", "kl_to_reference", "mean_terms")}


def _passes(record: dict, lr: float) -> list:
    return [(h["passes"], h["gold_reward"], h["kl"]) for h in record["runs"][str(lr)]["history"]]


def _lrs(runs):
    return sorted({r["lr"] for r in runs})


def _mean(values):
    values = [v for v in values if v is not None]
    return _round(sum(values) / len(values)) if values else None


def _round(x, digits: int = 4):
    return round(x, digits) if isinstance(x, float) else x


def rounded(obj):
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return _round(obj)


def report(result: dict) -> str:
    """The summary as plain text: per method and seed, then the per-seed differences."""
    s, plan = result["summary"], result["plan"]
    accuracy = ", ".join(f"seed {r['seed']}: {r['reward_model_accuracy']:.3f}" for r in result["stages"])
    lines = [
        f"reward model held-out pair accuracy: {accuracy}",
        f"RL methods: {plan['answers_per_run']} sampled answers per run ({plan['iterations']} iterations); "
        f"learning rates {plan['learning_rates']}, best by mean final gold",
        "final gold / valid / KL to reference (nats) / seconds, per seed:",
    ]
    for method, label in {**RL_METHODS, "dpo": "DPO"}.items():
        info = s["methods"][method]
        search = ", ".join(f"{lr:.0e}: {g:.3f}" for lr, g in info["lr_search"].items())
        cells = "; ".join(
            f"{p['gold_reward']:.3f} / {p['valid_fraction']:.3f} / {p['kl_to_reference']:.2f}"
            + (f" / {p['seconds']:.0f}s" if "seconds" in p else "")
            for p in info["per_seed"]
        )
        lines.append(f"  {label:<22} lr {info['best_lr']:.0e} ({search}): {cells}")
    lines.append("per seed: critic gain (PPO - V=0), GRPO - PPO, RLOO - PPO, DPO - PPO (gold), DPO - PPO (KL):")
    for row in s["per_seed"]:
        bon = row["best_of_n_at_ppo_kl"]
        lines.append(
            f"  seed {row['seed']}: {row['critic_gain']:+.3f}, {row['grpo_minus_ppo']:+.3f}, "
            f"{row['rloo_minus_ppo']:+.3f}, {row['dpo_minus_ppo']:+.3f}, {row['dpo_kl_minus_ppo_kl']:+.2f}; "
            f"best-of-{bon['n']} at a KL bound of {bon['kl_bound']:.2f}: gold {bon['gold']:.3f}"
        )
    lines.append("best-of-n (mean over seeds): n, gold, proxy, KL bound, plug-in KL estimate")
    for i, row in enumerate(result["best_of_n"][0]["rows"]):
        rows = [r["rows"][i] for r in result["best_of_n"]]
        gold, proxy, est = (_mean([r[k] for r in rows]) for k in ("gold_reward", "proxy_reward", "kl_estimate"))
        lines.append(f"  {row['n']:>3}: {gold:.3f}, {proxy:.3f}, {row['kl_bound']:.3f}, {est:.3f}")
    return "\n".join(lines)
