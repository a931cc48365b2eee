"""Checks of notebook 01's exercises: attention, the causal mask, one KV-cached decoding step."""

from __future__ import annotations

import math

import torch

from .. import model
from .core import keeps_random_state, randn, verdict


@keeps_random_state
def check_attention(fn) -> bool:
    """fn(q, k, v, mask=None) -> (output, weights), like ``model.scaled_dot_product_attention``."""

    def case(seed, b, h, tq, tk, d, mask=None):
        return {
            "q": randn(b, h, tq, d, seed=seed),
            "k": randn(b, h, tk, d, seed=seed + 1),
            "v": randn(b, h, tk, d, seed=seed + 2),
            "mask": mask,
        }

    padding = (torch.arange(6) < torch.tensor([6, 3])[:, None])[:, None, None, :]
    cases = [
        ("one head, 3 queries, 5 keys", case(0, 1, 1, 3, 5, 4)),
        ("2 x 2 heads, d_head 16", case(1, 2, 2, 4, 6, 16)),
        ("causal mask", case(2, 2, 2, 4, 4, 8, model.causal_mask(4))),
        ("padding mask (B, 1, 1, keys), lengths 6 and 3", case(3, 2, 2, 4, 6, 8, padding)),
        ("one query (a decoding step)", case(4, 2, 2, 1, 6, 8)),
    ]

    def variant(scale=None, dim=-1, mask_mode="fill"):
        def attention(q, k, v, mask=None):
            scores = q @ k.transpose(-2, -1) / (scale(q.size(-1)) if scale else math.sqrt(q.size(-1)))
            if mask is not None and mask_mode == "fill":
                scores = scores.masked_fill(~mask, float("-inf"))
            if mask is not None and mask_mode == "inverted":
                scores = scores.masked_fill(mask, float("-inf"))
            weights = scores.softmax(dim)
            if mask is not None and mask_mode == "after":
                weights = weights * mask
            return weights @ v, weights

        return attention

    mistakes = [
        ("the scores are not scaled: divide q @ k^T by sqrt(d_head), d_head = q.size(-1)", variant(lambda d: 1.0)),
        ("divided by d_head: the scale is sqrt(d_head)", variant(lambda d: d)),
        ("softmax over the wrong axis: each query's weights sum to 1 over the keys (dim=-1)", variant(dim=-2)),
        ("the mask is ignored: set masked scores to -inf before the softmax", variant(mask_mode="ignored")),
        (
            "the mask is inverted: True means 'may attend', so fill where the mask is False (~mask)",
            variant(mask_mode="inverted"),
        ),
        (
            "the mask is applied after the softmax: the kept weights no longer sum to 1; fill the scores with -inf "
            "before it",
            variant(mask_mode="after"),
        ),
    ]
    return verdict("my_attention", fn, model.scaled_dot_product_attention, cases, mistakes, parts=("output", "weights"))


@keeps_random_state
def check_causal_mask(fn) -> bool:
    """fn(length) -> (length, length) bool, True where query t may look at key s (s <= t)."""
    cases = [(f"length {n}", {"length": n}) for n in (1, 4, 7)]
    ones = lambda n: torch.ones(n, n, dtype=torch.bool)
    mistakes = [
        (
            "the diagonal is missing: position t also sees itself (tril(), not tril(-1))",
            lambda length: ones(length).tril(-1),
        ),
        (
            "the mask is transposed: True on and *below* the diagonal (row = query t, column = key s <= t)",
            lambda length: ones(length).triu(),
        ),
        (
            "the mask is inverted: True where a query MAY look, the package's convention",
            lambda length: ~ones(length).tril(),
        ),
    ]
    return verdict("my_causal_mask", fn, model.causal_mask, cases, mistakes, parts=("mask",))


@keeps_random_state
def check_cached_attention_step(fn) -> bool:
    """fn(attn, h_new, cache) -> (B, 1, D): attend from the newest position, appending its keys and values
    to ``cache`` ({} before the first step; then {"k": (B, H, t, dh), "v": ...})."""

    def case(seed, b, steps, d_model=16, heads=4):
        torch.manual_seed(seed)
        return {"attn": model.MultiHeadAttention(d_model, heads).eval(), "h": randn(b, steps, d_model, seed=seed)}

    cases = [
        ("first step, empty cache", case(0, 2, 1)),
        ("5 steps, batch 2", case(1, 2, 5)),
        ("3 steps, batch 1, 2 heads", case(2, 1, 3, 8, 2)),
    ]

    def whole_prefix(attn, h):  # the package's attention over the whole prefix at once, causally masked
        with torch.no_grad():
            k, v = attn.project_kv(h)
            return attn(h, mask=model.causal_mask(h.size(1))), k, v

    def run_steps(step_fn, case):
        cache, outs = {}, []
        with torch.no_grad():
            for t in range(case["h"].size(1)):
                outs.append(step_fn(case["attn"], case["h"][:, t : t + 1].clone(), cache))
                if "k" not in cache or "v" not in cache:
                    raise KeyError(f"after step {t} the cache has no 'k' and 'v': store the keys and values in it")
        return torch.cat(outs, dim=1), cache["k"], cache["v"]

    def variant(keep_old=True, newest_first=False):
        def step(attn, h_new, cache):
            k, v = attn.project_kv(h_new)
            if keep_old and "k" in cache:
                pairs = ((k, cache["k"]), (v, cache["v"])) if newest_first else ((cache["k"], k), (cache["v"], v))
                k, v = (torch.cat(p, dim=2) for p in pairs)
            cache["k"], cache["v"] = k, v
            return attn(h_new, kv=(k, v))

        return step

    mistakes = [
        (
            "the cache does not grow: append the new keys and values to the old ones (torch.cat along dim=2, time)",
            variant(keep_old=False),
        ),
        (
            "the newest keys and values go at the end of the cache (torch.cat([cache['k'], k_new], dim=2))",
            variant(newest_first=True),
        ),
    ]
    return verdict(
        "my_cached_attention_step",
        fn,
        whole_prefix,
        cases,
        mistakes,
        call=run_steps,
        parts=("outputs of every step", "cache['k'] at the end", "cache['v'] at the end"),
    )
