"""Sample-based metrics of a policy: gold and proxy reward, validity, KL to the reference, diversity;
and how fast it generates, with and without the KV cache."""

from __future__ import annotations

import dataclasses
import random
import time

import torch

from .config import Config
from .model import Seq2SeqTransformer
from .task import EOS_ID, decode, encode_numbers, gold_scores, sample_numbers, source_numbers


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
    gold = gold_scores(src, out.tokens, out.mask, cfg.task)
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
    gold = gold_scores(src, out.tokens, out.mask, cfg.task)
    proxy = reward_model.score(src, out.tokens, out.mask).tolist() if reward_model is not None else None
    rows = []
    for i, n in enumerate(numbers):
        row = {"N": int(n), "answer": decode(out.tokens[i].cpu()), "gold": round(gold[i].item(), 3)}
        if proxy is not None:
            row["proxy"] = round(proxy[i], 3)
        rows.append(row)
    return rows


def best_seconds(fn, repeats: int, *args, **kwargs) -> float:
    """The fastest of ``repeats`` timed calls of ``fn(*args, **kwargs)`` after one warm-up call (the
    least disturbed by other work on the machine)."""
    fn(*args, **kwargs)  # warm-up: first calls allocate
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def generation_speed(cfg: Config, lengths=(4, 8, 16, 32), batch: int = 128, repeats: int = 5, device="cpu") -> list:
    """Tokens per second of ``generate`` with and without the KV cache, for answers of each length, on a
    model of ``cfg.model``'s size with random weights and EOS suppressed (every answer has exactly the
    asked-for length). One row per length: seconds and tokens/s of each, and the speedup."""
    torch.manual_seed(cfg.seed)
    model_cfg = dataclasses.replace(cfg.model, max_len=max(cfg.model.max_len, max(lengths) + 1))
    model = Seq2SeqTransformer(model_cfg).to(device).eval()
    model.lm_head.bias[EOS_ID] = -1e4  # never stop early
    src = encode_numbers(sample_numbers(batch, cfg.task, random.Random(cfg.seed))).to(device)
    rows = []
    for length in lengths:
        row = {"length": length, "batch": batch}
        for use_cache, key in ((True, "cache"), (False, "no_cache")):
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            seconds = best_seconds(model.generate, repeats, src, length, use_cache=use_cache, generator=generator)
            row[f"seconds_{key}"], row[f"tokens_per_s_{key}"] = seconds, batch * length / seconds
        row["speedup"] = row["seconds_no_cache"] / row["seconds_cache"]
        rows.append(row)
    return rows
