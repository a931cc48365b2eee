"""The exercise checks accept the package's own implementation and reject planted mistakes, each with the
hint that names it. The planted mistakes are written the way a learner would write them, independently of
the variants the checks compute."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ppo_lesson import checks, model, ppo, pretrain, reward
from ppo_lesson.model import shift_right
from ppo_lesson.task import BOS_ID, PAD_ID


def verdict(capsys, check, fn):
    ok = check(fn)
    return ok, capsys.readouterr().out


def assert_rejected_with(capsys, check, fn, hint):
    ok, out = verdict(capsys, check, fn)
    assert ok is False, out
    assert "✗ exercise" in out and "expected" in out, out
    assert f"hint: {hint}" in out, out


# ---- the learners' correct solutions (written independently of the package) ----


def attention(q, k, v, mask=None):
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = torch.where(mask, scores, -math.inf)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def cached_step(attn, h_new, cache, append=True, newest_first=False):
    k, v = attn.project_kv(h_new)
    if append and cache:
        if newest_first:
            k, v = torch.cat([k, cache["k"]], dim=2), torch.cat([v, cache["v"]], dim=2)
        else:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
    cache.update(k=k, v=v)
    return attn(h_new, kv=(k, v))


def gae(rewards, values, mask, gamma, lam, bootstrap_padding=False):
    advantages = torch.zeros_like(rewards)
    for row in range(rewards.size(0)):
        n = int(mask[row].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[row, t + 1] if (t + 1 < n or bootstrap_padding and t + 1 < rewards.size(1)) else 0.0
            running = rewards[row, t] + gamma * next_value - values[row, t] + gamma * lam * running
            advantages[row, t] = running
    return advantages, (advantages + values) * mask


def kl_rewards(logprobs, ref_logprobs, scores, mask, kl_beta, sign=-1.0, last_column=False):
    out = sign * kl_beta * (logprobs - ref_logprobs) * mask
    for row in range(len(scores)):
        n = int(mask[row].sum())
        if n or last_column:
            out[row, -1 if last_column else n - 1] += scores[row]
    return out


CASES = {
    "attention": (
        checks.check_attention,
        model.scaled_dot_product_attention,
        attention,
        [
            (lambda q, k, v, mask=None: attention(q * q.shape[-1] ** 0.5, k, v, mask), "the scores are not scaled"),
            (
                lambda q, k, v, mask=None: attention(q, k, v, None if mask is None else ~mask),
                "the mask is inverted",
            ),
        ],
    ),
    "causal_mask": (
        checks.check_causal_mask,
        model.causal_mask,
        lambda length: torch.arange(length)[:, None] >= torch.arange(length)[None, :],
        [
            (lambda length: torch.arange(length)[:, None] > torch.arange(length)[None, :], "the diagonal is missing"),
            (lambda length: torch.arange(length)[:, None] <= torch.arange(length)[None, :], "the mask is transposed"),
        ],
    ),
    "cached_attention_step": (
        checks.check_cached_attention_step,
        None,
        cached_step,
        [
            (lambda attn, h_new, cache: cached_step(attn, h_new, cache, append=False), "the cache does not grow"),
            (
                lambda attn, h_new, cache: cached_step(attn, h_new, cache, newest_first=True),
                "the newest keys and values go at the end",
            ),
        ],
    ),
    "shift_right": (
        checks.check_shift_right,
        model.shift_right,
        lambda tokens: F.pad(tokens, (1, 0), value=BOS_ID)[:, :-1],
        [
            (lambda tokens: F.pad(tokens, (1, 0), value=BOS_ID), "BOS shift off by one"),
            (
                lambda tokens: torch.cat([torch.full_like(tokens[:, :1], BOS_ID), tokens[:, 1:]], 1),
                "the first token is dropped",
            ),
        ],
    ),
    "teacher_forcing_loss": (
        checks.check_teacher_forcing_loss,
        lambda net, src, tgt: pretrain.teacher_forcing_loss(net, src, tgt),
        None,
        [
            (
                lambda net, src, tgt: F.cross_entropy(net(src, shift_right(tgt)).flatten(0, 1), tgt.flatten()),
                "padding is scored",
            ),
            (
                lambda net, src, tgt: F.cross_entropy(net(src, tgt).flatten(0, 1), tgt.flatten(), ignore_index=PAD_ID),
                "no shift",
            ),
        ],
    ),
    "next_token_probs": (
        checks.check_next_token_probs,
        None,
        lambda logits, temperature, top_k: model.top_k_filter(logits / temperature, top_k).softmax(-1),
        [
            (
                lambda logits, temperature, top_k: model.top_k_filter(logits, top_k).softmax(-1) / temperature,
                "the temperature is applied after the softmax",
            ),
            (
                lambda logits, temperature, top_k: model.top_k_filter(logits * temperature, top_k).softmax(-1),
                "multiplied by the temperature",
            ),
            (
                lambda logits, temperature, top_k: (
                    (logits / temperature)
                    .masked_fill(logits < logits.topk(min(top_k or 99, 14)).values[:, -1:], 0.0)
                    .softmax(-1)
                ),
                "the filtered logits were set to 0",
            ),
        ],
    ),
    "bradley_terry_loss": (
        checks.check_bradley_terry_loss,
        reward.bradley_terry_loss,
        lambda r_chosen, r_rejected: F.softplus(r_rejected - r_chosen).mean(),
        [
            (lambda r_chosen, r_rejected: F.softplus(r_chosen - r_rejected).mean(), "the sign is flipped"),
            (lambda r_chosen, r_rejected: F.softplus(r_rejected - r_chosen).sum(), "sum instead of mean"),
            (
                lambda r_chosen, r_rejected: -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean(),
                "log(sigmoid(x)) underflows",
            ),
        ],
    ),
    "normalized_scores": (
        checks.check_normalized_scores,
        None,
        lambda reference_scores, scores: (scores - reference_scores.mean()) / max(reference_scores.std(), 1e-6),
        [
            (
                lambda reference_scores, scores: (scores - scores.mean()) / scores.std(),
                "normalized with the scores' own statistics",
            ),
            (
                lambda reference_scores, scores: (
                    (scores - reference_scores.mean()) / reference_scores.std(unbiased=False).clamp(min=1e-6)
                ),
                "biased std",
            ),
        ],
    ),
    "pair_accuracy": (
        checks.check_pair_accuracy,
        None,
        lambda r_chosen, r_rejected: sum(float(c > r) for c, r in zip(r_chosen, r_rejected)) / len(r_chosen),
        [
            (lambda r_chosen, r_rejected: (r_chosen >= r_rejected).double().mean(), ">= counts ties as right"),
            (lambda r_chosen, r_rejected: int((r_chosen > r_rejected).sum()), "a count, not a share"),
        ],
    ),
    "clipped_surrogate_loss": (
        checks.check_clipped_surrogate_loss,
        ppo.clipped_surrogate_loss,
        None,
        [
            (
                lambda logprobs, old_logprobs, advantages, mask, clip_eps: (
                    (
                        torch.min(
                            -advantages * (logprobs - old_logprobs).exp(),
                            -advantages * (logprobs - old_logprobs).exp().clamp(1 - clip_eps, 1 + clip_eps),
                        )
                        * mask
                    ).sum()
                    / mask.sum()
                ),
                "min instead of max",
            ),
            (
                lambda logprobs, old_logprobs, advantages, mask, clip_eps: torch.max(
                    -advantages * (logprobs - old_logprobs).exp(),
                    -advantages * (logprobs - old_logprobs).exp().clamp(1 - clip_eps, 1 + clip_eps),
                ).mean(),
                "the mask is forgotten",
            ),
            (
                lambda logprobs, old_logprobs, advantages, mask, clip_eps: (
                    torch.max(
                        -advantages * (logprobs - old_logprobs).exp(),
                        -advantages * (logprobs - old_logprobs).exp().clamp(1 - clip_eps, 1 + clip_eps),
                    )
                    * mask
                ).mean(),
                "normalized over padding",
            ),
        ],
    ),
    "compute_gae": (
        checks.check_compute_gae,
        ppo.compute_gae,
        gae,
        [
            (
                lambda rewards, values, mask, gamma, lam: gae(
                    rewards, values, mask, gamma, lam, bootstrap_padding=True
                ),
                "no zero bootstrap after the last token",
            ),
            (lambda rewards, values, mask, gamma, lam: gae(rewards, values, mask, 1.0, lam), "gamma is ignored"),
            (
                lambda rewards, values, mask, gamma, lam: (gae(rewards, values, mask, gamma, lam)[0],) * 2,
                "the returns are advantages + values",
            ),
        ],
    ),
    "approx_kl": (
        checks.check_approx_kl,
        None,
        lambda logprobs, old_logprobs, mask: (
            (((logprobs - old_logprobs).exp() - 1 - (logprobs - old_logprobs)) * mask).sum().item()
            / max(mask.sum().item(), 1)
        ),
        [
            (
                lambda logprobs, old_logprobs, mask: ((old_logprobs - logprobs) * mask).sum() / mask.sum(),
                "k1",
            ),
            (
                lambda logprobs, old_logprobs, mask: (
                    (((old_logprobs - logprobs).exp() - 1 - (old_logprobs - logprobs)) * mask).sum() / mask.sum()
                ),
                "the log-ratio is flipped",
            ),
        ],
    ),
    "kl_penalty_rewards": (
        checks.check_kl_penalty_rewards,
        ppo.kl_penalty_rewards,
        kl_rewards,
        [
            (
                lambda logprobs, ref_logprobs, scores, mask, kl_beta: kl_rewards(
                    logprobs, ref_logprobs, scores, mask, kl_beta, sign=1.0
                ),
                "the KL sign is flipped",
            ),
            (
                lambda logprobs, ref_logprobs, scores, mask, kl_beta: kl_rewards(
                    logprobs, ref_logprobs, scores, mask, kl_beta, last_column=True
                ),
                "the score lands on the last column",
            ),
        ],
    ),
    "value_loss": (
        checks.check_value_loss,
        ppo.value_loss,
        None,
        [
            (
                lambda values, old_values, returns, mask, value_clip: (
                    0.5
                    * (
                        torch.min(
                            (values - returns) ** 2,
                            (old_values + (values - old_values).clamp(-value_clip, value_clip) - returns) ** 2,
                        )
                        * mask
                    ).sum()
                    / mask.sum()
                ),
                "min instead of max",
            ),
            (
                lambda values, old_values, returns, mask, value_clip: (
                    0.5 * (((values - returns) ** 2) * mask).sum() / mask.sum()
                ),
                "no clipping",
            ),
        ],
    ),
    "adaptive_kl_update": (
        checks.check_adaptive_kl_update,
        None,
        lambda kl_beta, current_kl, target, n_steps, horizon: (
            kl_beta * (1 + max(-0.2, min(0.2, current_kl / target - 1)) * n_steps / horizon)
        ),
        [
            (
                lambda kl_beta, current_kl, target, n_steps, horizon: (
                    kl_beta * (1 + (current_kl / target - 1) * n_steps / horizon)
                ),
                "the error is not clipped",
            ),
            (
                lambda kl_beta, current_kl, target, n_steps, horizon: (
                    kl_beta * (1 + max(-0.2, min(0.2, 1 - current_kl / target)) * n_steps / horizon)
                ),
                "the sign is flipped",
            ),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_accepts_the_package_and_a_learners_correct_version(capsys, name):
    check, package_fn, learner_fn, _ = CASES[name]
    for fn in (package_fn, learner_fn):
        if fn is not None:
            ok, out = verdict(capsys, check, fn)
            assert ok is True, out
            assert out.startswith("✓ exercise"), out


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_rejects_planted_mistakes_with_their_hint(capsys, name):
    check, _, _, mistakes = CASES[name]
    assert len(mistakes) >= 2
    for wrong, hint in mistakes:
        assert_rejected_with(capsys, check, wrong, hint)


def test_every_exercise_of_the_registry_has_a_check():
    assert len(checks.EXERCISES) >= 15
    for name in checks.EXERCISES:
        assert callable(getattr(checks, "check_" + name.removeprefix("my_"))), name
    per_notebook = {}
    for exercise in checks.EXERCISES.values():
        per_notebook[exercise.number[:2]] = per_notebook.get(exercise.number[:2], 0) + 1
    assert all(per_notebook.get(nb, 0) >= 3 for nb in ("01", "02", "03", "04", "05")), per_notebook


def test_an_unsolved_stub_says_which_exercise_and_what_to_write(capsys):
    def my_compute_gae(rewards, values, mask, gamma, lam):
        raise NotImplementedError(checks.todo())

    with pytest.raises(NotImplementedError, match=r"exercise 04\.2: write my_compute_gae: advantages and returns"):
        my_compute_gae(None, None, None, 1.0, 1.0)
    ok, out = verdict(capsys, checks.check_compute_gae, my_compute_gae)
    assert ok is False and "exercise 04.2 is not done yet" in out, out


def test_a_crashing_answer_is_reported_with_its_case(capsys):
    ok, out = verdict(capsys, checks.check_shift_right, lambda tokens: tokens.undefined_method())
    assert ok is False and "case 'two answers, right-padded'" in out and "AttributeError" in out, out


def test_a_failure_shows_expected_got_and_the_largest_difference(capsys):
    ok, out = verdict(capsys, checks.check_causal_mask, lambda length: torch.ones(length, length).tril())
    assert ok is False and "expected dtype torch.bool, got torch.float32" in out, out
    ok, out = verdict(capsys, checks.check_bradley_terry_loss, lambda r_chosen, r_rejected: torch.tensor(0.5))
    assert ok is False and "max abs difference" in out and "expected" in out and "got" in out, out


def test_the_planted_bug_question_explains_every_wrong_answer(capsys):
    assert verdict(capsys, checks.check_planted_bug, lambda: "c")[0] is True
    for letter in "ABD":
        ok, out = verdict(capsys, checks.check_planted_bug, lambda letter=letter: letter)
        assert ok is False and "not this one" in out, out
    ok, out = verdict(capsys, checks.check_planted_bug, lambda: "E")
    assert ok is False and "expected one of A, B, C, D" in out


def test_checks_leave_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_teacher_forcing_loss(CASES["teacher_forcing_loss"][1])
    checks.check_cached_attention_step(cached_step)
    torch.testing.assert_close(torch.rand(3), expected)


NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("0[1-5]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_exercise_cells_carry_valid_nbgrader_metadata(path):
    """Solution cells hold nbgrader's markers and define the exercise's function; every check cell is a
    locked autograded test cell with points that asserts the matching check; grade ids are unique."""
    cells = json.loads(path.read_text())["cells"]
    graded = [c for c in cells if "nbgrader" in c["metadata"]]
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in graded]
    assert len(ids) == len(set(ids)), ids
    solutions = [c for c in graded if c["metadata"]["nbgrader"]["solution"]]
    tests = [c for c in graded if c["metadata"]["nbgrader"]["grade"]]
    defined = []
    for c in solutions:
        meta, source = c["metadata"]["nbgrader"], "".join(c["source"])
        assert meta["schema_version"] == 3 and not meta["grade"] and not meta["locked"], meta
        assert "### BEGIN SOLUTION" in source and "### END SOLUTION" in source, meta["grade_id"]
        defined += re.findall(r"^def (my_\w+)\(", source, flags=re.M)
    expected = sorted(name for name, ex in checks.EXERCISES.items() if ex.number.startswith(path.name[:2]))
    assert sorted(defined) == expected and len(expected) >= 3
    assert len(tests) == len(expected)
    for c in tests:
        meta, source = c["metadata"]["nbgrader"], "".join(c["source"])
        assert meta["schema_version"] == 3 and meta["locked"] and not meta["solution"] and meta["points"] > 0, meta
        assert re.match(r"assert checks\.check_\w+\(my_\w+\)", source), source
        assert "widgets" not in source  # graded cells run without widgets (they hang autograding)
