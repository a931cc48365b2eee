"""ppo_lesson: PPO fine-tuning of a small Seq2Seq Transformer from a learned reward."""

__version__ = "0.1.0"
