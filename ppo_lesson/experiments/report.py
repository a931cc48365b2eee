"""The experiments' summary as plain text: what ``python -m ppo_lesson experiments`` prints."""

from __future__ import annotations

from ..stats import lr_text


def report(result: dict) -> str:
    """A plain-text report of the summary, one section per experiment."""
    summary = result["summary"]
    return "\n".join(
        [
            *_sample_efficiency_lines(summary["sample_efficiency"]),
            *_stability_lines(summary["stability"]),
            *_reward_hacking_lines(summary["reward_hacking"]),
        ]
    )


def _sample_efficiency_lines(eff: dict) -> list[str]:
    level = eff["gold_level"]
    lines = [
        f"1. sample efficiency: {eff['samples_per_run']} sampled answers per run; "
        f"samples to reach smoothed gold {level} (None: never)"
    ]
    for method, info in eff["methods"].items():
        lines.append(f"   {method}: lr search, mean final gold and samples to {level} per seed:")
        for v in info["search"].values():
            lines.append(f"     lr {lr_text(v['lr'])}: {v['final_gold_mean']:.3f}; {v['samples_to_level']}")
        lines.append(f"   {method} at lr {lr_text(info['best_lr'])} (best mean final gold):")
        for p in info["per_seed"]:
            along = ", ".join(f"{n}: {g:.2f}" for n, g in p["gold_on_policy_at_samples"].items())
            lines.append(
                f"     seed {p['seed']}: samples to {level}: {p['samples_to_level']}; "
                f"final gold {p['gold_with_equal_samples']:.3f} (evaluation set), valid {p['valid_fraction']:.3f}; "
                f"on-policy gold by samples {along}"
            )
    return lines


def _stability_lines(stability: dict) -> list[str]:
    lines = ["2. stability (no early stop): final gold / worst drop from best / final KL (nats) per seed"]
    for variant, info in stability.items():
        cells = "; ".join(
            f"{r['final_gold']:.3f} / {r['worst_drop']:.3f} / {r['final_kl_to_reference']:.2f}"
            for r in info["per_seed"]
        )
        lines.append(f"   {variant:<22} {cells}")
    return lines


def _reward_hacking_lines(hacking: dict) -> list[str]:
    lines = ["3. reward hacking: final proxy / gold / valid / KL (nats) per seed"]
    for variant, info in hacking.items():
        cells = "; ".join(
            f"{r['final_proxy']:.2f} / {r['final_gold']:.3f} / {r['final_valid_fraction']:.3f} / "
            f"{r['final_kl_to_reference']:.1f}"
            for r in info["per_seed"]
        )
        lines.append(f"   {variant:<28} {cells}")
        top_two = [f for r in info["per_seed"] for f in r["fooled"][:2]]
        fooled = [f"{f['N']} -> {_answer_as_printed(f)} ({f['proxy']:+.2f})" for f in top_two]
        if fooled:
            lines.append(f"     loved by the reward model, rejected by the gold scorer: {', '.join(fooled)}")
    return lines


def _answer_as_printed(row: dict) -> str:
    """An answer as printed: '(empty)' for none, a trailing '...' when it never wrote EOS."""
    return (row["answer"] or "(empty)") + ("" if row["ended"] else "...")
