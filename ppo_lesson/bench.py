"""Speed, measured: ``python -m ppo_lesson bench``.

Five tables, written to ``bench.json`` too:

1. generation throughput (tokens/s) with and without the KV cache at several answer lengths,
   on a model of the preset's size with random weights and EOS suppressed, so every answer has
   exactly the asked-for length;
2. one pretraining step, split into sampling the supervised batch and the optimizer step;
3. one PPO iteration, split into rollout generation, scoring (policy re-score, reference and
   reward model), bookkeeping (rewards, GAE, whitening, gold scores, statistics), the update, and what
   the loop of ``run`` adds after it (the undo copy of the trainer's state and the checkpoint);
4. the wall time of each stage of ``run`` (the real stages, trained afresh: no cache);
5. the distance to the limit: the FLOP/s a pretraining step and a PPO update achieve, next to the
   FLOP/s of plain ``torch.mm``/``torch.bmm`` at the model's own matrix shapes on this machine, and the
   share of each step's time spent outside matrix products (from ``torch.profiler``).

Times are the best of ``--repeats`` runs (the least disturbed by other work on the machine),
except the per-iteration means of table 3 and the single runs of table 4.
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from .config import Config, get_preset
from .evaluate import best_seconds, generation_speed
from .stages import seed_for

LENGTHS = (8, 16, 32, 64)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")  # + fused attention: profiled_matmul_seconds


def matmul_shapes(model_cfg, batch: int, src_len: int, tgt_len: int, value_head: bool = False) -> list[tuple]:
    """Every matrix product of one teacher-forced forward pass, as (count, m, k, n): ``count`` products
    of an (m, k) by a (k, n) matrix. Attention's q k^T and weights @ v count once per (example, head)."""
    from .task import VOCAB_SIZE

    d, heads, ff = model_cfg.d_model, model_cfg.n_heads, model_cfg.d_ff
    d_head, src_rows, tgt_rows = d // heads, batch * src_len, batch * tgt_len

    def attention(q_len, k_len):  # scores, then the weighted sum of values
        return [(batch * heads, q_len, d_head, k_len), (batch * heads, q_len, k_len, d_head)]

    def feed_forward(rows):
        return [(1, rows, d, ff), (1, rows, ff, d)]

    encoder = [(4, src_rows, d, d), *attention(src_len, src_len), *feed_forward(src_rows)]
    decoder = [
        (4, tgt_rows, d, d),  # self-attention q, k, v, out
        *attention(tgt_len, tgt_len),
        (2, tgt_rows, d, d),  # cross-attention q, out
        (2, src_rows, d, d),  # cross-attention k, v of the memory
        *attention(tgt_len, src_len),
        *feed_forward(tgt_rows),
    ]
    shapes = encoder * model_cfg.n_encoder_layers + decoder * model_cfg.n_decoder_layers
    shapes.append((1, tgt_rows, d, VOCAB_SIZE))
    if value_head:
        shapes.append((1, tgt_rows, d, 1))
    return shapes


def matmul_flops(shapes) -> int:
    """Floating-point operations (a multiply and an add each) of the products from ``matmul_shapes``."""
    return sum(2 * count * m * k * n for count, m, k, n in shapes)


def plain_matmul_seconds(shapes, repeats: int = 5) -> float:
    """Seconds this machine takes for the products alone, each timed as a plain torch.mm (or torch.bmm
    for a batch of them) on float32 tensors: the time a step would take with zero overhead."""
    total = 0.0
    for count, m, k, n in shapes:
        if count <= 4:  # a few large products (the q, k, v, out projections): mm, count times
            a, b = torch.randn(m, k), torch.randn(k, n)
            total += count * best_seconds(lambda a=a, b=b: torch.mm(a, b), repeats)
        else:  # many small ones (attention per example and head): one bmm
            a, b = torch.randn(count, m, k), torch.randn(count, k, n)
            total += best_seconds(lambda a=a, b=b: torch.bmm(a, b), repeats)
    return total


def profiled_matmul_seconds(fn) -> float:
    """Seconds ``fn()`` spends inside matrix products (MATMUL_OPS and torch's fused attention, which is
    two products and a softmax): the profiler's self time of those ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    inside = sum(
        e.self_cpu_time_total
        for e in prof.key_averages()
        if e.key in MATMUL_OPS or e.key.startswith("aten::_scaled_dot_product")
    )
    return inside / 1e6


def distance_to_limit(flops: float, seconds: float, shapes, seconds_in_matmuls, device="cpu", repeats: int = 5):
    """Achieved GFLOP/s (``flops`` of products in ``seconds``, one step) next to the rate of plain matrix
    products at the forward pass's ``shapes`` on this machine (the backward pass's transposed products
    are taken to run at the same rate), and the share of the step outside products, with
    ``seconds_in_matmuls()`` the profiled product time of one step. None off the CPU: the timings and
    the profiler's self times used here do not wait for a GPU."""
    if str(device) != "cpu":
        return None
    achieved, limit = flops / seconds, matmul_flops(shapes) / plain_matmul_seconds(shapes, repeats)
    return {
        "gflop": flops / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_gflops": limit / 1e9,
        "fraction_of_limit": achieved / limit,
        "share_outside_matmul": max(0.0, 1.0 - seconds_in_matmuls() / seconds),
    }


def bench_pretrain_step(cfg: Config, steps: int = 20, device="cpu") -> dict:
    """Milliseconds per pretraining step: sampling the supervised batch, and forward + backward + Adam."""
    from .flat_adam import FlatAdam
    from .model import Seq2SeqTransformer
    from .pretrain import teacher_forcing_loss
    from .task import supervised_batch

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = Seq2SeqTransformer(cfg.model).to(device).train()
    opt = FlatAdam([{"params": list(model.parameters())}], lr=cfg.pretrain.lr)  # as pretrain() builds it
    batches = []
    sample = lambda: batches.append(supervised_batch(cfg.pretrain.batch_size, cfg.task, rng))  # noqa: E731
    seconds_batch = best_seconds(lambda: [sample() for _ in range(steps)], 2) / steps
    src, tgt = (t.to(device) for t in batches[0])

    def train_steps():
        for _ in range(steps):
            loss = teacher_forcing_loss(model, src, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.clip_grad_norm_(cfg.pretrain.grad_clip)
            opt.step()
            loss.item()

    seconds_step = best_seconds(train_steps, 2) / steps
    total = seconds_batch + seconds_step
    shapes = matmul_shapes(cfg.model, src.size(0), src.size(1), tgt.size(1))
    flops = 3 * matmul_flops(shapes)  # forward + backward (twice the forward's products)
    return {
        "limit": distance_to_limit(
            flops, seconds_step, shapes, lambda: profiled_matmul_seconds(train_steps) / steps, device
        ),
        "batch_ms": 1000 * seconds_batch,
        "update_ms": 1000 * seconds_step,
        "batch_share": seconds_batch / total,
        "steps_per_s": 1 / total,
        "batch_size": cfg.pretrain.batch_size,
    }


def bench_ppo_iteration(cfg: Config, policy, reward_model, iterations: int = 10, device="cpu") -> dict:
    """Milliseconds per PPO iteration in each phase, over ``iterations`` iterations of the same
    ``PPOTrainer`` that ``finetune_ppo`` runs (its setup, seeds and code), with the rollout and the
    update timed apart. Generation and scoring are timed once more alone, on the rollout's own sources
    and answers; bookkeeping is the rest of the rollout. The last two phases are what the loop of ``run``
    adds after each iteration: the copy of the trainer's state that an interrupted next iteration goes back
    to, and the checkpoint written from it."""
    from .finetune import PPOAgent, PPOTrainer
    from .task import gold_scores

    ppo_cfg = cfg.ppo
    torch.manual_seed(seed_for(cfg, "ppo_setup"))
    agent = PPOAgent(copy.deepcopy(policy))
    trainer = PPOTrainer(agent, copy.deepcopy(policy), copy.deepcopy(reward_model), cfg, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    seconds = dict.fromkeys(("rollout", "generation", "scoring", "update", "gold", "undo copy", "checkpoint"), 0.0)
    update_flops = 0.0
    folder = tempfile.TemporaryDirectory()
    for _ in range(iterations):
        start = time.perf_counter()
        memory, rollout = trainer.rollout()
        seconds["rollout"] += time.perf_counter() - start
        start = time.perf_counter()
        row = trainer.learn(memory, rollout)
        seconds["update"] += time.perf_counter() - start
        start = time.perf_counter()
        state = trainer.state()
        seconds["undo copy"] += time.perf_counter() - start
        seconds["checkpoint"] += _seconds(trainer.save, Path(folder.name) / "ppo_state.pt", state)
        src, tokens, mask = memory.data["src"], memory.data["tokens"], memory.data["mask"]
        max_len, temperature = cfg.task.max_target_len, ppo_cfg.temperature
        seconds["generation"] += _seconds(agent.policy.generate, src, max_len, temperature, generator=generator)
        seconds["scoring"] += _seconds(_score_rollout, trainer, src, tokens, mask)
        seconds["gold"] += _seconds(gold_scores, src, tokens, mask, cfg.task)
        shapes = matmul_shapes(cfg.model, ppo_cfg.rollout_batch, src.size(1), tokens.size(1), value_head=True)
        update_flops += row["epochs_run"] * 3 * matmul_flops(shapes)  # every episode once per epoch run
    phases = {
        "generation": seconds["generation"],
        "scoring": seconds["scoring"],
        "bookkeeping": max(0.0, seconds["rollout"] - seconds["generation"] - seconds["scoring"]),
        "update": seconds["update"],
        "undo copy": seconds["undo copy"],
        "checkpoint": seconds["checkpoint"],
    }
    folder.cleanup()
    total = sum(phases.values())
    minibatch_shapes = matmul_shapes(
        cfg.model, ppo_cfg.rollout_batch // ppo_cfg.minibatches, src.size(1), tokens.size(1), True
    )
    return {
        "limit": distance_to_limit(
            update_flops / iterations,
            seconds["update"] / iterations,
            minibatch_shapes,
            lambda: profiled_matmul_seconds(lambda: trainer.learn(memory, rollout)),  # one more update, profiled
            device,
        ),
        "iterations": iterations,
        "rollout_batch": ppo_cfg.rollout_batch,
        "updates_per_iteration": f"{ppo_cfg.epochs} epochs x {ppo_cfg.minibatches} minibatches (early stop at "
        f"approx_kl > {ppo_cfg.target_kl})",
        "mean_epochs_run": sum(r["epochs_run"] for r in trainer.history) / len(trainer.history),
        "ms": {k: 1000 * v / iterations for k, v in phases.items()},
        "share": {k: v / total for k, v in phases.items()},
        "gold_scoring_ms": 1000 * seconds["gold"] / iterations,
        "iteration_ms": 1000 * total / iterations,
    }


@torch.no_grad()
def _score_rollout(trainer, src, tokens, mask) -> None:
    """The three teacher-forced passes of ``collect_rollouts``: policy and value, reference, reward model."""
    temperature = trainer.cfg.ppo.temperature
    trainer.agent(src, tokens, temperature)
    trainer.reference.score_tokens(src, tokens, temperature)
    trainer.reward_model.score(src, tokens, mask)


def _seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def bench_stages(cfg: Config, device="cpu", progress: bool = True) -> tuple[dict, object, object]:
    """Seconds of each stage of ``run``, trained afresh (reuse=False); returns them, the policy and
    the reward model."""
    from .evaluate import evaluate_policy
    from .pipeline import pretrained_policy, run_ppo, trained_reward_model

    seconds = {}
    start = time.perf_counter()
    policy, pretrain_info = pretrained_policy(cfg, device=device, reuse=False, progress=progress)
    seconds["pretrain"] = pretrain_info["seconds"]
    rm, reward_info = trained_reward_model(cfg, policy, device=device, reuse=False, progress=progress)
    seconds["reward_model"] = reward_info["seconds"]
    t = time.perf_counter()
    evaluate_policy(policy, cfg, reference=policy, reward_model=rm, samples_per_number=16)
    seconds["evaluate_before"] = time.perf_counter() - t
    agent, reference, history, seconds["ppo"] = run_ppo(cfg, policy, rm, device=device, progress=progress)
    t = time.perf_counter()
    evaluate_policy(agent.policy, cfg, reference=reference, reward_model=rm, samples_per_number=16)
    seconds["evaluate_after"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    seconds["ppo_per_iteration"] = seconds["ppo"] / max(1, len(history))
    return seconds, policy, rm


def run_bench(
    preset: str = "lesson",
    lengths=LENGTHS,
    batch: int = 128,
    repeats: int = 5,
    iterations: int = 10,
    stages: bool = True,
    device="cpu",
    progress: bool = True,
) -> dict:
    """Every measurement of this module for a preset (seed 0), as one dict."""
    from .pipeline import pretrained_policy, trained_reward_model

    cfg = get_preset(preset)
    device = str(device)  # the pipeline's functions take the device by name
    result = {
        "preset": preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "generation": generation_speed(cfg, lengths, batch, repeats, device),
        "pretrain_step": bench_pretrain_step(cfg, device=device),
    }
    if stages:
        result["stages"], policy, rm = bench_stages(cfg, device, progress)
    else:
        policy, _ = pretrained_policy(cfg, device=device, progress=progress)
        rm, _ = trained_reward_model(cfg, policy, device=device, progress=progress)
    result["ppo_iteration"] = bench_ppo_iteration(cfg, policy, rm, iterations, device)
    return result


def format_tables(result: dict) -> str:
    """The printed report: one table per measurement."""
    lines = [
        f"preset {result['preset']}, device {result['device']}, {result['threads']} thread(s), torch {result['torch']}",
        "",
        "1. generation (random weights, EOS suppressed), best of repeats",
        f"{'tokens':>8}{'batch':>7}{'tok/s cache':>14}{'tok/s no cache':>16}{'speed-up':>10}",
    ]
    for r in result["generation"]:
        lines.append(
            f"{r['length']:>8}{r['batch']:>7}{r['tokens_per_s_cache']:>14,.0f}"
            f"{r['tokens_per_s_no_cache']:>16,.0f}{r['speedup']:>9.1f}x"
        )
    p = result["pretrain_step"]
    lines += [
        "",
        f"2. pretraining step (batch {p['batch_size']}): sample batch {p['batch_ms']:.1f} ms "
        f"({100 * p['batch_share']:.0f}%), forward+backward+Adam {p['update_ms']:.1f} ms; "
        f"{p['steps_per_s']:.1f} steps/s",
    ]
    it = result["ppo_iteration"]
    lines += [
        "",
        f"3. one PPO iteration ({it['rollout_batch']} rollouts, {it['updates_per_iteration']}; "
        f"mean epochs run {it['mean_epochs_run']:.1f}), mean of {it['iterations']} iterations",
        f"{'phase':<14}{'ms':>9}{'share':>8}",
    ]
    for phase, ms in it["ms"].items():
        lines.append(f"{phase:<14}{ms:>9.1f}{100 * it['share'][phase]:>7.0f}%")
    lines.append(f"{'total':<14}{it['iteration_ms']:>9.1f}   (gold scoring alone: {it['gold_scoring_ms']:.1f} ms)")
    if "stages" in result:
        s = result["stages"]
        lines += ["", "4. stages of `run` (trained afresh)", f"{'stage':<18}{'seconds':>9}"]
        for name in ("pretrain", "reward_model", "evaluate_before", "ppo", "evaluate_after", "total"):
            lines.append(f"{name:<18}{s[name]:>9.1f}")
        lines.append(f"(PPO: {s['ppo_per_iteration']:.2f} s per iteration)")
    if result["pretrain_step"]["limit"] is None:  # not measured off the CPU
        return "\n".join(lines)
    lines += [
        "",
        "5. distance to the limit: matrix-product FLOP/s achieved vs plain torch.mm/bmm at the same shapes",
        f"{'one':<16}{'GFLOP':>8}{'achieved GFLOP/s':>18}{'mm GFLOP/s':>12}{'of limit':>10}{'outside mm':>12}",
    ]
    for name, key in (("pretrain step", "pretrain_step"), ("PPO update", "ppo_iteration")):  # GFLOP: one of each
        lim = result[key]["limit"]
        lines.append(
            f"{name:<16}{lim['gflop']:>8.2f}{lim['achieved_gflops']:>18.1f}{lim['matmul_gflops']:>12.1f}"
            f"{100 * lim['fraction_of_limit']:>9.0f}%{100 * lim['share_outside_matmul']:>11.0f}%"
        )
    return "\n".join(lines)


def bench_command(args) -> dict:
    """The ``bench`` command: measure, print the tables, write bench.json."""
    result = run_bench(
        args.preset,
        args.lengths,
        args.batch,
        args.repeats,
        args.iterations,
        stages=not args.skip_stages,
        device=args.device,
        progress=not args.no_progress,
    )
    out = Path(args.out) / "bench.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_tables(result))
    print(f"\nwrote {out}")
    return result
