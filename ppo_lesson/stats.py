"""Small numeric helpers for curves and reports: smoothing, a mean that skips gaps, rounding for JSON."""

from __future__ import annotations


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start): smooths noisy curves."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def mean_or_none(values) -> float | None:
    """Mean of the values that are not None; None when there are none (a run that never got there)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def rounded(obj, digits: int = 4):
    """``obj`` with every float rounded to ``digits`` decimals, through nested dicts and lists."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return round(obj, digits) if isinstance(obj, float) else obj


def lr_text(lr: float) -> str:
    """A learning rate as a label, every significant digit kept: 3.3e-5, 1e-4 (``:.0e`` would print
    3.3e-5 as 3e-05, a rate no run used)."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
