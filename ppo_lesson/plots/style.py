"""Where figures are saved, and the look every lesson figure shares (grid, legend size, colours, smoothed curves)."""

from __future__ import annotations

import os
from pathlib import Path

from .. import CHECKOUT
from ..stats import trailing_mean

FIGURES_DIR = CHECKOUT / "figures"

GRID_ALPHA = 0.3
"""Opacity of the grid lines: visible enough to read values off, faint enough to stay behind the data."""
RAW_ALPHA = 0.3
"""Opacity of a noisy per-step curve drawn under its trailing mean."""
SMALL_FONT = 8
"""Legend font size for busy panels (several curves, or several panels side by side)."""
VALID_COLOR, INVALID_COLOR = "tab:blue", "tab:red"
"""Valid answers (gold score >= 0) are blue and invalid ones (gold -1) red, in every notebook."""


def figures_dir() -> Path:
    """Where ``save_figure`` writes by default: $PPO_LESSON_FIGURES when set (the tests point it at a
    scratch folder, so running them never rewrites the committed figures), else the repository's figures/."""
    env = os.environ.get("PPO_LESSON_FIGURES")
    return Path(env) if env else FIGURES_DIR


def save_figure(fig, name: str, folder=None) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png`` (default: ``figures_dir()``); returns the path."""
    folder = Path(folder) if folder is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def style_axes(*axes, grid: str = "both", legend: str | None = None) -> None:
    """Give each of ``axes`` the lesson's look: a light grid (``grid``: "both", "x" or "y") and, when
    ``legend`` is "small" (8 pt, for busy panels) or "normal", a legend of its labelled artists."""
    if legend not in (None, "small", "normal"):
        raise ValueError(f"legend: expected None, 'small' or 'normal', got {legend!r}")
    for ax in axes:
        ax.grid(alpha=GRID_ALPHA, axis=grid)
        if legend == "small":
            ax.legend(fontsize=SMALL_FONT)
        elif legend == "normal":
            ax.legend()


def valid_color(gold: float) -> str:
    """The colour of an answer with this gold score: red when invalid (negative), else blue."""
    return INVALID_COLOR if gold < 0 else VALID_COLOR


def plot_raw_and_smoothed(ax, xs, values, smooth: int, label: str, color=None, raw_lw=None):
    """Draw ``values`` faintly and their ``smooth``-point trailing mean solid on ``ax``, in one colour
    (the next of the colour cycle when ``color`` is None); returns the solid line."""
    (raw,) = ax.plot(xs, values, color=color, alpha=RAW_ALPHA, lw=raw_lw)
    (line,) = ax.plot(xs, trailing_mean(values, smooth), color=raw.get_color(), label=label)
    return line
