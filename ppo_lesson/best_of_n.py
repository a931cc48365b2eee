"""Best-of-n with the reward model (Stiennon et al. 2020, Nakano et al. 2021; Gao et al. 2022):
no training at all.

Dropped from PPO: every update, the critic and the KL penalty. Replaced by: sample n answers
from the pretrained policy, score them with the reward model, keep the highest. The policy this
defines moves away from the reference only through selection, and by a known amount: its KL to
the reference is at most log n - (n - 1) / n, reached when no two answers tie (few ties: the
bound is tight; a peaked policy that repeats answers stays below it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import Config, _check
from .evaluate import evaluation_sources
from .task import gold_scores, source_numbers


@dataclass(frozen=True)
class BestOfNConfig:
    """Settings of the best-of-n curve."""

    max_n: int = 64  # largest n; every smaller power of two is measured from the same samples
    samples_per_number: int = 4  # independent draws of max_n answers for every source number
    temperature: float = 1.0
    seed: int = 1234  # sampling seed (the same evaluation set as ``evaluate_policy``)

    def __post_init__(self):
        _check(self.max_n >= 1 and self.max_n & (self.max_n - 1) == 0, "max_n", "a power of two >= 1", self.max_n)
        _check(self.samples_per_number > 0, "samples_per_number", "a positive integer", self.samples_per_number)
        _check(self.temperature > 0, "temperature", "a positive float", self.temperature)

    @property
    def n_values(self) -> list[int]:
        return [2**i for i in range(self.max_n.bit_length())]


def kl_bound(n: int) -> float:
    """KL(best-of-n || policy) <= log n - (n - 1) / n, in nats (equality when nothing ties)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_distribution(probs, scores, n: int):
    """Exact distribution (K,) of best-of-n over K outcomes with probabilities ``probs`` (K,) and
    reward ``scores`` (K,): P(best <= s) = F(s)^n, so the group of outcomes scoring s gets
    F(s)^n - F(s-)^n, shared among them in proportion to their probabilities (ties broken at random)."""
    if probs.dim() != 1 or probs.shape != scores.shape:
        raise ValueError(f"probs, scores: expected two 1-D tensors of one shape, got {probs.shape} and {scores.shape}")
    if (probs < 0).any() or not math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6):
        raise ValueError("probs: expected non-negative probabilities that sum to 1")
    kl_bound(n)
    probs = probs.double()
    levels, group = scores.unique(return_inverse=True)  # levels ascending; group[k] = level of outcome k
    mass = torch.zeros(len(levels), dtype=probs.dtype).index_add_(0, group, probs)
    cdf = mass.cumsum(0).clamp(max=1.0)
    level_prob = cdf**n - (cdf - mass).clamp(min=0.0) ** n
    return torch.where(mass[group] > 0, level_prob[group] * probs / mass[group].clamp(min=1e-300), 0.0)


def best_of_n_kl(probs, scores, n: int) -> float:
    """Exact KL(best-of-n || policy) in nats for a categorical policy (see ``best_of_n_distribution``)."""
    selected = best_of_n_distribution(probs, scores, n)
    keep = selected > 0
    return (selected[keep] * (selected[keep] / probs.double()[keep]).log()).sum().item()


@torch.no_grad()
def best_of_n_curve(policy, reward_model, cfg: Config, bon_cfg: BestOfNConfig) -> list[dict]:
    """Gold and proxy reward of best-of-n for every n in ``bon_cfg.n_values``, from one set of
    samples: max_n answers per (source number, draw); for each n they split into max_n / n
    disjoint groups and each group's highest-scored answer counts. The KL estimate is the exact
    best-of-n KL of each source number's empirical answer distribution (all its draws pooled),
    averaged over numbers: a plug-in estimate, at most log(answers per number)."""
    device = policy.device
    src = evaluation_sources(cfg, bon_cfg.samples_per_number).to(device)
    gen = torch.Generator(device=device).manual_seed(bon_cfg.seed)
    repeated = src.repeat_interleave(bon_cfg.max_n, dim=0)
    tokens, scores, gold = [], [], []
    for chunk in repeated.split(1024):
        out = policy.eval().generate(chunk, cfg.task.max_target_len, temperature=bon_cfg.temperature, generator=gen)
        width = cfg.task.max_target_len  # pad every chunk to one width so they concatenate
        tokens.append(F.pad(out.tokens, (0, width - out.tokens.size(1))).cpu())
        scores.append(reward_model.score(chunk, out.tokens, out.mask).cpu())
        gold.append(gold_scores(chunk, out.tokens, out.mask, cfg.task))
    tokens, scores, gold = torch.cat(tokens), torch.cat(scores), torch.cat(gold)
    answers = [tuple(t) for t in tokens.tolist()]  # token ids, not text: an answer cut off before EOS differs
    numbers = [number for number in source_numbers(src.cpu()) for _ in range(bon_cfg.max_n)]
    rows = []
    for n in bon_cfg.n_values:
        best = scores.view(-1, n).argmax(1) + torch.arange(0, len(scores), n)
        rows.append(
            {
                "n": n,
                "gold_reward": gold[best].mean().item(),
                "proxy_reward": scores[best].mean().item(),
                "valid_fraction": (gold[best] > -1).float().mean().item(),
                "kl_bound": kl_bound(n),
                "kl_estimate": _plug_in_kl(answers, scores, numbers, n),
            }
        )
    return rows


def _plug_in_kl(answers: list[tuple], scores, numbers: list[int], n: int) -> float:
    """Mean over source numbers of the exact best-of-n KL of that number's empirical answer distribution."""
    pooled: dict[int, dict[tuple, list]] = {}  # number -> answer -> [count, score]
    for answer, score, number in zip(answers, scores.tolist(), numbers):
        pooled.setdefault(number, {}).setdefault(answer, [0, score])[0] += 1
    kls = []
    for table in pooled.values():
        counts, answer_scores = (torch.tensor(column, dtype=torch.float64) for column in zip(*table.values()))
        kls.append(best_of_n_kl(counts / counts.sum(), answer_scores, n))
    return sum(kls) / len(kls)
