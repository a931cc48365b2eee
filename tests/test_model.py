"""The Seq2Seq Transformer: attention, the KV cache, padding, sampling and re-scoring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ppo_lesson.model import check_tokens, scaled_dot_product_attention, shift_right
from ppo_lesson.task import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, encode_numbers

NUMBERS = [10, 13, 17, 20, 11, 19, 15, 12]


def _random_mask(shape, generator):
    """A random boolean mask in which every query row keeps at least one key."""
    mask = torch.rand(shape, generator=generator) > 0.5
    mask[..., 0] = True
    return mask


def test_attention_matches_torch_without_mask():
    """Attention from scratch equals torch's fused scaled_dot_product_attention, and its weights
    are softmax(q k^T / sqrt(d)) written out by hand."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    by_hand = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / 8**0.5, dim=-1)
    assert_close(weights, by_hand)


def test_attention_matches_torch_with_bool_mask():
    """With a boolean mask, both follow the convention True = may attend. Checked against torch's
    implementation, and against the opposite convention (which must give a different answer)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = _random_mask((2, 1, 5, 5), g)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    # masked keys get exactly zero weight, the rest sums to one
    assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    # the inverted convention is a different function: the test above can tell them apart
    flipped = mask.clone()
    flipped[..., 1:] = ~flipped[..., 1:]
    assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=flipped))


def test_attention_causal_mask_matches_is_causal():
    """A lower-triangular mask is the same as torch's is_causal=True."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("which", ["tiny_policy", "random_model"])
def test_generate_cached_equals_uncached(which, request):
    """The KV cache is only a speed-up: the same generator seed gives the same tokens, masks and
    (within 1e-5) the same logprobs as recomputing the whole prefix at every step."""
    model = request.getfixturevalue(which)
    src = encode_numbers(NUMBERS)
    a = model.generate(src, 8, generator=torch.Generator().manual_seed(7), use_cache=True)
    b = model.generate(src, 8, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.mask, b.mask)
    assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_teacher_forced_logits_equal_incremental_cached_decoding(tiny_policy):
    """Teacher-forced logits of the whole prefix equal the logits of decoding it one token at a
    time through the decoder layers with a KV cache dict per layer (as generate() does)."""
    model = tiny_policy
    src = encode_numbers(NUMBERS)
    tokens = model.generate(src, 8, generator=torch.Generator().manual_seed(3)).tokens
    tgt_in = shift_right(tokens)
    full = model(src, tgt_in)

    memory, src_mask = model.encode(src)
    memory_kv = model.memory_kv(memory)
    caches = [{} for _ in model.decoder]
    steps = []
    for t in range(tgt_in.size(1)):
        x = model.embed_tokens(tgt_in[:, t : t + 1], offset=t)
        for layer, kv, cache in zip(model.decoder, memory_kv, caches, strict=True):
            x = layer(x, kv, src_mask, None, cache)
        steps.append(model.next_token_logits(model.decoder_norm(x[:, -1])))
        assert caches[0]["k"].size(2) == t + 1  # the cache grows by one position per step
    assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_right_padding_the_source_does_not_change_logits(tiny_policy):
    """Extra PAD columns on the right of the source are masked out of encoder self-attention
    and cross-attention, so the decoder's logits do not move."""
    src = encode_numbers([5, 13, 20])  # the 1-digit source is already padded once
    tgt_in = shift_right(encode_numbers([14, 22, 11]))
    padded = F.pad(src, (0, 4), value=PAD_ID)
    assert padded.shape[1] == src.shape[1] + 4
    assert_close(tiny_policy(padded, tgt_in), tiny_policy(src, tgt_in), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_tokens_reproduces_generate_logprobs(tiny_policy, temperature):
    """score_tokens re-scores the sampled answers in one teacher-forced pass; on real tokens its
    logprobs equal generate()'s, with the temperature applied the same way in both. Scoring at a
    different temperature gives different numbers, so the check can fail."""
    src = encode_numbers(NUMBERS * 2)
    out = tiny_policy.generate(src, 8, temperature=temperature, generator=torch.Generator().manual_seed(5))
    assert not any(t.is_inference() for t in (out.tokens, out.logprobs, out.mask)), "sampled in inference mode only"
    logprobs, entropy, _ = tiny_policy.score_tokens(src, out.tokens, temperature)  # with autograd: saves tokens
    real = out.mask.bool()
    assert_close(logprobs[real], out.logprobs[real], atol=1e-5, rtol=0)
    # entropy written out from the logits: -sum p log p of softmax(logits / T)
    logp_all = (tiny_policy(src, shift_right(out.tokens)) / temperature).log_softmax(-1)
    assert_close(entropy, -(logp_all.exp() * logp_all).sum(-1))
    other, _, _ = tiny_policy.score_tokens(src, out.tokens, temperature * 1.5)
    assert (other[real] - out.logprobs[real]).abs().max() > 1e-3


@pytest.mark.parametrize("which", ["tiny_policy", "random_model"])
def test_generation_mask_tokens_and_logprobs_after_eos(which, request):
    """Written out with a Python loop over each row: the mask is 1 up to and including the first
    EOS and 0 after it (all 1 when there is no EOS); tokens after EOS are PAD; logprobs after EOS
    are exactly 0 and negative before."""
    model = request.getfixturevalue(which)
    src = encode_numbers(NUMBERS * 4)
    out = model.generate(src, 8, temperature=1.3, generator=torch.Generator().manual_seed(11))
    n_with_eos = 0
    for tokens, mask, logprobs in zip(out.tokens.tolist(), out.mask.tolist(), out.logprobs.tolist(), strict=True):
        end = tokens.index(EOS_ID) + 1 if EOS_ID in tokens else len(tokens)
        n_with_eos += EOS_ID in tokens
        assert mask == [1.0] * end + [0.0] * (len(tokens) - end)
        assert tokens[end:] == [PAD_ID] * (len(tokens) - end)
        assert all(lp == 0.0 for lp in logprobs[end:])
        assert all(lp <= 0.0 for lp in logprobs[:end])
        assert EOS_ID not in tokens[: end - 1]
    if which == "tiny_policy":
        assert n_with_eos > 0  # the trained policy does finish answers, so the EOS branch ran


@pytest.mark.parametrize("top_k", [0, 5])
def test_pad_and_bos_are_never_sampled(random_model, top_k):
    """An untrained model at a high temperature would pick PAD or BOS about 1 time in 7 if nothing
    stopped it; the next-token logits rule them out, so no real token is ever PAD or BOS."""
    src = encode_numbers(NUMBERS * 32)
    out = random_model.generate(src, 12, temperature=3.0, top_k=top_k, generator=torch.Generator().manual_seed(0))
    real = out.tokens[out.mask.bool()]
    assert real.numel() > 1000
    assert not ((real == PAD_ID) | (real == BOS_ID)).any()
    # the raw head alone would give them real probability: the mask is what removes them
    logits = random_model.lm_head(random_model.hidden_states(src[:4], shift_right(out.tokens[:4])))
    assert (torch.softmax(logits / 3.0, -1)[..., [PAD_ID, BOS_ID]] > 1e-3).any()


@pytest.mark.parametrize(
    "bad, what",
    [
        (lambda t: t.float(), "dtype"),
        (lambda t: t.unsqueeze(0), "3-D"),
        (lambda t: torch.cat([t, torch.full_like(t[:, :1], VOCAB_SIZE)], 1), "id too large"),
        (lambda t: torch.cat([torch.full_like(t[:, :1], -1), t], 1), "negative id"),
    ],
)
def test_check_tokens_errors_name_the_argument(random_model, bad, what):
    """check_tokens, Seq2SeqTransformer.encode (src) and forward (tgt_in) reject a wrong dtype, a
    3-D tensor and out-of-vocabulary ids with a ValueError that names the argument."""
    good = encode_numbers([12, 17])
    with pytest.raises(ValueError, match="^my_tokens:"):
        check_tokens(bad(good), "my_tokens")
    with pytest.raises(ValueError, match="^src:"):
        random_model.encode(bad(good))
    with pytest.raises(ValueError, match="^tgt_in:"):
        random_model(good, bad(good))
    with pytest.raises(ValueError, match="^src:"):
        random_model.generate(bad(good), 4)
    check_tokens(good, "fine")  # and the good tensor passes


def test_score_tokens_rejects_out_of_vocabulary_tokens_naming_tokens(random_model):
    """score_tokens(src, tokens): an id >= VOCAB_SIZE anywhere in ``tokens`` (here the last column)
    must raise a ValueError naming ``tokens``."""
    src = encode_numbers([12, 17])
    tokens = torch.cat([encode_numbers([11, 13]), torch.full((2, 1), VOCAB_SIZE)], 1)
    with pytest.raises(ValueError, match="^tokens:"):
        random_model.score_tokens(src, tokens)
