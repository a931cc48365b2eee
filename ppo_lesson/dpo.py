"""DPO, Direct Preference Optimization (Rafailov et al. 2023): RLHF without the reward model
and without sampling.

Dropped from PPO: the reward model, the rollouts, the critic and the KL controller. Replaced by:
a classification loss on the very preference pairs the reward model learned from
(``reward.collect_preferences``). The KL-regularized optimum pi* = pi_ref * exp(r / beta) / Z
turns any reward into r = beta * log(pi* / pi_ref) + beta * log Z; putting that into the
Bradley-Terry loss of notebook 03 cancels Z and leaves a loss on the policy alone:

    -log sigmoid(beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))

with sequence log-probabilities summed over the answer's real tokens. beta plays the role of
PPO's kl_beta: the smaller it is, the further the policy may move from the reference."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, _check
from .errors import TrainingError
from .evaluate import evaluate_policy
from .model import Seq2SeqTransformer
from .progress import progress_bar
from .reward import answer_mask
from .stages import seed_for


@dataclass(frozen=True)
class DPOConfig:
    """DPO's settings."""

    beta: float = 0.1  # strength of the implicit KL to the reference (smaller: the policy may move further)
    epochs: int = 2  # passes over the training pairs
    batch_size: int = 64  # pairs per optimizer step
    lr: float = 3e-5  # Adam learning rate
    max_grad_norm: float = 1.0
    evaluations_per_epoch: int = 4  # how often gold, validity and KL are measured (sampled, like the RL methods)
    eval_samples_per_number: int = 4  # evaluation answers per source number at each of those points

    def __post_init__(self):
        _check(self.beta > 0, "beta", "a positive float", self.beta)
        _check(self.epochs > 0, "epochs", "a positive integer", self.epochs)
        _check(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        _check(self.lr > 0, "lr", "a positive float", self.lr)
        _check(self.max_grad_norm > 0, "max_grad_norm", "a positive float", self.max_grad_norm)
        _check(
            self.evaluations_per_epoch > 0, "evaluations_per_epoch", "a positive integer", self.evaluations_per_epoch
        )
        _check(
            self.eval_samples_per_number > 0,
            "eval_samples_per_number",
            "a positive integer",
            self.eval_samples_per_number,
        )


def sequence_logprobs(model: Seq2SeqTransformer, src, tokens):
    """log p(answer | source) (B,): per-token log-probabilities summed over the real tokens (EOS
    included, padding excluded). src: (B, S); tokens: (B, T) right-padded with PAD."""
    logprobs, _, _ = model.score_tokens(src, tokens)
    return (logprobs * answer_mask(tokens)).sum(1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """DPO's loss (mean over pairs) and each pair's implicit reward margin (B,), from sequence
    log-probabilities (B,) of the chosen (w) and rejected (l) answers under the policy and the
    reference: margin = beta * ((pi_w - ref_w) - (pi_l - ref_l)), loss = -log sigmoid(margin)."""
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"log-probabilities: expected four 1-D tensors of one shape (B,), got {sorted(shapes)}")
    if not beta > 0:
        raise ValueError(f"beta: expected a positive float, got {beta!r}")
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin


@torch.no_grad()
def reference_logprobs(reference: Seq2SeqTransformer, pairs: dict, batch_size: int = 1024) -> dict:
    """The reference's sequence log-probabilities of every chosen and rejected answer, computed once."""
    out = {"chosen": [], "rejected": []}
    for i in range(0, len(pairs["src"]), batch_size):
        src = pairs["src"][i : i + batch_size]
        for side in out:
            out[side].append(sequence_logprobs(reference, src, pairs[side][i : i + batch_size]))
    return {side: torch.cat(parts) for side, parts in out.items()}


def finetune_dpo(
    policy: Seq2SeqTransformer,
    reference: Seq2SeqTransformer,
    pairs: dict,
    cfg: Config,
    dpo_cfg: DPOConfig,
    device="cpu",
    callback=None,
    progress: bool = True,
) -> list[dict]:
    """Fine-tune ``policy`` in place on preference ``pairs`` ({src, chosen, rejected}, as from
    ``collect_preferences``). Returns one row per evaluation point: passes over the pairs so far,
    the mean loss and implicit-reward accuracy since the last point, and ``evaluate_policy``'s
    gold_reward, valid_fraction and kl_to_reference (row 0 is the reference, at 0 passes)."""
    if not isinstance(dpo_cfg, DPOConfig):
        raise TypeError(f"dpo_cfg: expected a DPOConfig, got {type(dpo_cfg).__name__}")
    if policy is reference:
        raise ValueError("reference: expected a frozen copy of the policy, got the policy itself")
    pairs = {k: pairs[k].to(device) for k in ("src", "chosen", "rejected")}
    n = len(pairs["src"])
    policy.to(device).eval()
    reference.to(device).eval()
    ref = reference_logprobs(reference, pairs)
    optimizer = torch.optim.Adam(policy.parameters(), lr=dpo_cfg.lr)
    gen = torch.Generator().manual_seed(seed_for(cfg, "dpo_order"))
    steps_per_epoch = -(-n // dpo_cfg.batch_size)
    eval_every = max(1, steps_per_epoch // dpo_cfg.evaluations_per_epoch)
    history, window, start = [_evaluation(policy, reference, cfg, dpo_cfg, 0, 0.0, [])], [], time.perf_counter()
    bar = progress_bar(desc="dpo", total=dpo_cfg.epochs * steps_per_epoch, enabled=progress)
    step = 0
    try:
        for _ in range(dpo_cfg.epochs):
            for idx in torch.randperm(n, generator=gen).split(dpo_cfg.batch_size):
                idx = idx.to(device)
                src = pairs["src"][idx]
                loss, margin = dpo_loss(
                    sequence_logprobs(policy, src, pairs["chosen"][idx]),
                    sequence_logprobs(policy, src, pairs["rejected"][idx]),
                    ref["chosen"][idx],
                    ref["rejected"][idx],
                    dpo_cfg.beta,
                )
                if not torch.isfinite(loss):
                    raise TrainingError("dpo", step, history[-1])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), dpo_cfg.max_grad_norm)
                optimizer.step()
                step += 1
                window.append((loss.item(), (margin > 0).float().mean().item()))
                bar.update()
                if step % eval_every == 0 or step == dpo_cfg.epochs * steps_per_epoch:
                    seconds = time.perf_counter() - start
                    history.append(
                        _evaluation(policy, reference, cfg, dpo_cfg, step / steps_per_epoch, seconds, window)
                    )
                    window = []
                    if callback is not None:
                        callback(history)
    except KeyboardInterrupt:
        print(f"dpo: interrupted after {step} steps; returning the history so far")
    bar.close()
    return history


def _evaluation(policy, reference, cfg, dpo_cfg, passes: float, seconds: float, window: list) -> dict:
    metrics = evaluate_policy(policy, cfg, reference, samples_per_number=dpo_cfg.eval_samples_per_number)
    return {
        "passes": passes,
        "loss": sum(w[0] for w in window) / len(window) if window else None,
        "pair_accuracy": sum(w[1] for w in window) / len(window) if window else None,
        "gold_reward": metrics["gold_reward"],
        "valid_fraction": metrics["valid_fraction"],
        "kl": metrics["kl_to_reference"],
        "seconds": seconds,
    }
