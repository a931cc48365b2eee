"""Checks of notebook 04's exercises: the clipped surrogate, GAE, the k3 KL estimator, the per-token KL reward."""

from __future__ import annotations

import torch

from .. import ppo
from .core import keeps_random_state, randn, token_batch, token_cases, verdict


@keeps_random_state
def check_clipped_surrogate_loss(fn) -> bool:
    """fn(logprobs, old_logprobs, advantages, mask, clip_eps) -> scalar, like ``ppo.clipped_surrogate_loss``."""
    cases = []
    for i, (label, lengths, width) in enumerate(token_cases()):
        mask, make = token_batch(10 * i, lengths, width)
        cases.append(
            (
                label,
                {
                    "logprobs": make(0),
                    "old_logprobs": make(1),
                    "advantages": make(2, 1.0),
                    "mask": mask,
                    "clip_eps": 0.2,
                },
            )
        )
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    boundary = old + torch.log(torch.tensor([[1.2, 0.8, 1.2, 0.8]]))
    cases.append(
        (
            "ratios exactly at 1 + eps and 1 - eps",
            {
                "logprobs": boundary,
                "old_logprobs": old,
                "advantages": torch.tensor([[1.0, 1.0, -1.0, -1.0]]),
                "mask": torch.ones(1, 4),
                "clip_eps": 0.2,
            },
        )
    )
    mask, make = token_batch(50, [5, 2], 5)
    cases.append(
        (
            "clip_eps 0.1, large steps",
            {
                "logprobs": make(0, 1.0),
                "old_logprobs": make(1, 1.0),
                "advantages": make(2, 1.0),
                "mask": mask,
                "clip_eps": 0.1,
            },
        )
    )

    def min_instead_of_max(logprobs, old_logprobs, advantages, mask, clip_eps):
        ratio = torch.exp((logprobs - old_logprobs) * mask)
        terms = torch.min(-advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))
        return ppo.masked_mean(terms, mask)

    loss = ppo.clipped_surrogate_loss
    mistakes = [
        (
            "min instead of max: the loss is max(-A r, -A clip(r)), the negative of the objective's min",
            min_instead_of_max,
        ),
        (
            "the mask is forgotten: average over the real tokens only (mask is 1 on them)",
            lambda logprobs, old_logprobs, advantages, mask, clip_eps: loss(
                logprobs, old_logprobs, advantages, torch.ones_like(mask), clip_eps
            ),
        ),
        (
            "sum instead of mean over the real tokens",
            lambda logprobs, old_logprobs, advantages, mask, clip_eps: (
                loss(logprobs, old_logprobs, advantages, mask, clip_eps) * mask.sum()
            ),
        ),
        (
            "normalized over padding: divide by the number of real tokens (mask.sum()), not of all positions",
            lambda logprobs, old_logprobs, advantages, mask, clip_eps: (
                loss(logprobs, old_logprobs, advantages, mask, clip_eps) * mask.sum() / mask.numel()
            ),
        ),
        (
            "the objective, not the loss: return its negative, a loss to minimize",
            lambda logprobs, old_logprobs, advantages, mask, clip_eps: (
                -loss(logprobs, old_logprobs, advantages, mask, clip_eps)
            ),
        ),
        (
            "the ratio is upside down: exp(logprobs - old_logprobs) is pi_new / pi_old",
            lambda logprobs, old_logprobs, advantages, mask, clip_eps: loss(
                old_logprobs, logprobs, advantages, mask, clip_eps
            ),
        ),
    ]
    return verdict("my_clipped_surrogate_loss", fn, loss, cases, mistakes, parts=("loss",))


def _gae_variant(
    bootstrap_from_padding=False, ignore_mask=False, use_gamma=True, returns_are_advantages=False, forward=False
):
    """A GAE loop with one known mistake switched on."""

    def gae(rewards, values, mask, gamma, lam):
        keep = torch.ones_like(mask) if ignore_mask else mask
        rewards, masked_values = rewards * keep, values * keep
        bootstrap = values if bootstrap_from_padding else masked_values
        width, zero = rewards.size(1), torch.zeros_like(rewards[:, 0])
        advantages = torch.zeros_like(rewards)
        for t in range(width) if forward else reversed(range(width)):
            next_value = bootstrap[:, t + 1] if t + 1 < width else zero
            next_advantage = advantages[:, t + 1] if t + 1 < width else zero
            delta = rewards[:, t] + gamma * next_value - masked_values[:, t]
            advantages[:, t] = (delta + (gamma if use_gamma else 1.0) * lam * next_advantage) * keep[:, t]
        return advantages, advantages if returns_are_advantages else (advantages + masked_values) * keep

    return gae


@keeps_random_state
def check_compute_gae(fn) -> bool:
    """fn(rewards, values, mask, gamma, lam) -> (advantages, returns), like ``ppo.compute_gae``."""
    cases = []
    for i, (label, lengths, width) in enumerate(token_cases()):
        mask, make = token_batch(20 * i, lengths, width)
        cases.append((label, {"rewards": make(0), "values": make(1), "mask": mask, "gamma": 1.0, "lam": 0.95}))
    mask, make = token_batch(90, [5, 3], 5)
    cases += [
        ("gamma 0.9, lam 0.8", {"rewards": make(0), "values": make(1), "mask": mask, "gamma": 0.9, "lam": 0.8}),
        ("lam 0: one-step TD errors", {"rewards": make(2), "values": make(3), "mask": mask, "gamma": 1.0, "lam": 0.0}),
    ]
    mistakes = [
        (
            "no zero bootstrap after the last token: the value past EOS is 0, not the value stored at the padding",
            _gae_variant(bootstrap_from_padding=True),
        ),
        (
            "the mask is ignored: rewards and values after the last token must not count, and the advantages "
            "there are 0",
            _gae_variant(ignore_mask=True),
        ),
        ("gamma is missing from the recursion: A_t = delta_t + gamma * lam * A_(t+1)", _gae_variant(use_gamma=False)),
        (
            "gamma is ignored: it discounts the next value in delta_t and A_(t+1) in the recursion",
            lambda rewards, values, mask, gamma, lam: ppo.compute_gae(rewards, values, mask, 1.0, lam),
        ),
        (
            "the returns are advantages + values (the lambda-return), not the advantages",
            _gae_variant(returns_are_advantages=True),
        ),
        ("the loop runs forward: GAE accumulates from the last token backwards", _gae_variant(forward=True)),
    ]
    return verdict("my_compute_gae", fn, ppo.compute_gae, cases, mistakes, parts=("advantages", "returns"))


def _package_approx_kl(logprobs, old_logprobs, mask):
    return ppo.policy_diagnostics(logprobs, old_logprobs, mask)["approx_kl"]


@keeps_random_state
def check_approx_kl(fn) -> bool:
    """fn(logprobs, old_logprobs, mask) -> float: the masked mean of k3 = (r - 1) - log r, r = pi_new / pi_old."""
    cases = []
    for i, (label, lengths, width) in enumerate(token_cases()):
        mask, make = token_batch(30 * i, lengths, width)
        cases.append((label, {"logprobs": make(0), "old_logprobs": make(1), "mask": mask}))
    same = -torch.rand(2, 3, generator=torch.Generator().manual_seed(4))
    mask, make = token_batch(70, [4, 1], 4)
    cases += [
        ("identical policies: 0", {"logprobs": same, "old_logprobs": same, "mask": torch.ones(2, 3)}),
        (
            "large changes (log-ratios up to +-3)",
            {"logprobs": make(0, 1.5), "old_logprobs": make(1, 1.5), "mask": mask},
        ),
    ]
    mistakes = [
        (
            "k1 (the mean of log pi_old / pi_new) is unbiased but can be negative; k3 = (r - 1) - log r",
            lambda logprobs, old_logprobs, mask: ppo.masked_mean(old_logprobs - logprobs, mask),
        ),
        (
            "the log-ratio is flipped: r = exp(logprobs - old_logprobs) = pi_new / pi_old",
            lambda logprobs, old_logprobs, mask: _package_approx_kl(old_logprobs, logprobs, mask),
        ),
        (
            "the mask is forgotten: average over the real tokens only",
            lambda logprobs, old_logprobs, mask: _package_approx_kl(logprobs, old_logprobs, torch.ones_like(mask)),
        ),
        (
            "sum instead of mean over the real tokens",
            lambda logprobs, old_logprobs, mask: _package_approx_kl(logprobs, old_logprobs, mask) * mask.sum(),
        ),
        (
            "normalized over padding: divide by the number of real tokens (mask.sum()), not of all positions",
            lambda logprobs, old_logprobs, mask: (
                _package_approx_kl(logprobs, old_logprobs, mask) * mask.sum() / mask.numel()
            ),
        ),
        (
            "k2 = (log r)^2 / 2 is another estimator; k3 = (r - 1) - log r is the one PPO logs",
            lambda logprobs, old_logprobs, mask: ppo.masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask),
        ),
    ]
    return verdict("my_approx_kl", fn, _package_approx_kl, cases, mistakes, parts=("approx_kl",))


@keeps_random_state
def check_kl_penalty_rewards(fn) -> bool:
    """fn(logprobs, ref_logprobs, scores, mask, kl_beta) -> (B, T), like ``ppo.kl_penalty_rewards``."""
    cases = []
    for i, (label, lengths, width) in enumerate(token_cases()):
        mask, make = token_batch(40 * i, lengths, width)
        scores = randn(len(lengths), seed=41 + i)
        cases.append(
            (label, {"logprobs": make(0), "ref_logprobs": make(1), "scores": scores, "mask": mask, "kl_beta": 0.2})
        )
    cases.append(("kl_beta 0: only the score", {**cases[1][1], "kl_beta": 0.0}))
    rewards = ppo.kl_penalty_rewards

    def score_at(where):
        def variant(logprobs, ref_logprobs, scores, mask, kl_beta):
            penalty = -kl_beta * (logprobs - ref_logprobs) * mask
            if where == "every token":
                return penalty + scores[:, None] * mask
            column = {"last column": -1, "first token": 0}.get(where)
            last = mask.sum(1).long() - 1 if column is None else torch.full_like(scores, column).long()
            penalty[torch.arange(len(scores)), last] += scores
            return penalty

        return variant

    mistakes = [
        (
            "the KL sign is flipped: each token pays -kl_beta * (logp - logp_ref)",
            lambda logprobs, ref_logprobs, scores, mask, kl_beta: rewards(
                logprobs, ref_logprobs, scores, mask, -kl_beta
            ),
        ),
        (
            "the score lands on the last column: it belongs on the last real token (EOS) of each row",
            score_at("last column"),
        ),
        ("the score lands on the first token: it belongs on the last real token (EOS)", score_at("first token")),
        ("the score is paid on every token: once per answer, on its last real token", score_at("every token")),
        (
            "an all-padding row has no last token, so it gets no score (index mask.sum(1) - 1 is -1 there)",
            score_at("last real token, unguarded"),
        ),
        (
            "the mask is forgotten: no penalty after EOS",
            lambda logprobs, ref_logprobs, scores, mask, kl_beta: (
                rewards(logprobs, ref_logprobs, scores, mask, kl_beta)
                - kl_beta * (logprobs - ref_logprobs) * (1 - mask)
            ),
        ),
    ]
    return verdict("my_kl_penalty_rewards", fn, rewards, cases, mistakes, parts=("rewards",))
