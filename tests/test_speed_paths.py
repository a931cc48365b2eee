"""The fast paths (torch's fused attention, fused Adam, foreach gradient clipping) compute what the
from-scratch reference paths compute, up to float rounding, and training stays bit-reproducible."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
from torch.testing import assert_close

from ppo_lesson.model import MultiHeadAttention, Seq2SeqTransformer, scaled_dot_product_attention
from ppo_lesson.pretrain import pretrain, teacher_forcing_loss
from ppo_lesson.task import PAD_ID, encode_numbers, supervised_batch

NUMBERS = [10, 13, 17, 20, 11, 19, 15, 12]


def _answers(model, src):
    out = model.generate(src, 12, generator=torch.Generator().manual_seed(3))
    return out.tokens


def _forward_and_grads(model, src, tokens):
    model.zero_grad(set_to_none=True)
    logprobs, entropy, hidden = model.score_tokens(src, tokens)
    (logprobs.sum() + entropy.sum() + hidden.square().mean()).backward()
    return logprobs.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_fused_attention_matches_scratch_forward_and_backward(tiny_cfg, monkeypatch):
    """Re-scoring padded sources and answers gives the same logprobs, entropies and gradients with
    torch's fused attention as with the from-scratch one."""
    model = Seq2SeqTransformer(tiny_cfg.model)
    src = torch.nn.functional.pad(encode_numbers(NUMBERS), (0, 2), value=PAD_ID)  # exercises the padding mask
    tokens = _answers(model.eval(), src)
    fused = _forward_and_grads(model, src, tokens)
    monkeypatch.setattr(MultiHeadAttention, "fused", False)
    scratch = _forward_and_grads(model, src, tokens)
    assert_close(fused[0], scratch[0], rtol=1e-5, atol=1e-5)
    assert_close(fused[1], scratch[1], rtol=1e-5, atol=1e-5)
    assert fused[2].keys() == scratch[2].keys()
    for name in fused[2]:
        assert_close(fused[2][name], scratch[2][name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_attention_generates_what_scratch_generates(tiny_policy, monkeypatch):
    """Sampling with the KV cache picks the same tokens with close logprobs on both paths."""
    src = encode_numbers(NUMBERS)
    fused = tiny_policy.generate(src, 12, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(MultiHeadAttention, "fused", False)
    scratch = tiny_policy.generate(src, 12, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fused.tokens, scratch.tokens)
    assert_close(fused.logprobs, scratch.logprobs, rtol=1e-5, atol=1e-5)


def test_keep_weights_uses_scratch_attention_with_the_same_output(tiny_policy):
    """Asking for attention maps switches to the from-scratch path; its output equals the fused one."""
    src = encode_numbers(NUMBERS)
    tokens = _answers(tiny_policy, src)
    with torch.no_grad():
        fused = tiny_policy(src, tokens)
        attention = tiny_policy.decoder[0].cross_attn
        attention.keep_weights = True
        try:
            kept = tiny_policy(src, tokens)
        finally:
            attention.keep_weights = False
    weights = attention.last_weights
    assert weights is not None and weights.shape == (len(NUMBERS), attention.n_heads, tokens.size(1), src.size(1))
    assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert_close(kept, fused, rtol=1e-5, atol=1e-4)


def test_module_attention_equals_from_scratch_function():
    """MultiHeadAttention's fused path equals projecting by hand and calling the lesson's function."""
    g = torch.Generator().manual_seed(0)
    attention = MultiHeadAttention(16, 4)
    x, memory = torch.randn(3, 5, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 4:] = False
    q = attention.split_heads(attention.q_proj(x))
    k, v = attention.project_kv(memory)
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    by_hand = attention.out_proj(out.transpose(1, 2).reshape(3, 5, 16))
    assert_close(attention(x, memory, mask=mask), by_hand, rtol=1e-5, atol=1e-6)


def test_fused_adam_and_foreach_clipping_match_the_per_parameter_versions():
    """Five clipped Adam steps on the same gradients give the same weights (to float rounding)."""
    g = torch.Generator().manual_seed(1)
    base = Seq2SeqTransformer()
    grads = [[torch.randn(p.shape, generator=g) for p in base.parameters()] for _ in range(5)]
    results = []
    for fast in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-5, fused=fast)
        norms = []
        for step_grads in grads:
            for p, grad in zip(model.parameters(), step_grads):
                p.grad = grad.clone()
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=fast))
            opt.step()
        results.append((torch.stack(norms), [p.detach().clone() for p in model.parameters()]))
    assert_close(results[0][0], results[1][0])
    for slow_p, fast_p in zip(results[0][1], results[1][1]):
        assert_close(fast_p, slow_p, rtol=1e-5, atol=1e-6)


def test_pretraining_is_bit_reproducible(tiny_cfg):
    """Two pretraining runs from the same seed give identical losses and weights."""
    cfg = tiny_cfg.replace(pretrain=dataclasses.replace(tiny_cfg.pretrain, steps=20, warmup_steps=5))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Seq2SeqTransformer(cfg.model)
        history = pretrain(model, cfg, progress=False)
        runs.append(([row["loss"] for row in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name


def test_teacher_forcing_loss_same_on_both_attention_paths(tiny_cfg, monkeypatch):
    """The pretraining loss is the same number with fused and with from-scratch attention."""
    src, tgt = supervised_batch(16, tiny_cfg.task, random.Random(0))
    model = Seq2SeqTransformer(tiny_cfg.model)
    fused = teacher_forcing_loss(model, src, tgt)
    monkeypatch.setattr(MultiHeadAttention, "fused", False)
    assert_close(fused, teacher_forcing_loss(model, src, tgt), rtol=1e-6, atol=1e-6)


def test_matmul_flop_count_matches_torch_flop_counter(tiny_cfg, monkeypatch):
    """bench.matmul_shapes counts exactly the products torch's FlopCounterMode sees in a forward pass
    (from-scratch attention, whose products the counter can see), with and without the value head."""
    from torch.utils.flop_counter import FlopCounterMode

    from ppo_lesson.bench import matmul_flops, matmul_shapes
    from ppo_lesson.finetune import PPOAgent

    monkeypatch.setattr(MultiHeadAttention, "fused", False)
    model = Seq2SeqTransformer(tiny_cfg.model).eval()
    src, tgt = supervised_batch(6, tiny_cfg.task, random.Random(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(src, tgt)
    assert matmul_flops(matmul_shapes(tiny_cfg.model, 6, src.size(1), tgt.size(1))) == counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        PPOAgent(model)(src, tgt)
    shapes = matmul_shapes(tiny_cfg.model, 6, src.size(1), tgt.size(1), value_head=True)
    assert matmul_flops(shapes) == counter.get_total_flops()


def test_matmul_flops_by_hand():
    """One (2, 3) x (3, 4) product is 2 * 3 * 4 multiply-adds; ten of them, ten times that."""
    from ppo_lesson.bench import matmul_flops

    assert matmul_flops([(1, 2, 3, 4)]) == 48
    assert matmul_flops([(10, 2, 3, 4), (1, 1, 1, 1)]) == 482


def test_ppo_iterations_are_bit_reproducible(tiny_cfg, tiny_policy, tiny_reward_model):
    """Two PPO runs from the same seed (fused Adam, foreach clipping, fused attention) agree exactly."""
    from ppo_lesson.finetune import PPOAgent, PPOTrainer

    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        trainer = PPOTrainer(
            PPOAgent(copy.deepcopy(tiny_policy)), copy.deepcopy(tiny_policy), copy.deepcopy(tiny_reward_model), tiny_cfg
        )
        rows = [trainer.iteration() for _ in range(2)]
        runs.append(([{k: v for k, v in row.items() if k != "seconds"} for row in rows], trainer.agent.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name


def test_distance_to_limit_on_cpu_and_not_elsewhere():
    """The achieved rate, the plain-matmul rate and their ratio agree; no figures off the CPU."""
    from ppo_lesson.bench import distance_to_limit, matmul_flops

    shapes = [(1, 64, 32, 32), (8, 4, 8, 4)]
    flops = 3 * matmul_flops(shapes)
    limit = distance_to_limit(flops, 0.5, shapes, lambda: 0.2, repeats=1)
    assert limit["gflop"] == flops / 1e9 and limit["achieved_gflops"] == flops / 0.5 / 1e9
    assert limit["matmul_gflops"] > 0
    assert limit["fraction_of_limit"] == pytest.approx(limit["achieved_gflops"] / limit["matmul_gflops"])
    assert limit["share_outside_matmul"] == pytest.approx(0.6)
    assert distance_to_limit(flops, 0.5, shapes, lambda: 0.2, device="cuda") is None


def test_unpadded_sources_skip_the_mask_and_get_what_an_all_true_mask_gives(tiny_cfg, monkeypatch):
    """A batch whose sources hold no PAD gets no source mask (None), and its logits and gradients are those
    of the same model forced to use the all-True padding mask; a batch with padding still gets its mask."""
    from ppo_lesson import model as model_module

    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny_cfg.model)
    src = encode_numbers(NUMBERS)  # all two digits: no padding
    assert not (src == PAD_ID).any() and model.encode(src)[1] is None
    padded = encode_numbers([7, 12])
    assert model.encode(padded)[1].tolist() == [[[[True, True, False]]], [[[True, True, True]]]]

    tokens = _answers(model, src)
    fast = _forward_and_grads(model, src, tokens)
    real_padding_mask = model_module.padding_mask

    def encode_with_mask(self, source):
        x = self.embed_tokens(source)
        mask = real_padding_mask(source)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    monkeypatch.setattr(Seq2SeqTransformer, "encode", encode_with_mask)
    masked = _forward_and_grads(model, src, tokens)
    assert_close(fast[0], masked[0], rtol=0, atol=0)
    assert_close(fast[1], masked[1], rtol=0, atol=0)
    for name, grad in fast[2].items():
        assert_close(grad, masked[2][name], rtol=1e-6, atol=1e-7, msg=name)
