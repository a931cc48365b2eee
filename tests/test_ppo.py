"""PPO on tokens: GAE, the clipped objective, the KL penalty, masking after EOS, the ratio-is-1
invariant, the KL controller, the rollout buffer and a short end-to-end run."""

from __future__ import annotations

import copy
import itertools
import math
import random

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ppo_lesson.finetune import PPOAgent, PPOMemory, collect_rollouts, finetune_ppo, ppo_update
from ppo_lesson.ppo import (
    AdaptiveKLController,
    clipped_surrogate_loss,
    compute_gae,
    explained_variance,
    kl_penalty_rewards,
    value_loss,
    whiten,
)
from ppo_lesson.task import encode_numbers, sample_numbers

LENGTHS = [1, 7, 3, 5, 6, 2]  # per-row real lengths; T = 7, so row 1 is a full-length row
T = 7


def _mask(lengths=LENGTHS, width=T, dtype=torch.float64):
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=dtype)


def _gae_loop(rewards, values, lengths, gamma, lam):
    """GAE written independently with plain Python floats, one row at a time."""
    advantages = [[0.0] * len(row) for row in rewards]
    returns = [[0.0] * len(row) for row in rewards]
    for b, n in enumerate(lengths):
        running = 0.0
        for t in range(n - 1, -1, -1):
            next_value = values[b][t + 1] if t + 1 < n else 0.0  # the episode ends after EOS
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            advantages[b][t] = running
            returns[b][t] = running + values[b][t]
    return advantages, returns


# --------------------------------------------------------------------------- compute_gae


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_compute_gae_matches_python_double_loop(gamma, lam):
    """compute_gae equals a double loop over rows and reversed time on random rewards and values,
    with rows of lengths 1..T; masked positions come back exactly 0 and returns = advantages +
    values on real tokens."""
    g = torch.Generator().manual_seed(0)
    mask = _mask()
    rewards = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) * mask
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = _gae_loop(rewards.tolist(), values.tolist(), LENGTHS, gamma, lam)
    assert_close(advantages, torch.tensor(exp_adv, dtype=torch.float64))
    assert_close(returns, torch.tensor(exp_ret, dtype=torch.float64))
    assert (advantages[mask == 0] == 0).all() and (returns[mask == 0] == 0).all()
    assert_close(returns[mask == 1], (advantages + values)[mask == 1])


def test_compute_gae_single_token_row_by_hand():
    """A one-token episode: A = r - V and the return is r, whatever gamma and lam are."""
    adv, ret = compute_gae(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 0.0]]), 0.9, 0.3)
    assert adv.tolist() == [[1.5, 0.0]] and ret.tolist() == [[2.0, 0.0]]


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_compute_gae_ignores_garbage_after_eos(gamma, lam):
    """Values and rewards after EOS set to large garbage do not change the result: the value past
    the last real token is 0 (no bootstrap from a padded position)."""
    g = torch.Generator().manual_seed(1)
    mask = _mask()
    rewards = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) * mask
    garbage = 1e3 * torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) * (1 - mask)
    clean = compute_gae(rewards, values, mask, gamma, lam)
    dirty = compute_gae(rewards + garbage, values - garbage, mask, gamma, lam)
    assert_close(dirty[0], clean[0], rtol=0, atol=0)
    assert_close(dirty[1], clean[1], rtol=0, atol=0)


# ------------------------------------------------------------------ clipped surrogate loss


def _surrogate_inputs():
    """Log-ratios and advantages that put tokens in every region: clipped above/below, inside."""
    log_ratio = torch.tensor(
        [[0.5, -0.5, 0.1, -0.1, 0.0, 0.3, 0.0], [-0.4, 0.4, 0.05, 0.25, -0.3, 0.0, 0.0]], dtype=torch.float64
    )
    adv = torch.tensor(
        [[1.0, 1.0, -2.0, 0.5, 1.5, -1.0, 0.7], [-1.0, -1.0, 0.3, 0.2, 2.0, 0.0, 0.0]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    old = torch.tensor(
        [[-1.0, -2.0, -0.5, -3.0, -1.2, -0.7, -9.0], [-0.1, -1.1, -2.2, -0.4, -0.9, -5.0, -5.0]], dtype=torch.float64
    )
    return old + log_ratio, old, adv, mask


@pytest.mark.parametrize("eps", [0.2, 0.1, 0.35])
def test_clipped_surrogate_loss_matches_formula(eps):
    """The loss equals max(-A r, -A clip(r, 1-eps, 1+eps)) averaged over real tokens, written out
    elementwise with Python floats and math.exp."""
    logprobs, old, adv, mask = _surrogate_inputs()
    total, count = 0.0, 0
    for lp_row, old_row, a_row, m_row in zip(logprobs.tolist(), old.tolist(), adv.tolist(), mask.tolist(), strict=True):
        for lp, o, a, m in zip(lp_row, old_row, a_row, m_row, strict=True):
            if m:
                r = math.exp(lp - o)
                total += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
                count += 1
    loss = clipped_surrogate_loss(logprobs, old, adv, mask, eps)
    assert_close(loss, torch.tensor(total / count, dtype=torch.float64))


def test_clipped_surrogate_gradient_is_zero_where_clipped():
    """d loss / d logprobs is exactly 0 where the clip is active (A > 0 and r > 1+eps, or A < 0 and
    r < 1-eps) and on masked tokens; elsewhere it is -A r / n_real, as differentiating
    -A exp(logp - old) by hand gives."""
    eps = 0.2
    logprobs, old, adv, mask = _surrogate_inputs()
    logprobs.requires_grad_(True)
    clipped_surrogate_loss(logprobs, old, adv, mask, eps).backward()
    grad = logprobs.grad
    ratio = torch.exp(logprobs.detach() - old)
    active = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
    real = mask.bool()
    assert active[real].sum() >= 3 and (~active & real & (adv != 0)).sum() >= 3  # every region is tested
    assert (grad[active | ~real] == 0).all()
    free = real & ~active
    assert_close(grad[free], (-adv * ratio / mask.sum())[free])
    assert (grad[free & (adv != 0)] != 0).all()


def test_clipped_surrogate_with_infinite_eps_is_unclipped():
    """clip_eps = inf gives the plain policy-gradient surrogate, the masked mean of -A r."""
    logprobs, old, adv, mask = _surrogate_inputs()
    ratio = torch.exp(logprobs - old)
    expected = (-adv * ratio)[mask.bool()].mean()
    assert_close(clipped_surrogate_loss(logprobs, old, adv, mask, float("inf")), expected)
    assert not torch.allclose(clipped_surrogate_loss(logprobs, old, adv, mask, 0.2), expected)


def test_value_loss_matches_formula():
    """value_loss = 0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2), with V_clipped within
    value_clip of the old values; written out with Python floats."""
    g = torch.Generator().manual_seed(2)
    mask = _mask()
    values, old, ret = (torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) for _ in range(3))
    c = 0.2
    terms = []
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            v, o, r = values[b, t].item(), old[b, t].item(), ret[b, t].item()
            vc = o + min(max(v - o, -c), c)
            terms.append(max((v - r) ** 2, (vc - r) ** 2))
    assert_close(
        value_loss(values, old, ret, mask, c), torch.tensor(0.5 * sum(terms) / len(terms), dtype=torch.float64)
    )


# --------------------------------------------------------------- nothing after EOS counts


def test_rewards_and_advantages_are_zero_after_eos():
    """kl_penalty_rewards then compute_gae, fed garbage logprobs after EOS: every position with
    mask 0 comes back exactly 0 in rewards, advantages, returns and whitened advantages."""
    g = torch.Generator().manual_seed(3)
    mask = _mask(dtype=torch.float32)
    logprobs = -torch.rand(len(LENGTHS), T, generator=g) * 3
    ref = -torch.rand(len(LENGTHS), T, generator=g) * 3
    logprobs = torch.where(mask.bool(), logprobs, torch.tensor(-1e9))  # what score_tokens gives PAD
    ref = torch.where(mask.bool(), ref, torch.tensor(37.0))
    scores = torch.randn(len(LENGTHS), generator=g)
    values = torch.where(mask.bool(), torch.randn(len(LENGTHS), T, generator=g), torch.tensor(1e6))
    rewards = kl_penalty_rewards(logprobs, ref, scores, mask, kl_beta=0.3)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 0.95)
    for name, t in {"rewards": rewards, "advantages": adv, "returns": ret, "whitened": whiten(adv, mask)}.items():
        assert (t[mask == 0] == 0).all(), name
        assert torch.isfinite(t).all(), name


def test_total_loss_gradient_is_zero_after_eos():
    """The gradient of clipped loss + value loss w.r.t. per-token logprobs and values is exactly 0
    at masked positions (autograd), even with garbage there, and nonzero on real tokens."""
    g = torch.Generator().manual_seed(4)
    mask = _mask(dtype=torch.float32)
    real = mask.bool()
    old = -torch.rand(len(LENGTHS), T, generator=g) * 3
    logprobs = (old + 0.3 * torch.randn(len(LENGTHS), T, generator=g)).requires_grad_(True)
    adv = torch.randn(len(LENGTHS), T, generator=g) * mask
    old_values = torch.randn(len(LENGTHS), T, generator=g)
    values = (old_values + 0.1 * torch.randn(len(LENGTHS), T, generator=g)).requires_grad_(True)
    ret = torch.randn(len(LENGTHS), T, generator=g) * mask
    loss = clipped_surrogate_loss(logprobs, old, adv, mask, 0.2) + 0.1 * value_loss(values, old_values, ret, mask)
    loss.backward()
    assert (logprobs.grad[~real] == 0).all() and (values.grad[~real] == 0).all()
    # on real tokens the gradient flows wherever neither clip is active
    ratio = torch.exp(logprobs.detach() - old)
    policy_clipped = ((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))
    value_clipped = (values.detach() - old_values).abs() > 0.2
    assert (logprobs.grad[real & ~policy_clipped] != 0).all() and (real & ~policy_clipped).sum() > 10
    assert (values.grad[real & ~value_clipped] != 0).all() and (real & ~value_clipped).sum() > 10


def _rollout(policy, reward_model, cfg, n=32, seed=0, kl_beta=0.1):
    agent = PPOAgent(copy.deepcopy(policy))
    reference = copy.deepcopy(policy)
    src = encode_numbers(sample_numbers(n, cfg.task, random.Random(seed)))
    memory, stats = collect_rollouts(
        agent, reference, reward_model, src, cfg, kl_beta, torch.Generator().manual_seed(seed)
    )
    return agent, reference, src, memory, stats


def test_rollout_tensors_are_plain_and_equal_to_a_graded_pass(tiny_cfg, tiny_policy, tiny_reward_model):
    """collect_rollouts runs its model passes in inference mode: what it stores must still be ordinary
    tensors (usable in a backward pass), and the old logprobs and values equal, bit for bit, the pass with
    autograd on that the update makes: the first ratio is exactly 1."""
    agent, _, src, memory, _ = _rollout(tiny_policy, tiny_reward_model, tiny_cfg)
    assert not any(t.is_inference() for t in memory.data.values())
    logprobs, _, values = agent(src, memory.data["tokens"], tiny_cfg.ppo.temperature)
    assert logprobs.requires_grad
    assert torch.equal(logprobs.detach(), memory.data["old_logprobs"])
    assert torch.equal(values.detach(), memory.data["old_values"])


def _ppo_loss(agent, data, cfg):
    logprobs, _, values = agent(data["src"], data["tokens"], cfg.ppo.temperature)
    pg = clipped_surrogate_loss(logprobs, data["old_logprobs"], data["advantages"], data["mask"], cfg.ppo.clip_eps)
    vf = value_loss(values, data["old_values"], data["returns"], data["mask"], cfg.ppo.value_clip)
    return pg + cfg.ppo.vf_coef * vf


def test_changing_tokens_after_eos_in_memory_does_not_change_loss(tiny_cfg, tiny_policy, tiny_reward_model):
    """Replacing the PAD tokens after EOS in a stored rollout by digits must leave the PPO loss
    (clipped + value) unchanged: nothing after EOS is part of the episode."""
    agent, _, _, memory, _ = _rollout(tiny_policy, tiny_reward_model, tiny_cfg)
    data = dict(memory.data)
    assert (data["mask"] == 0).any()
    before = _ppo_loss(agent, data, tiny_cfg)
    data["tokens"] = torch.where(data["mask"].bool(), data["tokens"], torch.full_like(data["tokens"], 5))
    assert (data["tokens"] != memory.data["tokens"]).any()
    assert_close(_ppo_loss(agent, data, tiny_cfg), before)


def test_changing_tokens_after_eos_with_consistent_old_logprobs(tiny_cfg, tiny_policy, tiny_reward_model):
    """The same change when the rollout's old logprobs and values are re-scored on the changed
    tokens (as if they had been sampled that way): the loss on real tokens does not move, because
    the decoder is causal and masked positions are dropped."""
    agent, _, _, memory, _ = _rollout(tiny_policy, tiny_reward_model, tiny_cfg)
    data = dict(memory.data)
    before = _ppo_loss(agent, data, tiny_cfg)
    data["tokens"] = torch.where(data["mask"].bool(), data["tokens"], torch.full_like(data["tokens"], 5))
    with torch.no_grad():
        data["old_logprobs"], _, data["old_values"] = agent(data["src"], data["tokens"], tiny_cfg.ppo.temperature)
    assert_close(_ppo_loss(agent, data, tiny_cfg), before)


# ------------------------------------------------------------------ where rewards land


def test_score_lands_on_last_real_token():
    """With kl_beta = 0 the only reward of a row is its score, at index length-1 (found by a Python
    loop over the mask), not in the last column."""
    mask = _mask(dtype=torch.float32)
    scores = torch.tensor([1.0, -2.0, 3.0, 0.5, -0.25, 4.0])
    logprobs = torch.randn(len(LENGTHS), T)
    rewards = kl_penalty_rewards(logprobs, logprobs + 1.0, scores, mask, kl_beta=0.0)
    expected = torch.zeros(len(LENGTHS), T)
    for b, row in enumerate(mask.tolist()):
        last = max(t for t, m in enumerate(row) if m == 1)
        expected[b, last] = scores[b]
    assert_close(rewards, expected, rtol=0, atol=0)
    assert rewards[0, -1] == 0 and rewards[0, 0] == 1.0


def test_kl_penalty_rewards_formula():
    """rewards = -beta (logp - logp_ref) on real tokens plus the score on the last one, 0 after."""
    g = torch.Generator().manual_seed(5)
    mask = _mask(dtype=torch.float32)
    lp, ref = torch.randn(len(LENGTHS), T, generator=g), torch.randn(len(LENGTHS), T, generator=g)
    scores = torch.randn(len(LENGTHS), generator=g)
    rewards = kl_penalty_rewards(lp, ref, scores, mask, kl_beta=0.25)
    for b, n in enumerate(LENGTHS):
        for t in range(T):
            want = -0.25 * (lp[b, t].item() - ref[b, t].item()) if t < n else 0.0
            want += scores[b].item() if t == n - 1 else 0.0
            assert rewards[b, t].item() == pytest.approx(want, abs=1e-6)


def test_rollout_returns_carry_the_score_from_eos(tiny_cfg, tiny_policy, tiny_reward_model):
    """In collect_rollouts with the reference equal to the policy and a zero value head, the KL
    rewards vanish, so the GAE return at real token t is score * (gamma*lam)^(L-1-t) with the
    reward model's score recomputed separately: the score sits on the EOS token."""
    agent, _, src, memory, _ = _rollout(tiny_policy, tiny_reward_model, tiny_cfg)
    d = memory.data
    scores = tiny_reward_model.score(src, d["tokens"], d["mask"])
    decay = tiny_cfg.ppo.gamma * tiny_cfg.ppo.lam
    expected = torch.zeros_like(d["returns"])
    for b, n in enumerate(d["mask"].sum(1).long().tolist()):
        for t in range(n):
            expected[b, t] = scores[b] * decay ** (n - 1 - t)
    assert (d["old_values"] == 0).all()
    assert_close(d["returns"], expected, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------- ratio is exactly 1 at first


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_minibatch_ratio_is_exactly_one(tiny_cfg, tiny_policy, tiny_reward_model, temperature):
    """Sampling and re-scoring use the same temperature and dropout is off, so on the first
    minibatch of the first epoch the policy has not moved: ratio_max_dev, approx_kl and clipfrac
    are exactly 0.0. Later minibatches (after an optimizer step) do move, so the stats are live."""
    cfg = tiny_cfg.replace(ppo={"temperature": temperature, "epochs": 1, "lr": 1e-3})
    agent, _, _, memory, _ = _rollout(tiny_policy, tiny_reward_model, cfg)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    stats = ppo_update(agent, optimizer, memory, cfg.ppo, torch.Generator().manual_seed(1))
    first = stats[0]
    assert first["ratio_max_dev"] == 0.0
    assert first["approx_kl"] == 0.0
    assert first["clipfrac"] == 0.0
    assert len(stats) == cfg.ppo.minibatches
    assert stats[-1]["ratio_max_dev"] > 0.0


# --------------------------------------------------------------- KL to the same model is 0


def test_kl_penalty_zero_when_reference_is_policy(tiny_cfg, tiny_policy):
    """With reference = deepcopy(policy), both score the same tokens identically, so the rewards are
    the score on the last real token and 0 everywhere else."""
    src = encode_numbers([10, 14, 17, 20, 12, 19])
    out = tiny_policy.generate(src, tiny_cfg.task.max_target_len, generator=torch.Generator().manual_seed(2))
    logprobs, _, _ = tiny_policy.score_tokens(src, out.tokens)
    ref_logprobs, _, _ = copy.deepcopy(tiny_policy).score_tokens(src, out.tokens)
    scores = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.5, -0.7])
    rewards = kl_penalty_rewards(logprobs, ref_logprobs, scores, out.mask, kl_beta=0.5)
    expected = torch.zeros_like(rewards)
    for b, n in enumerate(out.mask.sum(1).long().tolist()):
        expected[b, n - 1] = scores[b]
    assert_close(rewards, expected, rtol=0, atol=0)


def test_collect_rollouts_kl_zero_with_identical_reference(tiny_cfg, tiny_policy, tiny_reward_model):
    """collect_rollouts against a deep copy of the agent's own policy reports kl == 0 and kl_k3 == 0;
    a perturbed reference reports kl > 0 (so the statistic is live)."""
    _, _, _, _, stats = _rollout(tiny_policy, tiny_reward_model, tiny_cfg)
    assert stats["kl"] == 0.0 and stats["kl_k3"] == 0.0
    _, _, stats = _rollout_against_perturbed_reference(tiny_cfg, tiny_policy, tiny_reward_model, kl_beta=0.1)
    assert stats["kl"] > 0 and stats["kl_k3"] > 0


def _rollout_against_perturbed_reference(cfg, policy, reward_model, kl_beta):
    """(reference, memory, stats) of one rollout of a copy of ``policy`` against a reference whose output
    bias was nudged at random, so the two policies differ."""
    agent = PPOAgent(copy.deepcopy(policy))
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        reference.lm_head.bias.add_(torch.randn_like(reference.lm_head.bias))
    src = encode_numbers(sample_numbers(32, cfg.task, random.Random(0)))
    generator = torch.Generator().manual_seed(0)
    memory, stats = collect_rollouts(agent, reference, reward_model, src, cfg, kl_beta, generator)
    return reference, memory, stats


# -------------------------------------------------------------------- small pieces


def test_whiten_over_real_tokens():
    """whiten: mean 0 and (population) std 1 over real tokens, as torch computes them on the
    selected entries; exactly 0 at masked positions."""
    g = torch.Generator().manual_seed(6)
    mask = _mask(dtype=torch.float64)
    x = 5 + 3 * torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) + 100 * (1 - mask)
    w = whiten(x, mask)
    real = mask.bool()
    assert_close(w[real].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-7, rtol=0)
    assert_close(w[real].std(unbiased=False), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (w[~real] == 0).all()
    assert_close(w[real], (x[real] - x[real].mean()) / x[real].std(unbiased=False))


def test_explained_variance_matches_numpy():
    """explained_variance = 1 - Var(R - V) / Var(R) over real tokens, with numpy's np.var; 1 for a
    perfect critic, 0 for a critic that predicts the mean."""
    g = torch.Generator().manual_seed(7)
    mask = _mask(dtype=torch.float64)
    ret = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64)
    val = ret + 0.5 * torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64) + 50 * (1 - mask)
    real = mask.bool().numpy()
    r, v = ret.numpy()[real], val.numpy()[real]
    assert explained_variance(val, ret, mask) == pytest.approx(1 - np.var(r - v) / np.var(r), abs=1e-9)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    mean_critic = torch.full_like(ret, float(r.mean()))
    assert explained_variance(mean_critic, ret, mask) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kl", [0.0, 0.75, 1.5, 1.6, 15.0])
def test_adaptive_kl_controller_formula(kl):
    """Three updates of AdaptiveKLController equal e = clip(KL/target - 1, -0.2, 0.2),
    beta *= 1 + e * n / horizon written out; below target beta shrinks, at target it stays, far
    above it grows by at most 20% * n / horizon per update."""
    target, horizon, n = 1.5, 2000, 128
    ctl = AdaptiveKLController(0.1, target, horizon)
    beta = 0.1
    for _ in range(3):
        e = min(max(kl / target - 1, -0.2), 0.2)
        beta *= 1 + e * n / horizon
        assert ctl.update(kl, n) == pytest.approx(beta, rel=1e-12)
    assert ctl.value == pytest.approx(beta, rel=1e-12)
    if kl < target:
        assert beta < 0.1
    elif kl == target:
        assert beta == 0.1
    else:
        assert 0.1 < beta <= 0.1 * (1 + 0.2 * n / horizon) ** 3 + 1e-15


def test_ppo_memory_minibatches_cover_every_episode_once():
    """Each call to minibatches yields the requested number of minibatches whose episodes, taken
    together, are every stored episode exactly once (a fresh shuffle per call), with all tensors
    of an episode kept together."""
    memory = PPOMemory()
    ids = torch.arange(10)
    memory.store(ids=ids, twice=(ids * 2).float().unsqueeze(1).repeat(1, 3))
    g = torch.Generator().manual_seed(0)
    orders = []
    for n in (1, 3, 4, 10):
        batches = list(memory.minibatches(n, g))
        assert len(batches) == n
        seen = torch.cat([b["ids"] for b in batches])
        assert sorted(seen.tolist()) == list(range(10))
        sizes = [len(b["ids"]) for b in batches]
        assert max(sizes) - min(sizes) <= 1
        for b in batches:
            assert_close(b["twice"][:, 0], b["ids"].float() * 2)
        orders.append(seen.tolist())
    assert any(o != list(range(10)) for o in orders)


@pytest.mark.parametrize("bad", [0, -1, 11])
def test_ppo_memory_rejects_bad_minibatch_count(bad):
    """A minibatch count outside [1, episodes] is a ValueError naming n_minibatches."""
    memory = PPOMemory()
    memory.store(ids=torch.arange(10))
    with pytest.raises(ValueError, match="^n_minibatches:"):
        list(memory.minibatches(bad))


def test_ppo_memory_rejects_mismatched_episode_counts():
    """Storing a tensor with a different number of episodes is a ValueError naming it."""
    memory = PPOMemory()
    memory.store(ids=torch.arange(10))
    with pytest.raises(ValueError, match="^values:"):
        memory.store(values=torch.zeros(9))


# ------------------------------------------------------------------------ end to end


def test_finetune_ppo_tiny_run_history(tiny_cfg, tiny_policy, tiny_reward_model):
    """Three tiny PPO iterations return one finite row per iteration with every documented key;
    kl_k3 >= 0; approx_kl >= 0; and kl_beta follows the adaptive controller's formula from the
    previous row's kl."""
    cfg = tiny_cfg.replace(ppo={"iterations": 3})
    agent = PPOAgent(copy.deepcopy(tiny_policy))
    reference = copy.deepcopy(tiny_policy)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    calls = []
    history = finetune_ppo(
        agent, reference, tiny_reward_model, cfg, progress=False, callback=lambda h: calls.append(len(h))
    )
    keys = {
        "proxy_reward",
        "gold_reward",
        "valid_fraction",
        "kl",
        "kl_k3",
        "entropy",
        "approx_kl",
        "clipfrac",
        "value_loss",
        "explained_variance",
        "kl_beta",
    }
    assert len(history) == 3 and calls == [1, 2, 3]
    for row in history:
        assert keys <= set(row)
        assert all(math.isfinite(row[k]) for k in keys), row
        assert row["kl_k3"] >= 0 and row["approx_kl"] >= 0 and 0 <= row["clipfrac"] <= 1
        assert 0 <= row["valid_fraction"] <= 1
    p = cfg.ppo
    for prev, row in itertools.pairwise(history):
        e = min(max(prev["kl"] / p.kl_target - 1, -0.2), 0.2)
        assert row["kl_beta"] == pytest.approx(prev["kl_beta"] * (1 + e * p.rollout_batch / p.kl_horizon), rel=1e-9)
    assert history[0]["kl"] == 0.0  # the first rollout is sampled before any update
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
    assert all(not p.requires_grad for p in reference.parameters())


def test_collect_rollouts_charges_the_kl_penalty_in_the_rewards(tiny_cfg, tiny_policy, tiny_reward_model):
    """The rewards collect_rollouts stores are -kl_beta * (log p - log p_ref) on every real token plus the
    reward model's score on the last one, rebuilt here from the policy, the reference and the reward model:
    a rollout that silently dropped the penalty (or used another kl_beta) would differ."""
    reference, memory, _ = _rollout_against_perturbed_reference(tiny_cfg, tiny_policy, tiny_reward_model, kl_beta=0.3)
    d = memory.data
    with torch.no_grad():
        logp, _, _ = tiny_policy.score_tokens(d["src"], d["tokens"], tiny_cfg.ppo.temperature)
        ref_logp, _, _ = reference.score_tokens(d["src"], d["tokens"], tiny_cfg.ppo.temperature)
        scores = tiny_reward_model.score(d["src"], d["tokens"], d["mask"])
    last = d["mask"].sum(1).long() - 1
    expected = -0.3 * (logp - ref_logp) * d["mask"]
    expected[torch.arange(len(last)), last] += scores
    assert_close(d["rewards"], expected, rtol=1e-5, atol=1e-6)
    score_only = torch.zeros_like(expected).index_put_((torch.arange(len(last)), last), scores)
    assert (expected - score_only).abs().max() > 1e-3  # the penalty is really there to be dropped
