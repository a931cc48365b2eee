"""What a training curve says, in one number: when it first reaches a level, how far it ever falls,
where it stands after a fraction of the samples. Curves are per-iteration on-policy means (128 answers
per point are noisy), so each is read through a trailing mean of ``CURVE_WINDOW`` iterations."""

from __future__ import annotations

from .stats import trailing_mean

CURVE_WINDOW = 5  # iterations in the trailing mean that thresholds and drops are read from


def samples_to_reach(gold: list[float], level: float, rollout_batch: int) -> int | None:
    """Sampled answers until the smoothed on-policy gold reward first reaches ``level`` (None if never)."""
    for i, g in enumerate(trailing_mean(gold, CURVE_WINDOW)):
        if g >= level:
            return (i + 1) * rollout_batch
    return None


def worst_drop(gold: list[float]) -> float:
    """Largest fall of the smoothed gold reward below the best value seen before it (0 if it never falls)."""
    best, drop = float("-inf"), 0.0
    for g in trailing_mean(gold, CURVE_WINDOW):
        best = max(best, g)
        drop = max(drop, best - g)
    return drop


def gold_at_fractions(gold: list[float], rollout_batch: int, fractions=(0.25, 0.5, 1.0)) -> dict[str, float]:
    """Smoothed on-policy gold reward after a quarter, half and all of the sampled answers, keyed by
    the number of sampled answers (as a string, for JSON)."""
    smoothed = trailing_mean(gold, CURVE_WINDOW)
    points = {max(1, round(f * len(gold))) for f in fractions}
    return {str(n * rollout_batch): smoothed[n - 1] for n in sorted(points)}
