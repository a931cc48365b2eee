"""The reward model: Bradley-Terry loss, what the score reads, normalization, pair accuracy."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch.testing import assert_close

from ppo_lesson.reward import answer_mask, bradley_terry_loss, normalize_reward_model, pair_accuracy
from ppo_lesson.task import EOS_ID, PAD_ID, PLUS_ID, encode, encode_numbers, pad_batch, sample_numbers


def test_bradley_terry_loss_matches_python_formula():
    """bradley_terry_loss = mean of -log(sigmoid(rc - rr)), with sigmoid written via math.exp and
    the log via math.log, including large margins of both signs."""
    rc = [0.3, -1.2, 4.0, 0.0, 10.0, -7.5]
    rr = [0.1, 0.8, -2.0, 0.0, -3.0, 2.5]
    expected = sum(-math.log(1.0 / (1.0 + math.exp(-(c - r)))) for c, r in zip(rc, rr, strict=True)) / len(rc)
    loss = bradley_terry_loss(torch.tensor(rc, dtype=torch.float64), torch.tensor(rr, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_bradley_terry_gradient_by_hand():
    """d loss / d rc = -(1 - sigmoid(d)) / n and d loss / d rr = +(1 - sigmoid(d)) / n, d = rc - rr,
    computed by hand with math.exp."""
    rc = torch.tensor([0.3, -1.2, 4.0, 0.0], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.1, 0.8, -2.0, 1.0], dtype=torch.float64, requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    n = 4
    by_hand = [-(1 - 1 / (1 + math.exp(-(c - r)))) / n for c, r in zip(rc.tolist(), rr.tolist(), strict=True)]
    assert_close(rc.grad, torch.tensor(by_hand, dtype=torch.float64))
    assert_close(rr.grad, -torch.tensor(by_hand, dtype=torch.float64))


def _answers(policy, numbers, seed=0, temperature=1.0):
    src = encode_numbers(numbers)
    out = policy.generate(src, 8, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    return src, out


def test_score_ignores_tokens_after_eos(tiny_policy, tiny_reward_model):
    """Replacing every masked token (after EOS) by random digits or '+' leaves the reward model's
    raw and normalized scores unchanged; changing a real token does change them."""
    src, out = _answers(tiny_policy, [10, 12, 15, 18, 20, 11, 13, 19] * 2, seed=1)
    assert (out.mask == 0).any()
    raw = tiny_reward_model(src, out.tokens, out.mask)
    garbage = torch.randint(3, 14, out.tokens.shape, generator=torch.Generator().manual_seed(2))
    changed = torch.where(out.mask.bool(), out.tokens, garbage)
    assert not torch.equal(changed, out.tokens)
    assert_close(tiny_reward_model(src, changed, out.mask), raw, atol=1e-5, rtol=1e-5)
    assert_close(tiny_reward_model.score(src, changed, out.mask), tiny_reward_model.score(src, out.tokens, out.mask))
    first = out.tokens.clone()
    first[:, 0] = torch.where(first[:, 0] == PLUS_ID, torch.tensor(12), torch.tensor(PLUS_ID))
    lengths = out.mask.sum(1)
    moved = (tiny_reward_model(src, first, out.mask) - raw).abs()
    assert (moved[lengths > 1] > 1e-6).all()


def test_score_is_normalized_raw_score(tiny_policy, tiny_reward_model):
    """score = (raw - score_mean) / score_std, recomputed from the buffers."""
    src, out = _answers(tiny_policy, [10, 14, 17, 20])
    rm = tiny_reward_model
    expected = (rm(src, out.tokens, out.mask) - rm.score_mean) / rm.score_std
    assert_close(rm.score(src, out.tokens, out.mask), expected)
    assert rm.score_std.item() != 1.0 or rm.score_mean.item() != 0.0  # the fixture was normalized


def test_score_sees_whether_the_answer_ended(tiny_reward_model):
    """The reward model must be able to tell '9+9' then EOS from the same digits followed by a
    non-EOS last token (a truncated, invalid answer): the two scores must differ."""
    src = encode_numbers([18, 18])
    tokens = pad_batch([encode("9+9"), encode("9+9", add_eos=False) + [PLUS_ID]])
    mask = torch.ones_like(tokens, dtype=torch.float32)
    assert tokens[0, -1] == EOS_ID and tokens[1, -1] == PLUS_ID
    raw = tiny_reward_model(src, tokens, mask)
    assert (raw[0] - raw[1]).abs() > 1e-6


def test_normalize_reward_model_gives_mean_0_std_1(tiny_cfg, tiny_policy, tiny_reward_model):
    """After normalize_reward_model(rm, reference, n=256), the scores of the same reference samples,
    regenerated here with the seeds it documents (seed + 3), have mean 0 and (sample) std 1."""
    rm = copy.deepcopy(tiny_reward_model)
    rm.score_mean.fill_(5.0)
    rm.score_std.fill_(3.0)
    stats = normalize_reward_model(rm, tiny_policy, tiny_cfg, n=256)
    rng = random.Random(tiny_cfg.seed + 3)
    src = encode_numbers(sample_numbers(256, tiny_cfg.task, rng))
    out = tiny_policy.generate(
        src, tiny_cfg.task.max_target_len, generator=torch.Generator().manual_seed(tiny_cfg.seed + 3)
    )
    raw = rm(src, out.tokens, out.mask)
    assert stats["mean"] == pytest.approx(raw.mean().item(), abs=1e-5)
    scores = rm.score(src, out.tokens, out.mask)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-4)


def test_pair_accuracy_matches_hand_count(tiny_policy, tiny_reward_model):
    """pair_accuracy equals the share of pairs with score(chosen) > score(rejected), counted pair by
    pair in a Python loop (batch size 7 so that batching is exercised)."""
    numbers = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20] * 3
    src, a = _answers(tiny_policy, numbers, seed=3)
    _, b = _answers(tiny_policy, numbers, seed=4)
    width = max(a.tokens.size(1), b.tokens.size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.size(1)), value=PAD_ID)  # noqa: E731
    pairs = {"src": src, "chosen": pad(a.tokens), "rejected": pad(b.tokens)}
    right = 0
    for i in range(len(numbers)):
        s = src[i : i + 1]
        c, r = pairs["chosen"][i : i + 1], pairs["rejected"][i : i + 1]
        right += tiny_reward_model(s, c, answer_mask(c)).item() > tiny_reward_model(s, r, answer_mask(r)).item()
    acc = pair_accuracy(tiny_reward_model, pairs, batch_size=7)
    assert acc == pytest.approx(right / len(numbers))
    swapped = {"src": src, "chosen": pairs["rejected"], "rejected": pairs["chosen"]}
    ties = sum(torch.equal(x, y) for x, y in zip(pairs["chosen"], pairs["rejected"], strict=True))
    assert pair_accuracy(tiny_reward_model, swapped, batch_size=7) == pytest.approx(
        1 - acc - ties / len(numbers), abs=1e-9
    )


def test_answer_mask_matches_generate_mask(tiny_policy):
    """answer_mask(tokens) (1 where not PAD) is exactly generate()'s mask, so pair accuracy and PPO
    read the reward model at the same token."""
    _, out = _answers(tiny_policy, [10, 12, 15, 18, 20, 11, 13, 19] * 4, seed=5, temperature=1.5)
    assert torch.equal(answer_mask(out.tokens), out.mask)
