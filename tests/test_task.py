"""The toy task: tokenizer, supervised targets, the hidden gold scorer, preference labelling."""

from __future__ import annotations

import collections
import itertools
import random
import re

import pytest
import torch

from ppo_lesson.config import TaskConfig
from ppo_lesson.task import (
    EOS_ID,
    PAD_ID,
    SYMBOLS,
    decode,
    encode,
    encode_numbers,
    feasible_terms,
    gold_score,
    gold_scores,
    min_terms,
    pad_batch,
    preference_pairs,
    sample_digits,
    sample_target,
    supervised_batch,
)


def _reference_gold(n: int, answer: str, max_terms: int) -> float:
    """The gold rule written a second way: a regex for the shape, brute force for the fewest terms."""
    if not re.fullmatch(r"[1-9](\+[1-9])*", answer):
        return -1.0
    digits = [int(d) for d in answer.split("+")]
    if sum(digits) != n or len(digits) > max_terms:
        return -1.0
    fewest = next(k for k in itertools.count(1) if 9 * k >= n)
    return 0.5 ** (len(digits) - fewest)


def _tokens_and_mask(answers: list[str], width: int = 9):
    """Tokens as generate() returns them (EOS then PAD) and the mask (1 up to and including EOS)."""
    tokens = pad_batch([encode(a) for a in answers], width)
    mask = torch.tensor([[1.0] * (len(a) + 1) + [0.0] * (width - len(a) - 1) for a in answers])
    return tokens, mask


def test_encode_decode_round_trip():
    """decode(encode(s)) == s for random strings over the vocabulary; encode appends one EOS, and
    decode stops at the first EOS and skips PAD."""
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(0, 10)))
        ids = encode(text)
        assert len(ids) == len(text) + 1 and ids[-1] == EOS_ID
        assert encode(text, add_eos=False) == ids[:-1]
        assert decode(ids) == text
        assert decode(ids + [PAD_ID, PAD_ID]) == text
        assert decode(torch.tensor(ids + encode("123"))) == text


@pytest.mark.parametrize("text, bad", [("12a", "a"), ("9 + 9", " "), ("9-1", "-"), ("<eos>", "<")])
def test_encode_unknown_symbol_names_text_and_symbol(text, bad):
    """An unknown character raises a ValueError naming the argument ``text`` and the symbol."""
    with pytest.raises(ValueError, match="^text:") as info:
        encode(text)
    assert repr(bad) in str(info.value)


def test_min_and_feasible_terms_by_brute_force():
    """min_terms(n) and feasible_terms(n) equal a brute-force search over all tuples of digits."""
    cfg = TaskConfig(min_number=2, max_number=20, max_terms=4)
    for n in range(2, 21):
        possible = {k for k in range(1, 5) if any(sum(d) == n for d in itertools.product(range(1, 10), repeat=k))}
        assert set(feasible_terms(n, cfg)) == possible
        assert min_terms(n) == min(possible)


def test_sample_target_always_valid(tiny_cfg):
    """Every supervised target is a well-formed sum of digits 1..9 adding up to n, with a number of
    terms inside feasible_terms; and over many draws every feasible count turns up."""
    cfg = tiny_cfg.task
    rng = random.Random(0)
    for n in range(cfg.min_number, cfg.max_number + 1):
        seen = set()
        for _ in range(60):
            answer = sample_target(n, cfg, rng)
            assert re.fullmatch(r"[1-9](\+[1-9])*", answer), answer
            digits = [int(d) for d in answer.split("+")]
            assert sum(digits) == n
            assert len(digits) in feasible_terms(n, cfg)
            assert _reference_gold(n, answer, cfg.max_terms) > 0
            seen.add(len(digits))
        assert seen == set(feasible_terms(n, cfg))


def _answer_statistics(answers: list[list[int]]) -> collections.Counter:
    """Share of answers with each number of terms, and with each digit at each position."""
    counts = collections.Counter()
    for digits in answers:
        counts["terms", len(digits)] += 1 / len(answers)
        counts.update({(position, d): 1 / len(answers) for position, d in enumerate(digits)})
    return counts


@pytest.mark.parametrize("n", [10, 27, 45])
@pytest.mark.parametrize("draws_per_round", [64, 3])
def test_sample_digits_has_sample_targets_distribution(n, draws_per_round, monkeypatch):
    """The batched sampler and the one-at-a-time sampler agree: 20,000 answers from each give the same
    shares of term counts and of each digit at each position, to within sampling noise (the largest
    gap is 0.006 to 0.009 at these seeds; the bar is 0.02). With 3 draws per round nearly every answer
    takes several rounds, so the carry-over between rounds is checked too."""
    monkeypatch.setattr("ppo_lesson.task.DRAWS_PER_ROUND", draws_per_round)
    cfg, size = TaskConfig(), 20_000
    batched = sample_digits(torch.full((size,), n), cfg, torch.Generator().manual_seed(0)).tolist()
    batched = [[d for d in row if d] for row in batched]
    rng = random.Random(0)
    one_at_a_time = [[int(d) for d in sample_target(n, cfg, rng).split("+")] for _ in range(size)]
    assert all(sum(digits) == n and all(1 <= d <= 9 for d in digits) for digits in batched)
    assert {len(digits) for digits in batched} == set(feasible_terms(n, cfg))
    ours, theirs = _answer_statistics(batched), _answer_statistics(one_at_a_time)
    assert max(abs(ours[key] - theirs[key]) for key in ours.keys() | theirs.keys()) < 0.02


def test_supervised_batch_tokens(tiny_cfg):
    """Every target row is a valid sum of its source number, written d+d+...+d then EOS, then padding;
    the batch is as wide as its longest answer, and the same rng state gives the same batch."""
    cfg = tiny_cfg.task
    src, tgt = supervised_batch(500, cfg, random.Random(3))
    for n, row in zip([int(decode(s)) for s in src], tgt.tolist()):
        text = decode(row)
        assert _reference_gold(n, text, cfg.max_terms) > 0
        assert row[: len(text) + 1] == encode(text) and set(row[len(text) + 1 :]) <= {PAD_ID}
    assert tgt.size(1) == max(len(decode(row)) + 1 for row in tgt.tolist())
    again = supervised_batch(500, cfg, random.Random(3))
    assert torch.equal(src, again[0]) and torch.equal(tgt, again[1])


def test_sample_digits_refuses_numbers_without_an_answer():
    with pytest.raises(ValueError, match="numbers: expected integers in \\[1, 72\\]"):
        sample_digits(torch.tensor([10, 73]), TaskConfig(), torch.Generator())


@pytest.mark.parametrize(
    "n, answer, expected",
    [
        (18, "9+9", 1.0),  # the shortest sum
        (18, "9+8+1", 0.5),  # one extra term
        (18, "9+4+4+1", 0.25),  # two extra terms
        (10, "5+5", 1.0),
        (10, "1+9", 1.0),
        (9, "9", 1.0),
        (18, "9+8", -1.0),  # wrong total
        (18, "9++9", -1.0),  # malformed
        (18, "99", -1.0),  # a two-digit term
        (18, "", -1.0),  # empty
        (18, "+9+9", -1.0),
        (18, "9+9+", -1.0),
        (18, "0+9+9", -1.0),  # 0 is not a term
        (12, "1+1+1+1+1+1+1+1+1+1+1+1", -1.0),  # more than max_terms = 8
    ],
)
def test_gold_score_hand_computed(n, answer, expected):
    """gold_score on hand-computed cases (default TaskConfig, max_terms 8), and the regex/brute-force
    reference agrees on each."""
    assert gold_score(n, answer) == expected
    assert _reference_gold(n, answer, 8) == expected


def test_gold_score_matches_reference_on_random_strings():
    """On thousands of random strings over the vocabulary, gold_score equals the reference rule."""
    rng = random.Random(1)
    cfg = TaskConfig(min_number=10, max_number=20, max_terms=4)
    alphabet = "123456789+" * 3 + "0"
    n_valid = 0
    for _ in range(3000):
        n = rng.randint(10, 20)
        answer = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        expected = _reference_gold(n, answer, cfg.max_terms)
        n_valid += expected > 0
        assert gold_score(n, answer, cfg) == expected, (n, answer)
    assert n_valid > 0


def test_gold_scores_needs_eos_inside_the_mask(tiny_cfg):
    """gold_scores over token tensors: a correct answer ending with EOS inside the mask scores 1.0;
    the same digits with no EOS (truncated), or with the EOS outside the mask, score -1."""
    src = encode_numbers([18, 18, 18, 11])
    good_tokens, good_mask = _tokens_and_mask(["9+9", "9+9", "9+9", "2+9"])
    tokens = good_tokens.clone()
    mask = good_mask.clone()
    tokens[1] = pad_batch([encode("9+9", add_eos=False) + encode("9+", add_eos=False)], tokens.size(1))[0]
    mask[1, :5] = 1.0  # five real tokens "9+99+", no EOS
    mask[2, 3] = 0.0  # the EOS of row 2 is outside the mask
    scores = gold_scores(src, tokens, mask, tiny_cfg.task)
    assert scores.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert gold_scores(src, good_tokens, good_mask, tiny_cfg.task).tolist() == [1.0, 1.0, 1.0, 1.0]


POOL = ["9+9", "9+8+1", "9+4+4+1", "9+8", "99", "9+9"]  # gold for 18: 1, .5, .25, -1, -1, 1


def _fake_pairs(n_pairs: int, seed: int):
    rng = random.Random(seed)
    a = [rng.choice(POOL) for _ in range(n_pairs)]
    b = [rng.choice(POOL) for _ in range(n_pairs)]
    src = encode_numbers([18] * n_pairs)
    return src, a, b, _tokens_and_mask(a), _tokens_and_mask(b)


def test_preference_pairs_without_noise(tiny_cfg):
    """Without label noise: exactly the pairs whose gold scores differ are kept (counted with a Python
    loop), the chosen answer always has the higher gold score, and the gold_* fields are the
    recomputed gold scores of the returned token rows."""
    src, a, b, (ta, ma), (tb, mb) = _fake_pairs(500, 0)
    out = preference_pairs(src, ta, ma, tb, mb, tiny_cfg.task)
    expected_kept = sum(
        gold_score(18, x, tiny_cfg.task) != gold_score(18, y, tiny_cfg.task) for x, y in zip(a, b, strict=True)
    )
    assert len(out["src"]) == len(out["chosen"]) == len(out["rejected"]) == expected_kept
    assert 0 < expected_kept < 500
    assert (out["gold_chosen"] > out["gold_rejected"]).all()
    recomputed = [gold_score(18, decode(t), tiny_cfg.task) for t in out["chosen"]]
    assert recomputed == out["gold_chosen"].tolist()
    recomputed = [gold_score(18, decode(t), tiny_cfg.task) for t in out["rejected"]]
    assert recomputed == out["gold_rejected"].tolist()


def test_preference_pairs_label_noise_flip_rate(tiny_cfg):
    """With label_noise p = 0.2 on ~2600 kept pairs, the share of pairs whose chosen answer has the
    lower gold score is p within 4 standard errors (sqrt(p(1-p)/n) ~ 0.008)."""
    src, a, b, (ta, ma), (tb, mb) = _fake_pairs(4000, 1)
    p = 0.2
    out = preference_pairs(src, ta, ma, tb, mb, tiny_cfg.task, label_noise=p, rng=random.Random(5))
    n = len(out["src"])
    flipped = (out["gold_chosen"] < out["gold_rejected"]).float().mean().item()
    assert n > 2000
    assert abs(flipped - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert (out["gold_chosen"] != out["gold_rejected"]).all()  # ties still dropped
