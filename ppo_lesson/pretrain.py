"""Supervised pretraining by teacher forcing: the policy learns to write valid sums, without taste."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from .config import Config
from .errors import TrainingError
from .flat_adam import FlatAdam
from .model import Seq2SeqTransformer, shift_right
from .progress import progress_bar
from .stages import seed_for
from .task import PAD_ID, supervised_batch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def teacher_forcing_loss(model: Seq2SeqTransformer, src, tgt):
    """Mean cross-entropy of each target token given the source and the true previous tokens.

    src: (B, S); tgt: (B, T) ending with EOS, right-padded with PAD (padding is not scored)."""
    logits = model(src, shift_right(tgt))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=PAD_ID)


def pretrain(
    model: Seq2SeqTransformer,
    cfg: Config,
    device="cpu",
    callback=None,
    progress: bool = True,
) -> list[dict]:
    """Train ``model`` in place; returns a history of {step, loss, lr}.

    ``callback(history)`` is called every 25 steps (a notebook can redraw a live curve)."""
    pretrain_cfg = cfg.pretrain
    rng = random.Random(seed_for(cfg, "pretrain"))
    model.to(device).train()
    # torch's fused Adam over the parameters laid end to end: the same numbers, less Python a step (flat_adam.py)
    opt = FlatAdam(
        [{"params": list(model.parameters())}],
        lr=pretrain_cfg.lr,
        betas=(0.9, pretrain_cfg.beta2),
        weight_decay=pretrain_cfg.weight_decay,
    )
    history: list[dict] = []
    bar = progress_bar(range(pretrain_cfg.steps), desc="pretrain", enabled=progress)
    for step in bar:
        lr = pretrain_cfg.lr * warmup_cosine(step, pretrain_cfg.steps, pretrain_cfg.warmup_steps)  # as LambdaLR sets it
        opt.param_groups[0]["lr"] = lr
        src, tgt = (t.to(device) for t in supervised_batch(pretrain_cfg.batch_size, cfg.task, rng))
        loss = teacher_forcing_loss(model, src, tgt)
        if not torch.isfinite(loss):
            raise TrainingError("pretrain", step, history[-1] if history else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.clip_grad_norm_(pretrain_cfg.grad_clip)  # = clip_grad_norm_(model.parameters(), ...)
        history.append({"step": step, "loss": loss.item(), "lr": lr})
        opt.step()
        if step % 25 == 0 or step == pretrain_cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if callback is not None:
                callback(history)
    model.eval()
    return history
