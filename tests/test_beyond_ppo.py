"""GRPO, RLOO, DPO and best-of-n: each answer computed a second way (plain loops, the paper's
formula, exact enumeration, sampling), then tiny end-to-end runs and the ``compare`` command."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from ppo_lesson.best_of_n import BestOfNConfig, best_of_n_curve, best_of_n_distribution, best_of_n_kl, kl_bound
from ppo_lesson.cli import build_parser, main
from ppo_lesson.dpo import DPOConfig, dpo_loss, finetune_dpo, sequence_logprobs
from ppo_lesson.group import k3_kl
from ppo_lesson.grpo import GRPOConfig, finetune_grpo, group_advantages
from ppo_lesson.reward import collect_preferences
from ppo_lesson.rloo import RLOOConfig, finetune_rloo, leave_one_out_baselines, sequence_returns

# ----- group advantages and leave-one-out baselines, against plain Python loops -----


def test_group_advantages_match_a_loop():
    rewards = torch.tensor([1.0, 0.0, 0.5, -1.0, 2.0, 2.0, 2.0, 2.0, 0.3, -0.7, 0.1, 0.9])
    got = group_advantages(rewards, group_size=4, eps=1e-4)
    for start in range(0, 12, 4):
        group = rewards[start : start + 4].tolist()
        mean = sum(group) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # sample std, as documented
        for i, r in enumerate(group):
            assert got[start + i].item() == pytest.approx((r - mean) / (std + 1e-4), abs=1e-5)
    assert torch.equal(got[4:8], torch.zeros(4)), "a group of equal rewards has nothing to learn from"


def test_leave_one_out_baselines_match_a_loop():
    returns = torch.tensor([1.0, 0.0, 0.5, -1.0, 3.0, 1.0, 2.0, 0.0, 4.0])
    got = leave_one_out_baselines(returns, group_size=3)
    for i in range(9):
        others = [returns[j].item() for j in range(9) if j // 3 == i // 3 and j != i]
        assert got[i].item() == pytest.approx(sum(others) / len(others))
    advantages = returns - got
    # r - (sum - r) / (k - 1) = k / (k - 1) * (r - group mean): centred within each group, scaled up
    group_mean = returns.view(3, 3).mean(1, keepdim=True)
    assert torch.allclose(advantages.view(3, 3), 1.5 * (returns.view(3, 3) - group_mean), atol=1e-6)


@pytest.mark.parametrize(
    "rewards, group_size, message",
    [
        (torch.zeros(6), 4, "multiple of group_size=4"),
        (torch.zeros(2, 4), 4, "1-D tensor"),
        (torch.zeros(4), 1, "group_size: expected an integer >= 2"),
    ],
)
def test_group_functions_refuse_groups_that_do_not_fit(rewards, group_size, message):
    for fn in (group_advantages, leave_one_out_baselines):
        with pytest.raises(ValueError, match=message):
            fn(rewards, group_size)


def test_k3_is_zero_on_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    ref = torch.tensor([-1.5, -1.0, -0.5])
    expected = [math.exp(r - p) - 1 - (r - p) for p, r in zip(logp.tolist(), ref.tolist())]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected)
    assert (k3_kl(logp, ref) >= 0).all()


def test_rloo_returns_subtract_the_summed_kl_of_real_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 9.0 sits on padding and must not count
    scores = torch.tensor([2.0, -1.0])
    got = sequence_returns(scores, logp, ref, mask, kl_beta=0.2)
    for b in range(2):
        kl = sum((logp[b, t] - ref[b, t]).item() for t in range(3) if mask[b, t])
        assert got[b].item() == pytest.approx(scores[b].item() - 0.2 * kl)


# ----- DPO: the loss against its formula, and the direction of its gradient -----


def test_dpo_loss_matches_the_formula():
    pw, pl = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rw, rl = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, margin = dpo_loss(pw, pl, rw, rl, beta=0.5)
    by_hand = [0.5 * ((w - a) - (lo - b)) for w, lo, a, b in zip(pw.tolist(), pl.tolist(), rw.tolist(), rl.tolist())]
    assert margin.tolist() == pytest.approx(by_hand)
    nll = [-math.log(1 / (1 + math.exp(-m))) for m in by_hand]
    assert loss.item() == pytest.approx(sum(nll) / 2)
    at_reference, _ = dpo_loss(rw, rl, rw, rl, beta=0.5)
    assert at_reference.item() == pytest.approx(math.log(2)), "the policy equal to the reference is a coin flip"


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    pw = torch.tensor([-3.0, -1.0], requires_grad=True)
    pl = torch.tensor([-2.0, -4.0], requires_grad=True)
    loss, _ = dpo_loss(pw, pl, torch.tensor([-2.5, -1.0]), torch.tensor([-2.5, -3.0]), beta=0.1)
    loss.backward()
    assert (pw.grad < 0).all(), "gradient descent must raise log p(chosen)"
    assert (pl.grad > 0).all(), "gradient descent must lower log p(rejected)"
    assert torch.allclose(pw.grad, -pl.grad)


def test_dpo_loss_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="four 1-D tensors"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0.0)


def test_sequence_logprobs_sum_real_tokens_only(random_model):
    src = torch.tensor([[5, 4, 2], [6, 2, 0]])
    tokens = torch.tensor([[5, 13, 6, 2], [7, 2, 0, 0]])  # second answer: EOS then padding
    logprobs, _, _ = random_model.score_tokens(src, tokens)
    got = sequence_logprobs(random_model, src, tokens)
    assert got.tolist() == pytest.approx([logprobs[0].sum().item(), logprobs[1, :2].sum().item()], abs=1e-5)


# ----- best-of-n: the exact distribution by enumeration, its KL by sampling, the bound -----


def _enumerated_best_of_n(probs, scores, n):
    """Every ordered n-tuple of outcomes, weighted by its probability; ties split evenly among the draws."""
    out = [0.0] * len(probs)
    for draw in itertools.product(range(len(probs)), repeat=n):
        weight = math.prod(probs[k] for k in draw)
        best = max(scores[k] for k in draw)
        winners = [k for k in draw if scores[k] == best]
        for k in winners:
            out[k] += weight / len(winners)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_best_of_n_distribution_matches_enumeration(n):
    probs = [0.1, 0.4, 0.2, 0.3]
    scores = [0.5, -1.0, 0.5, 2.0]  # outcomes 0 and 2 tie
    got = best_of_n_distribution(torch.tensor(probs, dtype=torch.float64), torch.tensor(scores), n)
    assert got.tolist() == pytest.approx(_enumerated_best_of_n(probs, scores, n), abs=1e-12)


def test_best_of_n_kl_by_sampling_and_under_the_bound():
    probs = torch.tensor([0.05, 0.25, 0.1, 0.4, 0.2])
    scores = torch.tensor([3.0, -1.0, 2.0, 0.0, 1.0])
    n, draws = 4, 200_000
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(probs.expand(draws, -1), n, replacement=True, generator=gen)
    kept = samples.gather(1, scores[samples].argmax(1, keepdim=True)).squeeze(1)
    freq = torch.bincount(kept, minlength=5).double() / draws
    monte_carlo = (freq * (freq / probs.double()).log()).sum().item()
    exact = best_of_n_kl(probs, scores, n)
    assert monte_carlo == pytest.approx(exact, abs=0.01)
    assert 0 < exact < kl_bound(n)


def test_kl_bound_is_reached_when_nothing_ties():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    many = 20_000  # a near-continuous policy: many equally likely outcomes, all scored differently
    probs, scores = torch.full((many,), 1 / many), torch.randperm(many).float()
    for n in (2, 8, 64):
        assert best_of_n_kl(probs, scores, n) == pytest.approx(kl_bound(n), abs=0.01)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        kl_bound(0)


# ----- configs validate like the package's -----


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GRPOConfig(group_size=1), "group_size"),
        (lambda: GRPOConfig(kl_coef=-0.1), "kl_coef"),
        (lambda: GRPOConfig(sources_per_iteration=2, group_size=2, minibatches=5), "minibatches"),
        (lambda: RLOOConfig(kl_beta=-1.0), "kl_beta"),
        (lambda: RLOOConfig(lr=0.0), "lr"),
        (lambda: DPOConfig(beta=0.0), "beta"),
        (lambda: DPOConfig(epochs=0), "epochs"),
        (lambda: BestOfNConfig(max_n=48), "max_n: expected a power of two"),
    ],
)
def test_configs_name_the_bad_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ----- tiny end-to-end runs -----


def _finite_rows(history, keys):
    return all(math.isfinite(row[k]) for row in history for k in keys)


@pytest.mark.parametrize("finetune, config", [(finetune_grpo, GRPOConfig), (finetune_rloo, RLOOConfig)])
def test_group_methods_train_on_the_tiny_preset(
    finetune, config, tiny_cfg, tiny_policy, pretrained_run, tiny_reward_model
):
    reference = pretrained_run[0]
    before = [p.detach().clone() for p in reference.parameters()]
    group_cfg = config(iterations=2, sources_per_iteration=4, group_size=4, epochs=2, minibatches=2, lr=1e-3)
    history = finetune(tiny_policy, reference, tiny_reward_model, tiny_cfg, group_cfg, progress=False)
    assert [row["iteration"] for row in history] == [0, 1]
    assert _finite_rows(history, ("gold_reward", "proxy_reward", "kl", "kl_k3", "policy_loss", "approx_kl"))
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5), "the first batch is sampled from the reference itself"
    assert history[1]["kl_k3"] > 0, "one update must move the policy"
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters())), "the reference stays frozen"
    with pytest.raises(ValueError, match="reference"):
        finetune(tiny_policy, tiny_policy, tiny_reward_model, tiny_cfg, group_cfg, progress=False)


def test_dpo_trains_on_the_reward_models_pairs(tiny_cfg, tiny_policy, pretrained_run):
    pairs = collect_preferences(pretrained_run[0], tiny_cfg)
    dpo_cfg = DPOConfig(epochs=1, batch_size=64, lr=1e-3, evaluations_per_epoch=2, eval_samples_per_number=1)
    history = finetune_dpo(tiny_policy, pretrained_run[0], pairs, tiny_cfg, dpo_cfg, progress=False)
    assert history[0]["passes"] == 0 and history[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert history[-1]["passes"] == pytest.approx(1.0)
    assert _finite_rows(history[1:], ("loss", "pair_accuracy", "gold_reward", "kl"))


def test_best_of_n_curve_on_the_tiny_preset(tiny_cfg, tiny_policy, tiny_reward_model):
    rows = best_of_n_curve(tiny_policy, tiny_reward_model, tiny_cfg, BestOfNConfig(max_n=8, samples_per_number=1))
    assert [row["n"] for row in rows] == [1, 2, 4, 8]
    assert rows[0]["kl_estimate"] == 0.0 and rows[0]["kl_bound"] == 0.0
    proxies = [row["proxy_reward"] for row in rows]
    assert proxies == sorted(proxies), "keeping the best of more answers never lowers the proxy on the same samples"
    assert all(row["kl_estimate"] <= row["kl_bound"] + 1e-9 for row in rows)


def test_compare_command_on_the_tiny_preset(tmp_path, pretrained_run, reward_run, monkeypatch):
    monkeypatch.setenv("PPO_LESSON_FIGURES", str(tmp_path / "figures"))
    out = tmp_path / "compare"
    args = ["compare", "--preset", "tiny", "--quick", "--workers", "1", "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert {r["method"] for r in result["rl"]} == {"ppo", "ppo_v0", "grpo", "rloo"}
    assert {r["kind"] for r in result["dpo"] + result["best_of_n"]} == {"dpo", "best_of_n"}
    assert len(result["summary"]["per_seed"]) == 1
    assert sorted(p.name for p in out.glob("07_*.png")) == [
        "07_dpo_best_of_n.png",
        "07_gold_vs_kl.png",
        "07_rl_methods.png",
    ]


def test_compare_options_are_documented():
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command").choices["compare"]
    declared = {s for a in sub._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert declared == {"--preset", "--seeds", "--first-seed", "--quick", "--workers", *COMMON_OPTIONS}
    assert all(a.help for a in sub._actions)


COMMON_OPTIONS = ("--out", "--device", "--threads", "--no-progress")
