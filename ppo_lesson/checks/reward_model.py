"""Checks of notebook 03's exercises: the Bradley-Terry loss, reward normalization, pair accuracy."""

from __future__ import annotations

import torch

from .. import model, reward
from ..config import tiny_config
from .core import keeps_random_state, randn, verdict


@keeps_random_state
def check_bradley_terry_loss(fn) -> bool:
    """fn(r_chosen, r_rejected) -> scalar, like ``reward.bradley_terry_loss``."""
    t = lambda *x: torch.tensor(x)
    cases = [
        ("three pairs", {"r_chosen": t(1.0, 0.5, -0.2), "r_rejected": t(0.0, 0.7, -1.2)}),
        ("equal rewards: the loss is log 2", {"r_chosen": t(0.3), "r_rejected": t(0.3)}),
        ("chosen 50 above rejected", {"r_chosen": t(50.0, 1.0), "r_rejected": t(0.0, 0.0)}),
        (
            "rejected 200 above chosen: needs a stable log-sigmoid",
            {"r_chosen": t(-100.0, 0.0), "r_rejected": t(100.0, 1.0)},
        ),
    ]
    mistakes = [
        (
            "the sign is flipped: -log sigmoid(r_chosen - r_rejected), chosen minus rejected",
            lambda r_chosen, r_rejected: reward.bradley_terry_loss(r_rejected, r_chosen),
        ),
        (
            "sum instead of mean over the pairs",
            lambda r_chosen, r_rejected: reward.bradley_terry_loss(r_chosen, r_rejected) * r_chosen.numel(),
        ),
        (
            "the minus is missing: minimize the negative log-likelihood",
            lambda r_chosen, r_rejected: -reward.bradley_terry_loss(r_chosen, r_rejected),
        ),
        (
            "log(sigmoid(x)) underflows to log(0) = -inf for very negative x: use F.logsigmoid",
            lambda r_chosen, r_rejected: -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean(),
        ),
    ]
    return verdict("my_bradley_terry_loss", fn, reward.bradley_terry_loss, cases, mistakes, parts=("loss",))


class _FixedScores(torch.nn.Module):
    """Stands in for a reward model (and for the reference policy) so that the package's own
    normalization and accuracy code run on scores chosen by the check."""

    def __init__(self, scores=None, chosen=None, rejected=None):
        super().__init__()
        self.scores, self.chosen, self.rejected = scores, chosen, rejected
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def forward(self, src, tokens, mask):
        if self.chosen is None:
            return self.scores
        rows = src[:, 0]  # the pair's index, written into its source
        return torch.where(tokens[:, 0] == 1, self.chosen[rows], self.rejected[rows])

    def generate(self, src, *args, **kwargs):
        ones = torch.ones(len(src), 1)
        return model.Generation(ones.long(), ones, ones)


def _package_normalized(reference_scores, scores):
    """``RewardModel.score`` after ``normalize_reward_model`` saw ``reference_scores`` as the reference's."""
    rm = _FixedScores(reference_scores)
    reward.normalize_reward_model(rm, _FixedScores(), tiny_config(), n=len(reference_scores))
    rm.scores = scores
    return reward.RewardModel.score(rm, None, None, None)


@keeps_random_state
def check_normalized_scores(fn) -> bool:
    """fn(reference_scores, scores) -> (B,): scores shifted and scaled with the reference's statistics."""
    ref = randn(8, seed=3, scale=2.0) + 1.0
    cases = [
        ("8 reference scores, 4 scores", {"reference_scores": ref, "scores": randn(4, seed=4)}),
        ("the reference scores themselves", {"reference_scores": ref, "scores": ref}),
        ("3 reference scores", {"reference_scores": torch.tensor([0.0, 1.0, 5.0]), "scores": torch.tensor([1.0, 2.0])}),
        (
            "equal reference scores (std 0)",
            {"reference_scores": torch.full((4,), 2.0), "scores": torch.tensor([2.0, 2.5])},
        ),
    ]
    mistakes = [
        (
            "normalized with the scores' own statistics: use the mean and std of reference_scores",
            lambda reference_scores, scores: _package_normalized(scores, scores),
        ),
        (
            "biased std: use torch.std's default (divides by n - 1)",
            lambda reference_scores, scores: (
                _package_normalized(reference_scores, scores)
                * reference_scores.std()
                / reference_scores.std(unbiased=False)
            ),
        ),
        (
            "only shifted: also divide by the reference's std",
            lambda reference_scores, scores: scores - reference_scores.mean(),
        ),
        (
            "no floor on the std: clamp it at 1e-6, or equal reference scores divide by 0",
            lambda reference_scores, scores: (scores - reference_scores.mean()) / reference_scores.std(),
        ),
    ]
    with torch.no_grad():
        return verdict("my_normalized_scores", fn, _package_normalized, cases, mistakes, parts=("scores",))


def _package_accuracy(r_chosen, r_rejected):
    """``reward.pair_accuracy`` on pairs whose scores are given."""
    n = len(r_chosen)
    pairs = {
        "src": torch.arange(n)[:, None],
        "chosen": torch.ones(n, 1, dtype=torch.long),
        "rejected": torch.full((n, 1), 2),
    }
    return reward.pair_accuracy(_FixedScores(chosen=r_chosen, rejected=r_rejected), pairs)


@keeps_random_state
def check_pair_accuracy(fn) -> bool:
    """fn(r_chosen, r_rejected) -> float: the share of pairs with r_chosen > r_rejected."""
    t = lambda *x: torch.tensor(x)
    cases = [
        ("5 pairs", {"r_chosen": t(1.0, 0.2, -0.5, 2.0, 0.0), "r_rejected": t(0.0, 0.4, -1.0, 1.0, 0.5)}),
        ("ties count as wrong", {"r_chosen": t(1.0, 0.3, 0.3), "r_rejected": t(0.0, 0.3, 0.3)}),
        ("one pair", {"r_chosen": t(-1.0), "r_rejected": t(-2.0)}),
        ("3000 pairs", {"r_chosen": randn(3000, seed=6), "r_rejected": randn(3000, seed=7)}),
    ]
    mistakes = [
        (
            ">= counts ties as right: the chosen answer must score strictly higher",
            lambda r_chosen, r_rejected: (r_chosen >= r_rejected).float().mean(),
        ),
        (
            "the wrong side: count the pairs where r_chosen > r_rejected",
            lambda r_chosen, r_rejected: (r_rejected > r_chosen).float().mean(),
        ),
        (
            "a count, not a share: divide by the number of pairs",
            lambda r_chosen, r_rejected: (r_chosen > r_rejected).float().sum(),
        ),
        (
            "the mean of sigmoid(r_chosen - r_rejected) is the model's confidence, not its accuracy",
            lambda r_chosen, r_rejected: torch.sigmoid(r_chosen - r_rejected).mean(),
        ),
    ]
    with torch.no_grad():
        return verdict("my_pair_accuracy", fn, _package_accuracy, cases, mistakes, parts=("accuracy",))
