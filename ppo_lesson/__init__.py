"""ppo_lesson: PPO fine-tuning of a small Seq2Seq Transformer from a learned reward."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent  # the stage cache, the figures and source locations are found relative to it
