"""Checks of notebook 05's exercises: the clipped value loss, the adaptive KL update, a planted bug."""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from .. import finetune, ppo
from ..task import encode_numbers
from .core import EXERCISES, keeps_random_state, token_batch, token_cases, verdict


@keeps_random_state
def check_value_loss(fn) -> bool:
    """fn(values, old_values, returns, mask, value_clip) -> scalar, like ``ppo.value_loss``."""
    cases = []
    for i, (label, lengths, width) in enumerate(token_cases()):
        mask, make = token_batch(60 * i, lengths, width)
        cases.append(
            (label, {"values": make(0), "old_values": make(1), "returns": make(2), "mask": mask, "value_clip": 0.2})
        )
    old = torch.zeros(1, 4)
    cases.append(
        (
            "values exactly at the clip boundary",
            {
                "values": torch.tensor([[0.2, -0.2, 0.2, -0.2]]),
                "old_values": old,
                "returns": torch.tensor([[1.0, 1.0, -1.0, -1.0]]),
                "mask": torch.ones(1, 4),
                "value_clip": 0.2,
            },
        )
    )
    cases.append(("value_clip 0.5", {**cases[1][1], "value_clip": 0.5}))
    loss = ppo.value_loss

    def min_instead_of_max(values, old_values, returns, mask, value_clip):
        clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
        return 0.5 * ppo.masked_mean(torch.min((values - returns) ** 2, (clipped - returns) ** 2), mask)

    def clipped_around_returns(values, old_values, returns, mask, value_clip):
        clipped = returns + (values - returns).clamp(-value_clip, value_clip)
        return 0.5 * ppo.masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)

    mistakes = [
        (
            "min instead of max: PPO keeps the larger (pessimistic) of the clipped and unclipped errors",
            min_instead_of_max,
        ),
        (
            "no clipping: clip the new values to within value_clip of the old ones",
            lambda values, old_values, returns, mask, value_clip: loss(values, old_values, returns, mask, math.inf),
        ),
        (
            "the factor 0.5 is missing",
            lambda values, old_values, returns, mask, value_clip: (
                2 * loss(values, old_values, returns, mask, value_clip)
            ),
        ),
        ("clipped around the returns: the clip keeps the new values near the OLD values", clipped_around_returns),
        (
            "the mask is forgotten: average over the real tokens only",
            lambda values, old_values, returns, mask, value_clip: loss(
                values, old_values, returns, torch.ones_like(mask), value_clip
            ),
        ),
        (
            "normalized over padding: divide by the number of real tokens (mask.sum()), not of all positions",
            lambda values, old_values, returns, mask, value_clip: (
                loss(values, old_values, returns, mask, value_clip) * mask.sum() / mask.numel()
            ),
        ),
    ]
    return verdict("my_value_loss", fn, loss, cases, mistakes, parts=("loss",))


def _package_kl_update(kl_beta, current_kl, target, n_steps, horizon):
    return ppo.AdaptiveKLController(kl_beta, target, horizon).update(current_kl, n_steps)


@keeps_random_state
def check_adaptive_kl_update(fn) -> bool:
    """fn(kl_beta, current_kl, target, n_steps, horizon) -> the new beta, like ``AdaptiveKLController.update``."""
    base = {"kl_beta": 0.2, "target": 1.0, "n_steps": 128, "horizon": 2000}
    cases = [
        ("KL on target: beta unchanged", {**base, "current_kl": 1.0}),
        ("KL 10% above target", {**base, "current_kl": 1.1}),
        ("KL 3x the target: error clipped at +0.2", {**base, "current_kl": 3.0}),
        ("KL 0: error clipped at -0.2", {**base, "current_kl": 0.0}),
        (
            "target 6, KL 5, horizon 10000",
            {"kl_beta": 0.05, "target": 6.0, "n_steps": 256, "horizon": 10000, "current_kl": 5.0},
        ),
    ]

    def variant(clip=True, sign=1.0, additive=False, difference=False, scaled=True):
        def update(kl_beta, current_kl, target, n_steps, horizon):
            error = sign * ((current_kl - target) if difference else (current_kl / target - 1.0))
            error = min(max(error, -0.2), 0.2) if clip else error
            step = error * (n_steps / horizon if scaled else 1.0)
            return kl_beta + step if additive else kl_beta * (1.0 + step)

        return update

    mistakes = [
        ("the error is not clipped to [-0.2, 0.2]", variant(clip=False)),
        ("the sign is flipped: a KL above the target must raise beta", variant(sign=-1.0)),
        ("an additive update: beta is multiplied by (1 + e * n_steps / horizon)", variant(additive=True)),
        ("the error is KL / target - 1 (relative), not KL - target", variant(difference=True)),
        ("n_steps / horizon is missing: each update moves beta by a small step", variant(scaled=False)),
    ]
    return verdict("my_adaptive_kl_update", fn, _package_kl_update, cases, mistakes, parts=("new kl_beta",))


def update_metrics(policy, reward_model, cfg, planted_bug: bool) -> list[dict]:
    """Diagnostics of each minibatch of the first epoch of one PPO update that starts from ``policy``
    (on one answer per source N); with ``planted_bug`` something in it is wrong: exercise 05.3 asks what."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        agent = finetune.PPOAgent(copy.deepcopy(policy))
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        src = encode_numbers(list(range(cfg.task.min_number, cfg.task.max_number + 1)))
        rollout_generator = torch.Generator().manual_seed(cfg.seed)
        memory, _ = finetune.collect_rollouts(
            agent, reference, reward_model, src, cfg, cfg.ppo.kl_beta, rollout_generator
        )
        update_cfg = dataclasses.replace(cfg.ppo, temperature=0.7 * cfg.ppo.temperature) if planted_bug else cfg.ppo
        optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.ppo.lr, eps=1e-5)
        stats = finetune.ppo_update(agent, optimizer, memory, update_cfg, torch.Generator().manual_seed(cfg.seed))
    return [
        {"minibatch": i, **{k: v for k, v in row.items() if k != "epoch"}}
        for i, row in enumerate(stats)
        if row["epoch"] == 0
    ]


PLANTED_BUG_CHOICES = {
    "A": "the learning rate is too high",
    "B": "the advantages have the wrong sign",
    "C": "the update re-scores the tokens under another distribution than the one that sampled them",
    "D": "the value head has not learned anything yet",
}
_PLANTED_BUG_FEEDBACK = {
    "A": "no optimizer step has been taken before the first minibatch, so the learning rate cannot move the ratio "
    "there; a large learning rate shows from the second minibatch on.",
    "B": "the advantages decide which way the steps go, but before the first step the ratio depends only on the "
    "log-probabilities of the same tokens under the same weights.",
    "C": "right: with the same weights, no dropout and the same temperature, the ratio is exactly 1 before the first "
    "step. approx_kl and clipfrac above 0 on the very first minibatch mean the old and new log-probabilities "
    "come from different distributions (here the update re-scores at another temperature).",
    "D": "the value head enters the loss through the advantages and the value loss; neither changes the "
    "policy's log-probabilities before a step is taken.",
}


@keeps_random_state
def check_planted_bug(fn) -> bool:
    """fn() -> one of "A", "B", "C", "D": the explanation of the planted bug's logged metrics."""
    number = EXERCISES["my_planted_bug"].number
    try:
        answer = str(fn()).strip().upper()
    except NotImplementedError:
        print(f"✗ exercise {number} is not done yet: my_planted_bug should return one of A, B, C, D.")
        return False
    if answer not in PLANTED_BUG_CHOICES:
        print(f"✗ exercise {number}: expected one of {', '.join(PLANTED_BUG_CHOICES)}, got {answer!r}")
        return False
    right = answer == "C"
    print(
        f"{'✓' if right else '✗'} exercise {number}: {answer} ({PLANTED_BUG_CHOICES[answer]}): "
        f"{'' if right else 'not this one: '}{_PLANTED_BUG_FEEDBACK[answer]}"
    )
    return right
