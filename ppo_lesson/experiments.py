"""PPO's claims, measured over seeds: ``python -m ppo_lesson experiments``.

Three experiments, each a set of PPO runs that differ in one setting and share, per seed, the
same pretrained policy and reward model (trained once per seed and cached):

1. sample efficiency: PPO (K epochs of minibatches per batch of answers) against vanilla policy
   gradient (one gradient step per batch), with the same number of sampled answers and the
   same small learning-rate search for each;
2. stability: the clipped surrogate against the unclipped one (same K epochs, no early stop),
   at the default learning rate and at a 10x larger one;
3. reward hacking: no KL penalty, a fixed one and the adaptive controller, run long with a
   larger learning rate: the proxy and the gold reward as the policy drifts from the reference.

Runs are independent given their settings (every generator is seeded from the config), so they
are spread over worker processes of one thread each; the numbers do not depend on how many.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from functools import cache
from pathlib import Path

import torch

from .config import Config, get_preset
from .evaluate import evaluate_policy, evaluation_sources, trailing_mean
from .pipeline import pretrained_policy, run_ppo, trained_reward_model
from .progress import progress_bar
from .task import decode, ended_with_eos, gold_scores, source_numbers

EXPERIMENTS = ("sample_efficiency", "stability", "reward_hacking")
FIGURES = {  # figure names; the full lesson run writes them into the repository's figures/
    "sample_efficiency": "06_sample_efficiency",
    "stability": "06_stability",
    "reward_hacking": "06_reward_hacking",
}
HISTORY_KEYS = (
    "iteration", "gold_reward", "proxy_reward", "valid_fraction", "kl", "kl_beta",
    "approx_kl", "clipfrac", "entropy", "epochs_run",
)  # fmt: skip
SMOOTH = 5  # iterations in the trailing mean used for thresholds and drops (128 answers per point are noisy)
EVAL_SAMPLES_PER_NUMBER = 8  # final evaluation: every source number this many times


def vanilla_pg(lr: float) -> dict:
    """PPO settings that reduce it to vanilla policy gradient: one gradient step per batch of answers
    (the ratio is 1 at that step, so clipping never acts); advantages and KL penalty unchanged."""
    return {"epochs": 1, "minibatches": 1, "lr": lr}


def experiment_plan(cfg: Config, quick: bool = False) -> dict:
    """Every run's PPO settings (overrides of ``cfg.ppo``), grouped by experiment.

    Budgets are multiples of the preset's ``ppo.iterations`` (60 for the lesson): sample efficiency
    and stability 1x, reward hacking 2.5x; ``quick`` cuts each to 1/3 and runs one learning rate
    per method, the clipped/unclipped pair at the larger learning rate only, and two of the three
    KL settings. Reward hacking runs at 10x the default learning rate, the large one of the
    stability experiment (in exploratory runs at 1e-4, 150 iterations without a KL penalty did not
    fool this reward model)."""
    base, lr = cfg.ppo.iterations, cfg.ppo.lr
    iters = lambda factor: max(1, round(factor * base))  # noqa: E731
    # three each, half a decade apart; PG's grid sits 10x higher: it takes 1 step per batch, PPO up to K x M
    lrs = {"ppo": [_nice(lr * f) for f in (1 / 3, 1, 10 / 3)], "pg": [_nice(lr * f) for f in (10 / 3, 10, 100 / 3)]}
    big_lr = hack_lr = _nice(10 * lr)
    if quick:
        lrs = {"ppo": [lr], "pg": [_nice(10 * lr)]}
    n_eff = iters(1 / 3 if quick else 1)
    efficiency = [
        {"variant": f"{method} lr={x:.0e}", "method": method, "lr": x,
         "ppo": {"lr": x, "iterations": n_eff} if method == "ppo" else {**vanilla_pg(x), "iterations": n_eff}}
        for method in ("ppo", "pg") for x in lrs[method]
    ]  # fmt: skip
    n_stab = iters(1 / 3 if quick else 1)
    stability = [
        {"variant": f"{'clipped' if clip else 'unclipped'} lr={x:.0e}", "clip": clip, "lr": x,
         "ppo": {"clip": clip, "lr": x, "target_kl": None, "iterations": n_stab}}
        for x in ([big_lr] if quick else [lr, big_lr]) for clip in (True, False)
    ]  # fmt: skip
    n_hack = iters(1 / 3 if quick else 2.5)
    kl_settings = {
        "no KL penalty": {"kl_beta": 0.0, "adaptive_kl": False},
        f"fixed beta={cfg.ppo.kl_beta:g}": {"kl_beta": cfg.ppo.kl_beta, "adaptive_kl": False},
        f"adaptive (target {cfg.ppo.kl_target:g} nats)": {"kl_beta": cfg.ppo.kl_beta, "adaptive_kl": True},
    }
    if quick:
        kl_settings.pop(next(k for k in kl_settings if k.startswith("adaptive")))
    hacking = [
        {"variant": name, "ppo": {**kl, "lr": hack_lr, "iterations": n_hack}} for name, kl in kl_settings.items()
    ]
    return {
        "sample_efficiency": {
            "runs": efficiency,
            "gold_level": 0.6,
            "learning_rates": lrs,
            "iterations": n_eff,
            "samples": n_eff * cfg.ppo.rollout_batch,
        },
        "stability": {"runs": stability, "iterations": n_stab, "learning_rates": sorted({r["lr"] for r in stability})},
        "reward_hacking": {"runs": hacking, "iterations": n_hack, "lr": hack_lr},
    }


def _nice(x: float) -> float:
    """x rounded to 2 significant digits (3e-5 * 10 / 3 is 1e-4, not 1.0000000000000003e-4)."""
    return float(f"{x:.2g}")


def samples_to_reach(gold: list[float], level: float, rollout_batch: int) -> int | None:
    """Sampled answers until the smoothed on-policy gold reward first reaches ``level`` (None if never)."""
    for i, g in enumerate(trailing_mean(gold, SMOOTH)):
        if g >= level:
            return (i + 1) * rollout_batch
    return None


def _gold_at_fractions(gold: list[float], rollout_batch: int, fractions=(0.25, 0.5, 1.0)) -> dict:
    """Smoothed on-policy gold reward after a quarter, half and all of the sampled answers."""
    smoothed = trailing_mean(gold, SMOOTH)
    points = {max(1, round(f * len(gold))) for f in fractions}
    return {str(n * rollout_batch): _round(smoothed[n - 1]) for n in sorted(points)}


def worst_drop(gold: list[float]) -> float:
    """Largest fall of the smoothed gold reward below the best value seen before it (0 if it never falls)."""
    best, drop = float("-inf"), 0.0
    for g in trailing_mean(gold, SMOOTH):
        best = max(best, g)
        drop = max(drop, best - g)
    return drop


@torch.no_grad()
def fooled_samples(policy, cfg: Config, reward_model, n: int = 5, seed: int = 1234) -> dict:
    """Answers the reward model loves and the gold scorer rejects: the highest proxy scores among
    the invalid answers (gold -1) the policy samples on the evaluation set, distinct (N, answer)."""
    device = policy.device
    src = evaluation_sources(cfg, EVAL_SAMPLES_PER_NUMBER).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = policy.eval().generate(src, cfg.task.max_target_len, temperature=cfg.ppo.temperature, generator=gen)
    gold = gold_scores(src.cpu(), out.tokens.cpu(), out.mask.cpu(), cfg.task)
    proxy = reward_model.score(src, out.tokens, out.mask).cpu()
    finished = ended_with_eos(out.tokens, out.mask).cpu()
    numbers = source_numbers(src.cpu())
    rows, seen = [], set()
    for i in proxy.argsort(descending=True).tolist():
        key = (numbers[i], decode(out.tokens[i].cpu()))
        if gold[i] > -1 or key in seen:
            continue
        seen.add(key)
        rows.append({"N": key[0], "answer": key[1], "ended": bool(finished[i]), "proxy": round(proxy[i].item(), 3)})
        if len(rows) == n:
            break
    invalid = gold == -1
    return {
        "top": rows,
        "invalid_fraction": invalid.float().mean().item(),
        "proxy_invalid_mean": proxy[invalid].mean().item() if invalid.any() else None,
        "proxy_valid_mean": proxy[~invalid].mean().item() if (~invalid).any() else None,
    }


# ----- running: one task = one PPO run; worker processes load the cached stages once per seed -----


@cache
def _stages(preset: str, seed: int, device: str):
    cfg = get_preset(preset, seed=seed)
    policy, pre = pretrained_policy(cfg, device=device, progress=False)
    rm, rew = trained_reward_model(cfg, policy, device=device, progress=False)
    return policy, rm, pre, rew


def _stage_task(task: dict) -> dict:
    """Train (or load) the pretrained policy and reward model of one seed; returns their facts."""
    start = time.perf_counter()
    policy, rm, pre, rew = _stages(task["preset"], task["seed"], task["device"])
    cfg = get_preset(task["preset"], seed=task["seed"])
    before = evaluate_policy(policy, cfg, policy, rm, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    return {
        "seed": task["seed"],
        "pretrain_from_cache": pre["from_cache"],
        "reward_model_from_cache": rew["from_cache"],
        "reward_model_accuracy": rew["heldout_accuracy"],
        "before": _rounded(before),
        "seconds": time.perf_counter() - start,
    }


def _run_task(task: dict) -> dict:
    """One PPO run: fine-tune, then evaluate on the fixed evaluation set."""
    policy, rm, _, _ = _stages(task["preset"], task["seed"], task["device"])
    cfg = get_preset(task["preset"], seed=task["seed"]).replace(ppo=task["ppo"])
    agent, reference, history, seconds = run_ppo(cfg, policy, rm, device=task["device"], progress=False)
    final = evaluate_policy(agent.policy, cfg, reference, rm, samples_per_number=EVAL_SAMPLES_PER_NUMBER)
    record = {
        "experiment": task["experiment"],
        "variant": task["variant"],
        "seed": task["seed"],
        "settings": {"ppo": dataclasses.asdict(cfg.ppo), "seed": cfg.seed, "preset": task["preset"]},
        "history": [{k: _round(h[k]) for k in HISTORY_KEYS} for h in history],
        "final": _rounded(final),
        "seconds": round(seconds, 2),
    }
    if task["experiment"] == "reward_hacking":
        record["fooled"] = _rounded(fooled_samples(agent.policy, cfg, rm))
    return record


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _cost(task: dict) -> float:
    """Rough relative cost of a run, to start the longest first (they finish together)."""
    ppo = task.get("ppo", {})
    return ppo.get("iterations", 1) * (2 + ppo.get("epochs", 4) * ppo.get("minibatches", 4) / 4)


def _map(fn, tasks, workers: int, threads: int, desc: str, progress: bool):
    """Results of ``fn`` over ``tasks`` (in the tasks' order), in-process or over worker processes."""
    bar = progress_bar(desc=desc, total=len(tasks), enabled=progress)
    results = [None] * len(tasks)
    if workers <= 1 or len(tasks) <= 1:
        torch.set_num_threads(threads)
        for i, task in enumerate(tasks):
            results[i] = fn(task)
            bar.update()
    else:
        order = sorted(range(len(tasks)), key=lambda i: -_cost(tasks[i]))
        # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(threads,)) as pool:
            for i, result in zip(order, pool.imap(fn, [tasks[i] for i in order])):
                results[i] = result
                bar.update()
    bar.close()
    return results


def run_experiments(
    preset: str = "lesson",
    seeds=(0, 1, 2),
    quick: bool = False,
    device="cpu",
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Run the three experiments for every seed; returns the plan, a summary and every run's record.

    Each record holds the run's exact PPO settings, its per-iteration history (on-policy rollout
    metrics) and its final metrics on the fixed evaluation set."""
    start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    device = str(device)
    plans = {s: experiment_plan(get_preset(preset, seed=s), quick) for s in seeds}
    plan = plans[seeds[0]]
    stage_tasks = [{"preset": preset, "seed": s, "device": device} for s in seeds]
    stages = _map(_stage_task, stage_tasks, workers, threads, "pretrain + reward model", progress)
    seconds_stages = time.perf_counter() - start
    tasks = [
        {**run, "experiment": name, "preset": preset, "seed": s, "device": device}
        for name in EXPERIMENTS
        for run in plans[seeds[0]][name]["runs"]
        for s in seeds
    ]
    records = _map(_run_task, tasks, workers, threads, "PPO runs", progress)
    cfg = get_preset(preset, seed=seeds[0])
    result = {
        "preset": preset,
        "seeds": seeds,
        "quick": quick,
        "device": device,
        "workers": workers,
        "threads_per_worker": threads,
        "rollout_batch": cfg.ppo.rollout_batch,
        "plan": plan,
        "stages": stages,
        "runs": records,
    }
    result["summary"] = summarize(result)
    result["seconds"] = {
        "stages": round(seconds_stages, 1),
        "ppo_runs": round(time.perf_counter() - start - seconds_stages, 1),
        "ppo_runs_sum": round(sum(r["seconds"] for r in records), 1),
        "total": round(time.perf_counter() - start, 1),
    }
    return result


# ----- summaries: the numbers each claim is judged by -----


def _runs(result: dict, experiment: str, variant: str | None = None) -> list[dict]:
    return [r for r in result["runs"] if r["experiment"] == experiment and (variant is None or r["variant"] == variant)]


def _curve(run: dict, key: str) -> list[float]:
    return [h[key] for h in run["history"]]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(result: dict) -> dict:
    """Per-seed numbers of each experiment (and their means), as stored in experiments.json."""
    plan, batch = result["plan"], result["rollout_batch"]
    eff = plan["sample_efficiency"]
    efficiency = {"gold_level": eff["gold_level"], "samples_per_run": eff["samples"], "methods": {}}
    for method in ("ppo", "pg"):
        search = {}
        for run in (r for r in eff["runs"] if r["method"] == method):
            runs = _runs(result, "sample_efficiency", run["variant"])
            reach = [samples_to_reach(_curve(r, "gold_reward"), eff["gold_level"], batch) for r in runs]
            search[run["variant"]] = {
                "lr": run["lr"],
                "final_gold_mean": _round(_mean([r["final"]["gold_reward"] for r in runs])),
                "final_gold": [r["final"]["gold_reward"] for r in runs],
                "samples_to_level": reach,  # per seed, None: never
            }
        best = max(search, key=lambda v: search[v]["final_gold_mean"])
        per_seed = [
            {
                "seed": r["seed"],
                "samples_to_level": samples_to_reach(_curve(r, "gold_reward"), eff["gold_level"], batch),
                "gold_with_equal_samples": r["final"]["gold_reward"],
                "gold_on_policy_at_samples": _gold_at_fractions(_curve(r, "gold_reward"), batch),
                "valid_fraction": r["final"]["valid_fraction"],
                "kl_to_reference": r["final"]["kl_to_reference"],
            }
            for r in _runs(result, "sample_efficiency", best)
        ]
        efficiency["methods"][method] = {
            "search": search,
            "search_budget": f"{len(search)} learning rates x {len(result['seeds'])} seeds x {eff['samples']} "
            "sampled answers; best by final gold (evaluation set) averaged over seeds",
            "best_variant": best,
            "best_lr": search[best]["lr"],
            "per_seed": per_seed,
            "gold_with_equal_samples_mean": _round(_mean([p["gold_with_equal_samples"] for p in per_seed])),
            "seeds_reaching_level": sum(p["samples_to_level"] is not None for p in per_seed),
        }
    stability = {}
    for run in plan["stability"]["runs"]:
        rows = []
        for r in _runs(result, "stability", run["variant"]):
            gold = _curve(r, "gold_reward")
            rows.append(
                {
                    "seed": r["seed"],
                    "final_gold": r["final"]["gold_reward"],
                    "best_gold": _round(max(trailing_mean(gold, SMOOTH))),
                    "worst_drop": _round(worst_drop(gold)),
                    "final_valid_fraction": r["final"]["valid_fraction"],
                    "final_kl_to_reference": r["final"]["kl_to_reference"],
                    "max_approx_kl": _round(max(_curve(r, "approx_kl"))),
                    "mean_clipfrac": _round(_mean(_curve(r, "clipfrac"))),
                }
            )
        means = _means(rows, ("final_gold", "worst_drop", "final_kl_to_reference"))
        stability[run["variant"]] = {"per_seed": rows, **means}
    hacking = {}
    for run in plan["reward_hacking"]["runs"]:
        rows = []
        for r in _runs(result, "reward_hacking", run["variant"]):
            gold = trailing_mean(_curve(r, "gold_reward"), SMOOTH)
            peak = max(range(len(gold)), key=gold.__getitem__)
            rows.append(
                {
                    "seed": r["seed"],
                    "final_gold": r["final"]["gold_reward"],
                    "final_proxy": r["final"]["proxy_reward"],
                    "final_valid_fraction": r["final"]["valid_fraction"],
                    "final_kl_to_reference": r["final"]["kl_to_reference"],
                    "peak_gold": _round(gold[peak]),
                    "peak_gold_iteration": peak,
                    "final_kl_beta": r["history"][-1]["kl_beta"],
                    "fooled": r["fooled"]["top"],
                }
            )
        hacking[run["variant"]] = {
            "per_seed": rows,
            **_means(rows, ("final_gold", "final_proxy", "final_valid_fraction", "final_kl_to_reference")),
        }
    return {"sample_efficiency": efficiency, "stability": stability, "reward_hacking": hacking}


def _means(rows, keys):
    return {f"{k}_mean": _round(_mean([r[k] for r in rows])) for k in keys}


def _round(x, digits: int = 4):
    return round(x, digits) if isinstance(x, float) else x


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return _round(obj)


# ----- figures and the printed report -----


def figure_data(result: dict) -> dict:
    """The curves each figure draws, taken from the run records."""
    plan, batch = result["plan"], result["rollout_batch"]
    eff = result["summary"]["sample_efficiency"]
    labels = {"ppo": "PPO", "pg": "vanilla PG"}
    curves, search, speed = {}, {}, {}
    for method, info in eff["methods"].items():
        name = f"{labels[method]} (lr {info['best_lr']:.0e})"
        curves[name] = {
            r["seed"]: ([(h["iteration"] + 1) * batch for h in r["history"]], _curve(r, "gold_reward"))
            for r in _runs(result, "sample_efficiency", info["best_variant"])
        }
        search[labels[method]] = {v["lr"]: v["final_gold"] for v in info["search"].values()}
        speed[labels[method]] = {v["lr"]: v["samples_to_level"] for v in info["search"].values()}
    stability = [
        {
            "label": "clipped" if run["clip"] else "unclipped",
            "lr": run["lr"],
            "seed": r["seed"],
            "iteration": _curve(r, "iteration"),
            "gold": _curve(r, "gold_reward"),
            "kl": _curve(r, "kl"),
        }
        for run in plan["stability"]["runs"]
        for r in _runs(result, "stability", run["variant"])
    ]
    hacking = [
        {
            "label": run["variant"],
            "seed": r["seed"],
            "iteration": _curve(r, "iteration"),
            "kl": _curve(r, "kl"),
            "proxy": _curve(r, "proxy_reward"),
            "gold": _curve(r, "gold_reward"),
        }
        for run in plan["reward_hacking"]["runs"]
        for r in _runs(result, "reward_hacking", run["variant"])
    ]
    return {
        "sample_efficiency": {
            "curves": curves,
            "lr_search": search,
            "samples_to_level": speed,
            "gold_level": eff["gold_level"],
            "budget": eff["samples_per_run"],
        },
        "stability": {"runs": stability},
        "reward_hacking": {"runs": hacking, "lr": plan["reward_hacking"]["lr"]},
    }


def make_figures(result: dict) -> dict:
    """The three figures (matplotlib Figures), keyed by experiment."""
    from . import plots

    data = figure_data(result)
    n = len(result["seeds"])
    return {
        "sample_efficiency": plots.plot_sample_efficiency(**data["sample_efficiency"], n_seeds=n),
        "stability": plots.plot_stability(**data["stability"]),
        # long, noisy runs whose trend matters: a wider window than the other figures
        "reward_hacking": plots.plot_reward_hacking(**data["reward_hacking"], smooth=2 * SMOOTH),
    }


def save_figures(result: dict, folder) -> list[str]:
    from . import plots

    paths = []
    for name, fig in make_figures(result).items():
        paths.append(str(plots.save_figure(fig, FIGURES[name], folder)))
        plots.plt.close(fig)
    return paths


def report(result: dict) -> str:
    """A plain-text report of the summary (what the command prints)."""
    s = result["summary"]
    lines = []
    eff = s["sample_efficiency"]
    lines.append(
        f"1. sample efficiency: {eff['samples_per_run']} sampled answers per run; "
        f"samples to reach smoothed gold {eff['gold_level']} (None: never)"
    )
    for method, info in eff["methods"].items():
        lines.append(f"   {method}: lr search, mean final gold and samples to {eff['gold_level']} per seed:")
        for v in info["search"].values():
            lines.append(f"     lr {v['lr']:.0e}: {v['final_gold_mean']:.3f}; {v['samples_to_level']}")
        lines.append(f"   {method} at lr {info['best_lr']:.0e} (best mean final gold):")
        for p in info["per_seed"]:
            along = ", ".join(f"{n}: {g:.2f}" for n, g in p["gold_on_policy_at_samples"].items())
            lines.append(
                f"     seed {p['seed']}: samples to {eff['gold_level']}: {p['samples_to_level']}; "
                f"final gold {p['gold_with_equal_samples']:.3f} (evaluation set), valid {p['valid_fraction']:.3f}; "
                f"on-policy gold by samples {along}"
            )
    lines.append("2. stability (no early stop): final gold / worst drop from best / final KL (nats) per seed")
    for variant, info in s["stability"].items():
        cells = "; ".join(
            f"{r['final_gold']:.3f} / {r['worst_drop']:.3f} / {r['final_kl_to_reference']:.2f}"
            for r in info["per_seed"]
        )
        lines.append(f"   {variant:<22} {cells}")
    lines.append("3. reward hacking: final proxy / gold / valid / KL (nats) per seed")
    for variant, info in s["reward_hacking"].items():
        cells = "; ".join(
            f"{r['final_proxy']:.2f} / {r['final_gold']:.3f} / {r['final_valid_fraction']:.3f} / "
            f"{r['final_kl_to_reference']:.1f}"
            for r in info["per_seed"]
        )
        lines.append(f"   {variant:<28} {cells}")
        fooled = [f"{f['N']} -> {_shown(f)} ({f['proxy']:+.2f})" for r in info["per_seed"] for f in r["fooled"][:2]]
        if fooled:
            lines.append(f"     loved by the reward model, rejected by the gold scorer: {', '.join(fooled)}")
    return "\n".join(lines)


def _shown(row: dict) -> str:
    """An answer as printed: '(empty)' for none, a trailing '...' when it never wrote EOS."""
    return (row["answer"] or "(empty)") + ("" if row["ended"] else "...")


def experiments_command(args) -> dict:
    """The ``experiments`` command: run, write experiments.json and the figures, print the report."""
    from . import plots

    out = Path(args.out)
    quick = args.quick
    n_seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    workers = args.workers if args.workers is not None else _default_workers()
    threads = args.threads or 1
    result = run_experiments(
        args.preset, seeds, quick, device=args.device, workers=workers, threads=threads, progress=not args.no_progress
    )
    # only the full lesson run replaces the figures the notebook and README show
    folder = plots.FIGURES_DIR if (args.preset == "lesson" and not quick) else out
    result["figures"] = save_figures(result, folder)
    result["command"] = (
        f"python -m ppo_lesson experiments --preset {args.preset} --seeds {len(seeds)} --first-seed {seeds[0]}"
        + (" --quick" if quick else "")
        + f" --workers {workers} --threads {threads}"
    )
    (out / "experiments.json").write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(
        f"\nseconds: stages {result['seconds']['stages']}, PPO runs {result['seconds']['ppo_runs']} "
        f"({len(result['runs'])} runs, {workers} worker(s) x {threads} thread(s)), total {result['seconds']['total']}"
    )
    print(f"wrote {out / 'experiments.json'} and {', '.join(result['figures'])}")
    return result


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def add_parser(sub, add_common, seed_type, positive_int) -> None:
    """The ``experiments`` subcommand."""
    p = sub.add_parser(
        "experiments",
        help="measure PPO's claims over seeds: sample efficiency, stability, reward hacking (about 15 minutes)",
        description="Three experiments on the same pretrained policy and reward model per seed: (1) PPO against "
        "vanilla policy gradient with equal sampled answers and an equal learning-rate search, (2) clipped against "
        "unclipped surrogate at the default and a 10x learning rate, (3) no KL penalty, a fixed one and the "
        "adaptive controller, run long. Writes OUT/experiments.json (per-seed numbers and every run's settings) "
        "and the figures 06_sample_efficiency.png, 06_stability.png and 06_reward_hacking.png (into figures/ for "
        "the full lesson run, else into OUT).",
    )
    p.add_argument("--preset", default="lesson", help="settings to start from: lesson (default) or tiny")
    p.add_argument("--seeds", type=positive_int, default=None, help="how many seeds (default: 3, or 1 with --quick)")
    p.add_argument("--first-seed", type=seed_type, default=0, help="the first seed; the others count up (default: 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced version (1/3 of the iterations, one learning rate per method, fewer variants) "
        "for the notebook and tests; figures go into OUT",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="worker processes running PPO runs side by side, each with --threads threads "
        "(default: the number of CPU cores; results do not depend on it)",
    )
    add_common(p, "runs/experiments")
    p.set_defaults(handler=experiments_command)
