"""Checks for the notebooks' exercises: run a learner's function on several cases, compare it with the
package's own implementation, and say what is wrong (which case, expected vs got, the likely mistake).

Every ``check_*(fn)`` prints a verdict and returns True or False; an nbgrader test cell asserts it:
``assert checks.check_compute_gae(my_compute_gae)``. A known mistake is recognized by running a wrong
variant of the function on the same case and finding that the learner's output matches it. One module
per notebook; ``core`` holds what they share."""

from .attention import check_attention, check_cached_attention_step, check_causal_mask
from .core import EXERCISES, Exercise, todo
from .finetuning import (
    PLANTED_BUG_CHOICES,
    check_adaptive_kl_update,
    check_planted_bug,
    check_value_loss,
    update_metrics,
)
from .objective import check_approx_kl, check_clipped_surrogate_loss, check_compute_gae, check_kl_penalty_rewards
from .pretraining import check_next_token_probs, check_shift_right, check_teacher_forcing_loss
from .reward_model import check_bradley_terry_loss, check_normalized_scores, check_pair_accuracy

__all__ = [
    "EXERCISES",
    "Exercise",
    "PLANTED_BUG_CHOICES",
    "check_adaptive_kl_update",
    "check_approx_kl",
    "check_attention",
    "check_bradley_terry_loss",
    "check_cached_attention_step",
    "check_causal_mask",
    "check_clipped_surrogate_loss",
    "check_compute_gae",
    "check_kl_penalty_rewards",
    "check_next_token_probs",
    "check_normalized_scores",
    "check_pair_accuracy",
    "check_planted_bug",
    "check_shift_right",
    "check_teacher_forcing_loss",
    "check_value_loss",
    "todo",
    "update_metrics",
]
