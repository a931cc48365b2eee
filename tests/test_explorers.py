"""The maths behind notebook 04's GAE and beta explorers (ppo_lesson.toys), and the explorers themselves."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from ppo_lesson import ppo, toys, widgets

matplotlib.use("Agg")

REF = [0.35, 0.25, 0.15, 0.1, 0.1, 0.05]
REWARDS = [0.25, 1.0, -1.0, 0.5, -1.0, 0.125]


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 0.0), (1.0, 1.0), (0.8, 1.0)])
def test_gae_as_a_sum_of_td_errors_equals_compute_gae(gamma, lam):
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
    delta, advantages = toys.gae_by_sum(rewards, values, gamma, lam)
    expected, _ = ppo.compute_gae(rewards[None], values[None], torch.ones(1, 7), gamma, lam)
    torch.testing.assert_close(advantages, expected[0])
    torch.testing.assert_close(delta, rewards + gamma * torch.cat([values[1:], torch.zeros(1)]) - values)


def test_gae_limits_are_td_error_and_monte_carlo():
    rewards, values = torch.tensor([0.1, -0.2, 0.3, 1.0]), torch.tensor([0.5, 0.2, 0.4, 0.9])
    delta, one_step = toys.gae_by_sum(rewards, values, 1.0, 0.0)
    torch.testing.assert_close(one_step, delta)
    _, monte_carlo = toys.gae_by_sum(rewards, values, 1.0, 1.0)
    torch.testing.assert_close(monte_carlo, rewards.flip(0).cumsum(0).flip(0) - values)


def test_td_errors_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="values"):
        toys.td_errors([1.0, 2.0], [1.0], 1.0)


@pytest.mark.parametrize("beta", [0.01, 0.3, 1.0, 10.0])
def test_tilted_policy_is_a_distribution_that_beats_every_other(beta):
    best = toys.tilt_summary(REF, REWARDS, beta)
    assert abs(best["probs"].sum().item() - 1) < 1e-9 and (best["probs"] >= 0).all()
    assert best["objective"] == pytest.approx(toys.log_partition(REF, REWARDS, beta), abs=1e-9)
    gen, rewards = torch.Generator().manual_seed(0), torch.tensor(REWARDS, dtype=torch.float64)
    for _ in range(20):  # E[r] - beta KL is lower at any other distribution (pi* mixed with a random one)
        other = 0.8 * best["probs"] + 0.2 * torch.softmax(torch.randn(6, generator=gen, dtype=torch.float64), 0)
        assert (other * rewards).sum().item() - beta * toys.kl_divergence(other, REF) < best["objective"]


def test_beta_limits_reference_and_argmax():
    far = toys.tilt_summary(REF, REWARDS, 1e4)
    assert far["kl"] < 1e-6 and torch.allclose(far["probs"], torch.tensor(REF, dtype=torch.float64), atol=1e-4)
    near = toys.tilt_summary(REF, REWARDS, 1e-3)
    assert near["probs"].argmax().item() == REWARDS.index(max(REWARDS)) and near["probs"].max() > 0.999
    kls = [toys.tilt_summary(REF, REWARDS, b)["kl"] for b in (0.05, 0.2, 1.0, 5.0)]
    assert kls == sorted(kls, reverse=True)  # a larger beta stays closer to the reference


def test_tilted_policy_rejects_bad_inputs():
    with pytest.raises(ValueError, match="beta"):
        toys.tilted_policy(REF, REWARDS, 0.0)
    with pytest.raises(ValueError, match="ref_probs"):
        toys.tilted_policy([0.5, 0.6], [0.0, 1.0], 1.0)


def test_explorers_build_headless_with_a_picture_of_their_first_state():
    gae = widgets.gae_explorer(["9", "+", "9"], [0.1, -0.1, 1.0], [0.3, 0.2, 0.6])
    beta = widgets.beta_explorer([f"y{i}" for i in range(6)], REF, REWARDS, beta=0.5)
    for explorer in (gae, beta):
        assert explorer._repr_mimebundle_()["image/png"]
