"""The reward model: a Transformer that reads (source, answer) and returns one number,
trained so that the answer a human preferred scores higher (Bradley-Terry)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, ModelConfig
from .errors import TrainingError
from .flat_adam import FlatAdam
from .model import Seq2SeqTransformer, check_tokens
from .progress import progress_bar
from .stages import seed_for
from .task import BOS_ID, PAD_ID, encode_numbers, preference_pairs, sample_numbers


class RewardModel(nn.Module):
    """Seq2Seq trunk + a scalar head on the decoder states around the answer's last token (its EOS).

    ``forward`` gives raw scores; ``score`` gives them normalized to mean 0, std 1 on samples of
    the reference policy (set by ``normalize_reward_model``), the scale PPO's KL penalty assumes."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.trunk = Seq2SeqTransformer(cfg)
        self.head = nn.Linear(2 * self.trunk.cfg.d_model, 1)
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def forward(self, src, tokens, mask):
        """Raw scores (B,). src: (B, S); tokens, mask: (B, T), the answer with its EOS."""
        check_tokens(tokens, "tokens")
        if mask.shape != tokens.shape:
            raise ValueError(f"mask: expected shape {tuple(tokens.shape)} like tokens, got {tuple(mask.shape)}")
        bos = torch.full_like(tokens[:, :1], BOS_ID)
        hidden = self.trunk.hidden_states(src, torch.cat([bos, tokens], dim=1))
        rows, end = torch.arange(len(tokens), device=tokens.device), mask.long().sum(1).clamp(min=1)
        # two states of [BOS, answer]: the one that chose the last token (in the policy trunk it
        # already knows whether the sum is complete) and the one that read it (did the answer end?)
        chose, read = hidden[rows, end - 1], hidden[rows, end]
        return self.head(torch.cat([chose, read], dim=-1)).squeeze(-1)

    def scored_parameters(self) -> list[nn.Parameter]:
        """The parameters a score depends on: all but the trunk's ``lm_head`` (a score reads hidden states)."""
        return [p for name, p in self.named_parameters() if not name.startswith("trunk.lm_head.")]

    def score(self, src, tokens, mask):
        """Normalized scores (B,): (raw - mean) / std over reference samples."""
        return (self(src, tokens, mask) - self.score_mean) / self.score_std


def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigmoid(r_chosen - r_rejected), averaged: the negative log-likelihood of the human's
    choice when P(chosen beats rejected) = sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@torch.no_grad()
def collect_preferences(policy: Seq2SeqTransformer, cfg: Config, device="cpu", batch_size: int = 512) -> dict:
    """Sample two answers per source from ``policy`` and label each pair with the gold scorer
    (ties dropped) until ``cfg.reward.n_pairs`` pairs are collected."""
    rng = random.Random(seed_for(cfg, "preferences"))
    gen = torch.Generator(device=device).manual_seed(seed_for(cfg, "preferences"))
    policy.eval()
    chunks, have = [], 0
    for _ in range(100):
        src = encode_numbers(sample_numbers(batch_size, cfg.task, rng)).to(device)
        temperature = cfg.reward.pair_temperature
        a = policy.generate(src, cfg.task.max_target_len, temperature=temperature, generator=gen)
        b = policy.generate(src, cfg.task.max_target_len, temperature=temperature, generator=gen)
        length = max(a.tokens.size(1), b.tokens.size(1))
        pairs = preference_pairs(src, *_pad_to(a, length), *_pad_to(b, length), cfg.task, cfg.reward.label_noise, rng)
        chunks.append(pairs)
        have += len(pairs["src"])
        if have >= cfg.reward.n_pairs:
            break
    if have == 0:
        raise ValueError("collect_preferences: the policy's two samples never differed in gold score")
    width = {k: max(c[k].size(1) for c in chunks) for k in ("src", "chosen", "rejected")}
    out = {k: torch.cat([_pad_cols(c[k], width.get(k)) for c in chunks])[: cfg.reward.n_pairs] for k in chunks[0]}
    return out


def _pad_to(gen, length):
    extra = length - gen.tokens.size(1)
    return F.pad(gen.tokens, (0, extra)), F.pad(gen.mask, (0, extra))


def _pad_cols(t, width):
    return t if width is None or t.dim() == 1 else F.pad(t, (0, width - t.size(1)))


def split_pairs(pairs: dict, heldout_fraction: float, seed: int) -> tuple[dict, dict]:
    """Shuffle pairs and split them into (train, heldout)."""
    n = len(pairs["src"])
    if n < 2:
        raise ValueError(f"pairs: expected at least 2 preference pairs, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_heldout = max(1, int(n * heldout_fraction))
    pick = lambda idx: {k: v[idx] for k, v in pairs.items()}  # noqa: E731
    return pick(order[n_heldout:]), pick(order[:n_heldout])


def answer_mask(tokens):
    """1.0 on the answer's real tokens (up to and including EOS): tokens after EOS are PAD (0)."""
    return (tokens != PAD_ID).float()


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: dict, batch_size: int = 1024) -> float:
    """Share of pairs in which the reward model scores the chosen answer higher."""
    rm.eval()
    right = 0
    for i in range(0, len(pairs["src"]), batch_size):
        s, c, r = (pairs[k][i : i + batch_size] for k in ("src", "chosen", "rejected"))
        right += (rm(s, c, answer_mask(c)) > rm(s, r, answer_mask(r))).sum().item()
    return right / len(pairs["src"])


def train_reward_model(
    rm: RewardModel, pairs: dict, cfg: Config, device="cpu", callback=None, progress: bool = True
) -> dict:
    """Bradley-Terry training on ``pairs`` (from ``collect_preferences``); trains ``rm`` in place.

    Returns {"history": [{step, loss, accuracy}], "train_accuracy", "heldout_accuracy"}."""
    rcfg = cfg.reward
    train, heldout = split_pairs({k: v.to(device) for k, v in pairs.items()}, rcfg.heldout_fraction, cfg.seed)
    rm.to(device)
    # torch's fused Adam over the weights laid end to end (flat_adam.py); the trunk's lm_head is left out:
    # a score never reads it, so it gets no gradient (torch's Adam would skip it every step)
    opt = FlatAdam([{"params": rm.scored_parameters()}], lr=rcfg.lr)
    n = len(train["src"])
    steps_per_epoch = max(1, -(-n // rcfg.batch_size))
    gen = torch.Generator().manual_seed(seed_for(cfg, "reward_order"))
    history: list[dict] = []
    bar = progress_bar(desc="reward model", total=rcfg.epochs * steps_per_epoch, enabled=progress)
    for _ in range(rcfg.epochs):
        rm.train()
        for idx in torch.randperm(n, generator=gen).split(rcfg.batch_size):
            s, c, r = (train[k][idx.to(device)] for k in ("src", "chosen", "rejected"))
            both = torch.cat([c, r])  # one pass over the chosen and the rejected answers: half the calls
            r_c, r_r = rm(torch.cat([s, s]), both, answer_mask(both)).chunk(2)
            loss = bradley_terry_loss(r_c, r_r)
            if not torch.isfinite(loss):
                raise TrainingError("reward model", len(history), history[-1] if history else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"step": len(history), "loss": loss.item(), "accuracy": (r_c > r_r).float().mean().item()})
            bar.update()
            if callback is not None and len(history) % 10 == 0:
                callback(history)
    bar.close()
    rm.eval()
    return {
        "history": history,
        "train_accuracy": pair_accuracy(rm, train),
        "heldout_accuracy": pair_accuracy(rm, heldout),
        "n_train": n,
        "n_heldout": len(heldout["src"]),
    }


@torch.no_grad()
def normalize_reward_model(
    rm: RewardModel,
    reference: Seq2SeqTransformer,
    cfg: Config,
    n: int = 1024,
    device="cpu",
    temperature: float = 1.0,
):
    """Set the score normalization to mean 0, std 1 over ``n`` answers of the reference policy sampled at
    ``temperature``: pass the temperature PPO samples at, so that its first rollouts score mean 0, std 1."""
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a positive float, got {temperature!r}")
    rng = random.Random(seed_for(cfg, "normalization"))
    gen = torch.Generator(device=device).manual_seed(seed_for(cfg, "normalization"))
    src = encode_numbers(sample_numbers(n, cfg.task, rng)).to(device)
    out = reference.eval().generate(src, cfg.task.max_target_len, temperature=temperature, generator=gen)
    raw = rm.eval()(src, out.tokens, out.mask)
    rm.score_mean.fill_(raw.mean())
    rm.score_std.fill_(raw.std().clamp(min=1e-6))
    return {"mean": rm.score_mean.item(), "std": rm.score_std.item(), "temperature": float(temperature)}


def reward_model_from_policy(policy: Seq2SeqTransformer) -> RewardModel:
    """A reward model whose trunk starts as a copy of the policy (the RLHF habit: the reward
    model already understands the task's language before it learns preferences)."""
    rm = RewardModel(policy.cfg).to(policy.device)
    rm.trunk.load_state_dict(policy.state_dict())
    return rm
