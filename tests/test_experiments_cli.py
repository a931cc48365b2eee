"""The command line end to end on the tiny preset: ``run``, ``experiments --quick`` and ``bench``.

Each command is run as a user would (``python -m ppo_lesson ...`` in a subprocess) where that is
the point of the test, and through ``main([...])`` in-process elsewhere, to keep the file fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppo_lesson.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {
    "gold_reward_before",
    "gold_reward_after",
    "proxy_reward_before",
    "proxy_reward_after",
    "valid_fraction_before",
    "valid_fraction_after",
    "kl_to_reference",
    "reward_model_accuracy",
    "seconds_pretrain",
    "seconds_reward_model",
    "seconds_ppo",
    "seconds_total",
}
COMMON = ["--out", "--device", "--threads", "--no-progress"]
OPTIONS = {
    "run": ["--preset", "--seed", "--reuse", "--resume", *COMMON],
    "experiments": ["--preset", "--seeds", "--first-seed", "--quick", "--workers", *COMMON],
    "bench": ["--preset", "--lengths", "--batch", "--repeats", "--iterations", "--skip-stages", *COMMON],
}


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPO_LESSON_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "ppo_lesson", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _run_tiny(out: Path, *extra: str) -> dict:
    main(["run", "--preset", "tiny", "--out", str(out), "--no-progress", "--threads", "1", *extra])
    return json.loads((out / "summary.json").read_text())


def _without_seconds(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("seconds_")}


def test_run_tiny_end_to_end_writes_every_output_and_repeats_exactly(tmp_path, monkeypatch):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    result = _cli(["run", "--preset", "tiny", "--out", str(out_a), "--no-progress", "--threads", "1"], tmp_path / "c1")
    assert result.returncode == 0, result.stderr
    assert "gold reward" in result.stdout and "after PPO" in result.stdout

    summary = json.loads((out_a / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["from_cache"] == {"pretrain": False, "reward_model": False}
    metrics = [json.loads(line) for line in (out_a / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == summary["ppo_iterations"] == summary["config"]["ppo"]["iterations"]
    assert [m["iteration"] for m in metrics] == list(range(len(metrics)))
    for name in ("policy_pretrained.pt", "reward_model.pt", "policy_ppo.pt", "ppo_curves.png", "gold_before_after.png"):
        assert (out_a / name).stat().st_size > 0, name

    # the same seed again, in-process with its own empty cache: the same numbers, only the timings differ
    monkeypatch.setenv("PPO_LESSON_CACHE", str(tmp_path / "c2"))
    again = _run_tiny(out_b)
    assert _without_seconds(again) == _without_seconds(summary)

    # --reuse takes both stages from the cache that run filled, and lands on the same numbers
    reused = _run_tiny(tmp_path / "r", "--reuse")
    assert reused["from_cache"] == {"pretrain": True, "reward_model": True}
    assert reused["seconds_pretrain"] == reused["seconds_reward_model"] == 0.0
    keep = lambda s: {k: v for k, v in _without_seconds(s).items() if k != "from_cache"}  # noqa: E731
    assert keep(reused) == keep(summary)


@pytest.fixture
def no_training(monkeypatch):
    """Make any start of training fail loudly: bad input must be rejected before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad command-line input")

    monkeypatch.setattr("ppo_lesson.pipeline.pretrain", refuse)
    monkeypatch.setattr("ppo_lesson.pipeline.collect_preferences", refuse)
    monkeypatch.setattr("ppo_lesson.pipeline.finetune_ppo", refuse)


def _bad_input(tmp_path, capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "args, named",
    [
        (["run", "--preset", "huge"], "preset"),
        (["run", "--seed", "-1"], "--seed"),
        (["run", "--threads", "0"], "--threads"),
        (["experiments", "--seeds", "0"], "--seeds"),
        (["experiments", "--preset", "huge"], "preset"),
        (["bench", "--lengths", "16", "-4"], "--lengths"),
        (["bench", "--preset", "huge"], "preset"),
    ],
)
def test_bad_input_exits_non_zero_naming_the_option_before_training(tmp_path, capsys, no_training, args, named):
    err = _bad_input(tmp_path, capsys, [*args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert named in err, err


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_out_pointing_at_a_file_is_rejected(tmp_path, capsys, no_training, command):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    err = _bad_input(tmp_path, capsys, [command, "--preset", "tiny", "--out", str(target), "--no-progress"])
    assert "--out" in err and "a_file" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_cuda_without_a_gpu_is_rejected(tmp_path, capsys, no_training, command):
    err = _bad_input(tmp_path, capsys, [command, "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path)])
    assert "device" in err and "cuda" in err, err


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_help_mentions_every_option(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command").choices[command]
    declared = {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert declared == set(OPTIONS[command]), "update OPTIONS in this test when an option is added"
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"
    for option in OPTIONS[command]:
        assert option in text, f"{command} --help does not mention {option}"


def test_experiments_quick_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiments", "--preset", "tiny", "--quick", "--out", str(out), "--no-progress", "--workers", "1"]
    main([*args, "--threads", "1"])
    printed = capsys.readouterr().out
    assert "1. sample efficiency" in printed and "3. reward hacking" in printed
    result = json.loads((out / "experiments.json").read_text())
    assert result["seeds"] == [0] and result["quick"] is True
    assert {r["experiment"] for r in result["runs"]} == {"sample_efficiency", "stability", "reward_hacking"}
    for run in result["runs"]:  # every run states its exact settings and has one history row per iteration
        assert len(run["history"]) == run["settings"]["ppo"]["iterations"]
        assert {"gold_reward", "proxy_reward", "valid_fraction", "kl_to_reference"} <= run["final"].keys()
    pg = next(r for r in result["runs"] if r["variant"].startswith("pg"))
    assert (pg["settings"]["ppo"]["epochs"], pg["settings"]["ppo"]["minibatches"]) == (1, 1)
    unclipped = next(r for r in result["runs"] if r["variant"].startswith("unclipped"))
    assert unclipped["settings"]["ppo"]["clip"] is False
    summary = result["summary"]
    for method in ("ppo", "pg"):
        assert [p["seed"] for p in summary["sample_efficiency"]["methods"][method]["per_seed"]] == [0]
    for variant in summary["stability"].values():
        assert {"final_gold", "worst_drop", "final_kl_to_reference"} <= variant["per_seed"][0].keys()
    for variant in summary["reward_hacking"].values():
        assert "fooled" in variant["per_seed"][0]
    # a quick or tiny run never replaces the lesson's figures in figures/
    assert sorted(Path(p).name for p in result["figures"]) == [
        "06_reward_hacking.png",
        "06_sample_efficiency.png",
        "06_stability.png",
    ]
    assert all(Path(p).parent == out for p in result["figures"])


def test_bench_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--preset", "tiny", "--out", str(out), "--lengths", "4", "8", "--batch", "16"]
    main([*args, "--repeats", "1", "--iterations", "2", "--no-progress", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "tok/s cache" in printed and "one PPO iteration" in printed and "stages of `run`" in printed
    result = json.loads((out / "bench.json").read_text())
    assert [r["length"] for r in result["generation"]] == [4, 8]
    for row in result["generation"]:
        assert row["tokens_per_s_cache"] > 0 and row["tokens_per_s_no_cache"] > 0
        assert row["speedup"] == pytest.approx(row["tokens_per_s_cache"] / row["tokens_per_s_no_cache"])
    phases = result["ppo_iteration"]["ms"]
    assert set(phases) == {"generation", "scoring", "bookkeeping", "update", "undo copy", "checkpoint"}
    assert sum(phases.values()) == pytest.approx(result["ppo_iteration"]["iteration_ms"])
    assert {"pretrain", "reward_model", "ppo", "total"} <= result["stages"].keys()


def test_experiment_results_do_not_depend_on_the_number_of_workers():
    from ppo_lesson.experiments.runner import run_experiments

    kwargs = {"preset": "tiny", "seeds": [0, 1], "quick": True, "threads": 1, "progress": False}
    alone, shared = run_experiments(workers=1, **kwargs), run_experiments(workers=2, **kwargs)
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]  # noqa: E731
    assert strip(shared["runs"]) == strip(alone["runs"])
    assert shared["summary"] == alone["summary"]


def test_learning_rate_labels_name_the_rate_each_run_used():
    """Every learning rate of the experiments' plan and of the comparison's DPO grid is labelled with a
    text that reads back as that very rate (3.3e-5 is not shown as 3e-05), in the reports and figures."""
    from ppo_lesson.beyond_ppo import comparison_plan
    from ppo_lesson.config import lesson_config
    from ppo_lesson.experiments.plan import experiment_plan
    from ppo_lesson.stats import lr_text

    assert [lr_text(x) for x in (3.3e-5, 1e-4, 3.3e-4, 1e-3, 3e-6)] == ["3.3e-5", "1e-4", "3.3e-4", "1e-3", "3e-6"]
    cfg = lesson_config()
    plan = experiment_plan(cfg)
    lrs = {run["ppo"]["lr"] for experiment in plan.values() for run in experiment["runs"] if "lr" in run["ppo"]}
    lrs |= set(comparison_plan(cfg)["dpo"]["learning_rates"]) | set(comparison_plan(cfg)["learning_rates"])
    assert {3.3e-5, 3.3e-4, 3e-6} <= lrs
    assert all(float(lr_text(lr)) == lr for lr in lrs), sorted(lrs)
