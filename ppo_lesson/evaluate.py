"""Sample-based metrics of a policy: gold and proxy reward, validity, KL to the reference, diversity."""

from __future__ import annotations

import torch

from .config import Config
from .model import Seq2SeqTransformer
from .task import decode, encode_numbers, gold_scores, source_numbers


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start): smooths noisy curves."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def evaluation_sources(cfg: Config, samples_per_number: int = 8) -> torch.Tensor:
    """A fixed evaluation set: every source number, ``samples_per_number`` times each."""
    numbers = [n for n in range(cfg.task.min_number, cfg.task.max_number + 1) for _ in range(samples_per_number)]
    return encode_numbers(numbers)


@torch.no_grad()
def evaluate_policy(
    policy: Seq2SeqTransformer,
    cfg: Config,
    reference: Seq2SeqTransformer | None = None,
    reward_model=None,
    samples_per_number: int = 8,
    temperature: float = 1.0,
    seed: int = 1234,
    return_scores: bool = False,
) -> dict:
    """Sample answers for every source number and measure them.

    Returns gold_reward (mean gold score), valid_fraction, mean_terms (of valid answers),
    distinct_valid (mean number of distinct valid answers per source number), and, when given
    the models, proxy_reward (normalized reward-model score) and kl_to_reference (mean over
    answers of sum_t log p(y_t) - log p_ref(y_t), in nats). ``return_scores`` adds the
    per-answer "gold_scores" list."""
    device = policy.device
    src = evaluation_sources(cfg, samples_per_number).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = policy.eval().generate(src, cfg.task.max_target_len, temperature=temperature, generator=gen)
    gold = gold_scores(src.cpu(), out.tokens.cpu(), out.mask.cpu(), cfg.task)
    valid = gold > -1
    answers = [decode(t) for t in out.tokens.cpu()]
    numbers = source_numbers(src.cpu())
    distinct: dict[int, set] = {}
    for n, a, ok in zip(numbers, answers, valid.tolist()):
        distinct.setdefault(n, set())
        if ok:
            distinct[n].add(a)
    terms = [a.count("+") + 1 for a, ok in zip(answers, valid.tolist()) if ok]
    metrics = {
        "gold_reward": gold.mean().item(),
        "valid_fraction": valid.float().mean().item(),
        "mean_terms": sum(terms) / max(1, len(terms)),
        "distinct_valid": sum(len(s) for s in distinct.values()) / len(distinct),
    }
    if return_scores:
        metrics["gold_scores"] = gold.tolist()
    if reward_model is not None:
        metrics["proxy_reward"] = reward_model.score(src, out.tokens, out.mask).mean().item()
    if reference is not None:
        logp, _, _ = policy.score_tokens(src, out.tokens, temperature)
        ref_logp, _, _ = reference.score_tokens(src, out.tokens, temperature)
        metrics["kl_to_reference"] = ((logp - ref_logp) * out.mask).sum(1).mean().item()
    return metrics


@torch.no_grad()
def sample_table(policy: Seq2SeqTransformer, cfg: Config, numbers, seed: int = 0, reward_model=None) -> list[dict]:
    """One sampled answer per number, with its gold score (and proxy score): rows for a table."""
    src = encode_numbers(list(numbers)).to(policy.device)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    out = policy.eval().generate(src, cfg.task.max_target_len, generator=gen)
    gold = gold_scores(src.cpu(), out.tokens.cpu(), out.mask.cpu(), cfg.task)
    proxy = reward_model.score(src, out.tokens, out.mask).tolist() if reward_model is not None else None
    rows = []
    for i, n in enumerate(numbers):
        row = {"N": int(n), "answer": decode(out.tokens[i].cpu()), "gold": round(gold[i].item(), 3)}
        if proxy is not None:
            row["proxy"] = round(proxy[i], 3)
        rows.append(row)
    return rows
