"""What the experiments of notebook 06 vary: every run's PPO settings, as overrides of ``cfg.ppo``
built from the named variants of ``ppo_lesson.variants``."""

from __future__ import annotations

from ..config import Config
from ..stats import lr_text
from ..variants import adaptive_kl_penalty, fixed_kl_penalty, heavy_reuse, no_kl_penalty, vanilla_pg

EXPERIMENTS = ("sample_efficiency", "stability", "reward_hacking")
GOLD_LEVEL = 0.6  # sample efficiency: sampled answers until the smoothed gold reward first reaches this


def two_significant_digits(x: float) -> float:
    """x rounded to 2 significant digits (1e-4 / 3 is 3.3e-5, 3e-5 * 10 / 3 is 1e-4)."""
    return float(f"{x:.2g}")


def experiment_plan(cfg: Config, quick: bool = False) -> dict:
    """Every run's PPO settings (overrides of ``cfg.ppo``), grouped by experiment.

    Budgets are multiples of the preset's ``ppo.iterations`` (60 for the lesson): sample efficiency
    and stability 1x, reward hacking 2.5x; ``quick`` cuts each to 1/3 and runs one learning rate
    per method, the clipped/unclipped pair at the larger learning rate only, and two of the three
    KL settings. Stability takes 16 steps per batch (``heavy_reuse``) at a third of the default
    learning rate and 10 times that. Reward hacking runs at 10x the default learning rate, a policy
    that moves fast enough to find what fools the reward model within its budget."""
    lr = cfg.ppo.lr
    reuse_lrs = [two_significant_digits(lr / 3), two_significant_digits(10 * lr / 3)]
    hacking_lr, short = two_significant_digits(10 * lr), _iterations(cfg, 1 / 3 if quick else 1)
    long = _iterations(cfg, 1 / 3 if quick else 2.5)
    return {
        "sample_efficiency": _sample_efficiency(cfg, short, quick),
        "stability": _stability(short, reuse_lrs[1:] if quick else reuse_lrs),
        "reward_hacking": _reward_hacking(cfg, long, hacking_lr, quick),
    }


def _iterations(cfg: Config, factor: float) -> int:
    return max(1, round(factor * cfg.ppo.iterations))


def _sample_efficiency(cfg: Config, iterations: int, quick: bool) -> dict:
    """PPO against vanilla PG, each over its own learning-rate grid, with equal sampled answers."""
    lr = cfg.ppo.lr
    # three each, half a decade apart; PG's grid sits 10/3 higher: it takes 1 step per batch, PPO K x M = 4
    lrs = {
        "ppo": [two_significant_digits(lr * f) for f in (1 / 3, 1, 10 / 3)],
        "pg": [two_significant_digits(lr * f) for f in (1, 10 / 3, 10)],
    }
    if quick:
        lrs = {"ppo": [lr], "pg": [two_significant_digits(10 * lr / 3)]}
    runs = [
        {"variant": f"{method} lr={lr_text(x)}", "method": method, "lr": x,
         "ppo": {"lr": x, "iterations": iterations} if method == "ppo" else {**vanilla_pg(x), "iterations": iterations}}
        for method in ("ppo", "pg") for x in lrs[method]
    ]  # fmt: skip
    return {
        "runs": runs,
        "gold_level": GOLD_LEVEL,
        "learning_rates": lrs,
        "iterations": iterations,
        "samples": iterations * cfg.ppo.rollout_batch,
    }


def _stability(iterations: int, learning_rates: list[float]) -> dict:
    """The clipped against the unclipped surrogate at each learning rate, 16 steps per batch, no early stop."""
    runs = [
        {"variant": f"{'clipped' if clip else 'unclipped'} lr={lr_text(x)}", "clip": clip, "lr": x,
         "ppo": {**heavy_reuse(clip), "lr": x, "iterations": iterations}}
        for x in learning_rates for clip in (True, False)
    ]  # fmt: skip
    return {"runs": runs, "iterations": iterations, "learning_rates": sorted({r["lr"] for r in runs})}


def _reward_hacking(cfg: Config, iterations: int, lr: float, quick: bool) -> dict:
    """No KL penalty, a fixed one and the adaptive controller (not in ``quick``), run long."""
    kl_settings = {
        "no KL penalty": no_kl_penalty(),
        f"fixed beta={cfg.ppo.kl_beta:g}": fixed_kl_penalty(cfg.ppo.kl_beta),
    }
    if not quick:
        kl_settings[f"adaptive (target {cfg.ppo.kl_target:g} nats)"] = adaptive_kl_penalty(cfg.ppo.kl_beta)
    runs = [{"variant": name, "ppo": {**kl, "lr": lr, "iterations": iterations}} for name, kl in kl_settings.items()]
    return {"runs": runs, "iterations": iterations, "lr": lr}
