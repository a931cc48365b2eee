"""Checks of notebook 02's exercises: the teacher-forcing shift, the masked loss, temperature and top-k."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import model, pretrain
from ..config import ModelConfig
from ..task import BOS_ID, PAD_ID, encode, encode_numbers, pad_batch
from .core import keeps_random_state, randn, verdict


def _targets(*answers):
    return pad_batch([encode(a) for a in answers])


@keeps_random_state
def check_shift_right(fn) -> bool:
    """fn(tokens) -> (B, T) decoder input: BOS followed by all but the last token."""
    cases = [
        ("two answers, right-padded", {"tokens": _targets("9+9+9", "4+5")}),
        ("an answer of one token (only EOS)", {"tokens": _targets("")}),
        ("three answers, the longest last", {"tokens": _targets("1+2", "9", "3+4+5+6")}),
    ]
    bos = lambda t: torch.full_like(t[:, :1], BOS_ID)
    mistakes = [
        (
            "BOS shift off by one: the decoder input has the target's length: BOS, then tokens[:, :-1]",
            lambda tokens: torch.cat([bos(tokens), tokens], dim=1),
        ),
        (
            "the first token is dropped: keep tokens[:, :-1] (all but the last), not tokens[:, 1:]",
            lambda tokens: torch.cat([bos(tokens), tokens[:, 1:]], dim=1),
        ),
        (
            "shifted left: the decoder reads BOS first, then the target up to its second-to-last token",
            lambda tokens: torch.cat([tokens[:, 1:], bos(tokens)], dim=1),
        ),
        ("no shift: prepend BOS and drop the last token", lambda tokens: tokens),
    ]
    return verdict("my_shift_right", fn, model.shift_right, cases, mistakes, parts=("decoder input",))


@keeps_random_state
def check_teacher_forcing_loss(fn) -> bool:
    """fn(net, src, tgt) -> scalar: mean cross-entropy over the real target tokens, like the package's."""
    torch.manual_seed(0)  # inside the check's own random state
    net = model.Seq2SeqTransformer(
        ModelConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)
    ).eval()
    cases = [
        ("two answers of different lengths", {"src": encode_numbers([27, 9]), "tgt": _targets("9+9+9", "9")}),
        ("no padding", {"src": encode_numbers([12, 14]), "tgt": _targets("3+9", "5+9")}),
        (
            "three answers, one of them only EOS",
            {"src": encode_numbers([30, 45, 11]), "tgt": _targets("9+9+3+9", "", "2+9")},
        ),
    ]
    cases = [(label, {"net": net, **c}) for label, c in cases]

    def cross_entropy(net, src, tgt, shift=True, **kwargs):
        logits = net(src, model.shift_right(tgt) if shift else tgt)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), **kwargs)

    def per_answer(net, src, tgt):
        losses = cross_entropy(net, src, tgt, ignore_index=PAD_ID, reduction="none").view(tgt.shape)
        real = (tgt != PAD_ID).float()
        return ((losses * real).sum(1) / real.sum(1)).mean()

    mistakes = [
        (
            "padding is scored: average over the real tokens only (ignore_index=PAD_ID)",
            lambda net, src, tgt: cross_entropy(net, src, tgt),
        ),
        (
            "no shift: the decoder must read model.shift_right(tgt), or each position sees the token it predicts",
            lambda net, src, tgt: cross_entropy(net, src, tgt, shift=False, ignore_index=PAD_ID),
        ),
        (
            "sum instead of mean over the real tokens",
            lambda net, src, tgt: cross_entropy(net, src, tgt, ignore_index=PAD_ID, reduction="sum"),
        ),
        ("a mean per answer, then over answers: average over all real tokens of the batch at once", per_answer),
    ]
    with torch.no_grad():
        package = lambda net, src, tgt: pretrain.teacher_forcing_loss(net, src, tgt)  # the argument is `net` here
        return verdict("my_teacher_forcing_loss", fn, package, cases, mistakes, parts=("loss",))


def _sampling_probs(logits, temperature, top_k):
    """The distribution ``generate`` samples from: logits / temperature, then top-k, then softmax."""
    return model.top_k_filter(logits / temperature, top_k).softmax(-1)


@keeps_random_state
def check_next_token_probs(fn) -> bool:
    """fn(logits, temperature, top_k) -> (B, V) probabilities, as ``generate`` samples them."""
    logits = randn(3, 14, seed=5, scale=2.0)
    cases = [
        ("temperature 1, no top-k", {"logits": logits, "temperature": 1.0, "top_k": 0}),
        ("temperature 0.5, top-k 3", {"logits": logits, "temperature": 0.5, "top_k": 3}),
        ("temperature 2, top-k 1", {"logits": logits, "temperature": 2.0, "top_k": 1}),
        ("top-k 20, more than the 14 tokens", {"logits": logits, "temperature": 0.7, "top_k": 20}),
    ]
    mistakes = [
        (
            "the temperature is applied after the softmax: divide the logits by it, then take the softmax",
            lambda logits, temperature, top_k: _sampling_probs(logits, 1.0, top_k) / temperature,
        ),
        (
            "the temperature is ignored: divide the logits by it before the softmax",
            lambda logits, temperature, top_k: _sampling_probs(logits, 1.0, top_k),
        ),
        (
            "multiplied by the temperature: a low temperature must sharpen, so divide the logits by it",
            lambda logits, temperature, top_k: _sampling_probs(logits * temperature, 1.0, top_k),
        ),
        (
            "top-k keeps the smallest logits: keep the k largest",
            lambda logits, temperature, top_k: _sampling_probs(
                logits.masked_fill(model.top_k_filter(-logits, top_k).isinf(), -math.inf), temperature, 0
            ),
        ),
        (
            "the filtered logits were set to 0, not -inf, so they keep some probability",
            lambda logits, temperature, top_k: _sampling_probs(
                model.top_k_filter(logits, top_k).nan_to_num(neginf=0.0), temperature, 0
            ),
        ),
    ]
    return verdict("my_next_token_probs", fn, _sampling_probs, cases, mistakes, parts=("probabilities",))
