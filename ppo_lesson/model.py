"""A small encoder-decoder Transformer, written out piece by piece, with a KV-cached decoder.

Pre-layer-norm blocks (LayerNorm before each sub-layer) train stably without warm-up tricks;
the attention itself is the textbook ``softmax(q k^T / sqrt(d)) v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .task import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE


def scaled_dot_product_attention(q, k, v, mask=None):
    """Attention from scratch. q: (B, H, Tq, dh); k, v: (B, H, Tk, dh);
    mask: bool, broadcastable to (B, H, Tq, Tk), True where a query may look.
    Returns the output (B, H, Tq, dh) and the attention weights (B, H, Tq, Tk)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model) table: sin on even, cos on odd dimensions, wavelengths 2pi..10000*2pi."""
    position = torch.arange(max_len).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


def causal_mask(length: int, device=None) -> torch.Tensor:
    """(length, length) bool, True on and below the diagonal: position t sees 0..t."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, T) bool, True on real tokens: keys a query may attend to."""
    return (tokens != PAD_ID)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Project to heads, attend, merge heads. ``keep_weights`` stores the last attention map.

    Without ``keep_weights`` (and with ``fused`` left True) the same attention runs as torch's fused
    ``F.scaled_dot_product_attention``: one op instead of five, equal to the from-scratch one up to
    float rounding (tests/test_speed_paths.py)."""

    fused = True  # class-wide switch; False always runs the from-scratch attention

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.keep_weights = False
        self.last_weights = None

    def split_heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x_q, x_kv=None, mask=None, kv=None):
        """x_q: (B, Tq, D). Keys and values come from ``x_kv`` or, when given, the
        precomputed (k, v) pair ``kv`` of shapes (B, H, Tk, dh)."""
        q = self.split_heads(self.q_proj(x_q))
        if kv is None:
            kv = self.project_kv(x_q if x_kv is None else x_kv)
        if self.fused and not self.keep_weights:
            out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        else:
            out, weights = scaled_dot_product_attention(q, kv[0], kv[1], mask)
            if self.keep_weights:
                self.last_weights = weights.detach()
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def project_kv(self, x):
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    """Self-attention over the source, then a feed-forward block; each adds to the residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, src_mask):
        x = x + self.dropout(self.self_attn(self.norm1(x), mask=src_mask))
        return x + self.dropout(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention over the answer so far, cross-attention to the source, feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, memory_kv, src_mask, self_mask, cache=None):
        """With ``cache`` (a dict this layer fills), x holds only the newest position and the
        keys and values of earlier positions are reused instead of recomputed."""
        h = self.norm1(x)
        kv = self.self_attn.project_kv(h)
        if cache is not None:
            if "k" in cache:
                kv = (torch.cat([cache["k"], kv[0]], dim=2), torch.cat([cache["v"], kv[1]], dim=2))
            cache["k"], cache["v"] = kv
        x = x + self.dropout(self.self_attn(h, mask=self_mask, kv=kv))
        x = x + self.dropout(self.cross_attn(self.norm2(x), mask=src_mask, kv=memory_kv))
        return x + self.dropout(self.ff(self.norm3(x)))


@dataclass
class Generation:
    """Output of ``generate``. All tensors are (batch, time).

    tokens: sampled ids, PAD after EOS; logprobs: log-probability of each sampled token under
    the sampling distribution (temperature and top-k applied), 0 after EOS; mask: 1.0 on real
    tokens (EOS included), 0.0 after EOS."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer over the task's vocabulary (shared source/target embedding)."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, VOCAB_SIZE)
        self.dropout = nn.Dropout(cfg.dropout)
        # N(0, 1/d) so that, once scaled by sqrt(d), tokens and positions have the same size
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def embed_tokens(self, tokens, offset: int = 0):
        """Token embeddings scaled by sqrt(d_model), plus the positions offset..offset+T-1."""
        length = tokens.size(1)
        if offset + length > self.cfg.max_len:
            raise ValueError(f"tokens: length {offset + length} exceeds model max_len={self.cfg.max_len}")
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.positions[offset : offset + length]
        return self.dropout(x)

    def encode(self, src):
        """src: (B, S) -> memory (B, S, D) and the source padding mask (B, 1, 1, S), or None when no
        source in the batch is padded: a mask that hides nothing changes no attention weight, and torch's
        fused attention runs a cross-attention forward about 30% faster without one (tests/test_speed_paths.py)."""
        check_tokens(src, "src")
        is_pad = src == PAD_ID
        all_pad = is_pad.all(dim=1)
        if all_pad.any():  # a query with no key to attend to gives a softmax over nothing: NaN
            rows = all_pad.nonzero().flatten().tolist()
            raise ValueError(f"src: expected every row to hold a token other than PAD, got only PAD in rows {rows}")
        src_mask = padding_mask(src) if is_pad.any() else None
        x = self.embed_tokens(src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def memory_kv(self, memory):
        """Cross-attention keys and values of every decoder layer, computed once per source."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder]

    def decode(self, tgt_in, memory, src_mask):
        """Teacher-forced decoder. tgt_in: (B, T) starting with BOS -> hidden (B, T, D)."""
        x = self.embed_tokens(tgt_in)
        self_mask = causal_mask(tgt_in.size(1), tgt_in.device)
        for layer, kv in zip(self.decoder, self.memory_kv(memory)):
            x = layer(x, kv, src_mask, self_mask)
        return self.decoder_norm(x)

    def hidden_states(self, src, tgt_in):
        """Decoder hidden states (B, T, D) for the decoder input ``tgt_in``."""
        check_tokens(tgt_in, "tgt_in")
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def next_token_logits(self, hidden):
        """Logits over the vocabulary; PAD and BOS are never a next token, so they get a large
        negative logit (finite, so that entropies stay finite)."""
        logits = self.lm_head(hidden)
        return logits.masked_fill(_NEVER_NEXT.to(logits.device), _NEG)

    def forward(self, src, tgt_in):
        """Next-token logits (B, T, V): position t predicts the token after tgt_in[:, t]."""
        return self.next_token_logits(self.hidden_states(src, tgt_in))

    def score_tokens(self, src, tokens, temperature: float = 1.0):
        """Re-score answers in one teacher-forced pass. tokens: (B, T) as from ``generate``.

        Returns logprobs (B, T) of each token under softmax(logits / temperature), the entropy
        (B, T) of that distribution, and the decoder hidden states (B, T, D) of the states
        (source, prefix) in which each token was chosen."""
        _check_temperature(temperature)
        check_tokens(tokens, "tokens")
        hidden = self.hidden_states(src, shift_right(tokens))
        logp_all = (self.next_token_logits(hidden) / temperature).log_softmax(-1)
        logprobs = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logprobs, entropy, hidden

    @torch.no_grad()
    def generate(
        self,
        src,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Sample answers token by token until EOS or ``max_new_tokens``.

        src: (B, S). With ``use_cache`` each step feeds only the newest token and reuses the
        keys and values of earlier ones; without it, every step recomputes the whole prefix."""
        _check_temperature(temperature)
        if not isinstance(max_new_tokens, int) or not 0 < max_new_tokens < self.cfg.max_len:
            raise ValueError(f"max_new_tokens: expected an int in [1, {self.cfg.max_len - 1}], got {max_new_tokens}")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k: expected an int >= 0 (0 = no top-k), got {top_k}")
        with torch.inference_mode():  # no_grad without any autograd bookkeeping: the same numbers, faster
            memory, src_mask = self.encode(src)
            memory_kv = self.memory_kv(memory)
            batch = src.size(0)
            tgt_in = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src.device)
            caches = [{} for _ in self.decoder] if use_cache else None
            finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
            tokens, logprobs, masks = [], [], []
            for step in range(max_new_tokens):
                if use_cache:
                    x = self.embed_tokens(tgt_in[:, -1:], offset=step)
                    for layer, kv, cache in zip(self.decoder, memory_kv, caches):
                        x = layer(x, kv, src_mask, None, cache)
                else:
                    x = self.embed_tokens(tgt_in)
                    self_mask = causal_mask(tgt_in.size(1), src.device)
                    for layer, kv in zip(self.decoder, memory_kv):
                        x = layer(x, kv, src_mask, self_mask)
                logits = self.next_token_logits(self.decoder_norm(x[:, -1])) / temperature
                token, logprob = _choose_next_token(logits, top_k, greedy, generator)
                alive = ~finished
                tokens.append(torch.where(alive, token, PAD_ID))
                logprobs.append(torch.where(alive, logprob, 0.0))
                masks.append(alive.float())
                finished = finished | (token == EOS_ID)
                if finished.all():
                    break
                tgt_in = torch.cat([tgt_in, tokens[-1].unsqueeze(1)], dim=1)
            out = [torch.stack(ts, 1) for ts in (tokens, logprobs, masks)]
        # copied out of inference mode: an inference tensor cannot take part in a later backward pass
        return Generation(*(t.clone() for t in out))


_NEG = -1e9
_NEVER_NEXT = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
_NEVER_NEXT[[PAD_ID, BOS_ID]] = True


def shift_right(tokens):
    """Decoder input for teacher forcing: BOS followed by all but the last token."""
    bos = torch.full_like(tokens[:, :1], BOS_ID)
    return torch.cat([bos, tokens[:, :-1]], dim=1)


def top_k_filter(logits, top_k: int):
    """Keep the ``top_k`` largest logits along the last axis (0 keeps all); the rest become -inf."""
    if top_k <= 0:
        return logits
    kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _choose_next_token(logits, top_k, greedy, generator):
    logp = top_k_filter(logits, top_k).log_softmax(-1)
    if greedy:
        token = logp.argmax(-1)
    else:
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return token, logp.gather(-1, token.unsqueeze(1)).squeeze(1)


def _check_temperature(temperature):
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive float, got {temperature}")


def check_tokens(tokens, name: str) -> None:
    """Raise a ValueError naming ``name`` unless tokens is a 2-D long tensor of ids in the vocabulary."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(
            f"{name}: expected a 2-D (batch, length) long tensor, got shape {tuple(tokens.shape)} {tokens.dtype}"
        )
    if tokens.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= VOCAB_SIZE:
        raise ValueError(
            f"{name}: expected token ids in [0, {VOCAB_SIZE}), got values in [{int(tokens.min())}, {int(tokens.max())}]"
        )
