"""The figures package: one module per notebook, short modules and functions, one shared style, and
``save_figure`` writing where $PPO_LESSON_FIGURES says."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import math
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ppo_lesson.plots import beyond_ppo, experiments, objective, ppo_loop, style  # noqa: E402

PLOTS = Path(__file__).resolve().parent.parent / "ppo_lesson" / "plots"

FIGURES_BY_MODULE = {
    "transformer": [
        "plot_embeddings", "plot_positional_encoding", "plot_masks", "plot_attention_maps", "plot_kv_cache_speed",
    ],
    "pretraining": [
        "plot_teacher_forcing", "plot_pretrain_history", "plot_next_token_distributions", "plot_policy_taste",
    ],
    "reward_model": [
        "plot_bradley_terry", "plot_reward_history", "plot_reward_vs_gold", "plot_near_misses",
        "plot_score_normalization",
    ],
    "objective": [
        "draw_clip_objective", "plot_clip_objective", "plot_overshoot", "plot_gae_episode", "plot_kl_controller",
    ],
    "ppo_loop": ["plot_ppo_history", "plot_gold_before_after", "plot_critic_comparison", "plot_rollout_rewards"],
    "experiments": ["plot_sample_efficiency", "plot_stability", "plot_reward_hacking", "plot_variant_curves"],
    "beyond_ppo": ["comparison_figures", "plot_rl_methods", "plot_gold_vs_kl", "plot_dpo_best_of_n"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _public_functions(module) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    }


@pytest.mark.parametrize("module_name", sorted(FIGURES_BY_MODULE))
def test_every_figure_lives_in_the_module_of_its_notebook(module_name):
    module = importlib.import_module(f"ppo_lesson.plots.{module_name}")
    assert _public_functions(module) == set(FIGURES_BY_MODULE[module_name])


def test_the_old_flat_modules_are_gone_and_the_package_reexports_nothing():
    assert importlib.util.find_spec("ppo_lesson.compare_plots") is None
    assert not (PLOTS.parent / "plots.py").exists()
    package = importlib.import_module("ppo_lesson.plots")
    assert not any(name.startswith(("plot_", "save_", "figures")) for name in vars(package))


@pytest.mark.parametrize("path", sorted(PLOTS.glob("*.py")), ids=lambda p: p.name)
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    assert len(source.splitlines()) < 350, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length < 50, f"{path.name}:{node.lineno} {node.name} is {length} lines"


def test_no_figure_repeats_the_grid_styling():
    offenders = [p.name for p in PLOTS.glob("*.py") if p.name != "style.py" and ".grid(" in p.read_text()]
    assert offenders == []


def test_save_figure_writes_into_the_folder_named_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_LESSON_FIGURES", str(tmp_path / "figs"))
    assert style.figures_dir() == tmp_path / "figs"
    fig, _ = plt.subplots()
    path = style.save_figure(fig, "01_check")
    assert path == tmp_path / "figs" / "01_check.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    explicit = style.save_figure(fig, "01_check", tmp_path / "elsewhere")
    assert explicit == tmp_path / "elsewhere" / "01_check.png" and explicit.is_file()


def test_without_the_environment_figures_go_to_the_committed_folder(monkeypatch):
    monkeypatch.delenv("PPO_LESSON_FIGURES", raising=False)
    assert style.figures_dir() == style.FIGURES_DIR == PLOTS.parent.parent / "figures"
    monkeypatch.setenv("PPO_LESSON_FIGURES", "")  # empty counts as unset
    assert style.figures_dir() == style.FIGURES_DIR


def test_style_axes_draws_the_shared_grid_and_legend():
    fig, (left, right) = plt.subplots(1, 2)
    left.plot([0, 1], label="a")
    right.plot([0, 1], label="b")
    style.style_axes(left, right, grid="y", legend="small")
    for ax in (left, right):
        assert all(line.get_visible() and line.get_alpha() == style.GRID_ALPHA for line in ax.get_ygridlines())
        assert not any(line.get_visible() for line in ax.get_xgridlines())
        assert ax.get_legend().get_texts()[0].get_fontsize() == style.SMALL_FONT
    with pytest.raises(ValueError, match="legend"):
        style.style_axes(left, legend="big")


def _history(n: int = 10) -> list[dict]:
    keys = ("proxy_reward", "gold_reward", "valid_fraction", "kl", "kl_k3", "clipfrac", "approx_kl", "entropy",
            "value_loss", "explained_variance")  # fmt: skip
    return [{"iteration": i, **{k: 0.1 * i + j for j, k in enumerate(keys)}} for i in range(n)]


def test_ppo_history_draws_six_styled_panels_with_raw_and_smoothed_curves():
    fig = ppo_loop.plot_ppo_history(_history(), smooth=3)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["reward", "validity", "KL to reference", "update size", "entropy", "critic"]
    reward = fig.axes[0]
    raw, smoothed = reward.lines[0], reward.lines[1]
    assert raw.get_alpha() == style.RAW_ALPHA and raw.get_color() == smoothed.get_color()
    assert list(smoothed.get_ydata()[:3]) == pytest.approx([0.0, 0.05, 0.1])  # trailing mean of 0, 0.1, 0.2
    assert all(ax.get_legend() is not None and ax.xaxis.get_gridlines()[0].get_visible() for ax in fig.axes)


def test_clip_objective_is_flat_above_one_plus_eps_for_a_positive_advantage():
    fig = objective.plot_clip_objective(clip_eps=0.2, advantages=(2.0,))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    clipped = next(line for line in fig.axes[0].lines if line.get_label().startswith("L$^{CLIP}$"))
    ratio, value = clipped.get_xdata(), clipped.get_ydata()
    assert max(value) == pytest.approx(2.0 * 1.2)
    assert all(v == pytest.approx(2.0 * r) for r, v in zip(ratio, value) if r <= 1.2)


def test_sample_efficiency_adds_the_third_panel_only_with_samples_to_level():
    curves = {"PPO": {0: ([32, 64, 96], [0.1, 0.2, 0.4]), 1: ([32, 64, 96], [0.0, 0.3, 0.5])}}
    lr_search = {"PPO": {1e-4: [0.4, 0.5], 1e-3: [0.2, 0.1]}}
    two = experiments.plot_sample_efficiency(curves, lr_search, gold_level=0.3, n_seeds=2)
    three = experiments.plot_sample_efficiency(
        curves, lr_search, 0.3, 2, samples_to_level={"PPO": {1e-4: [64, None], 1e-3: [None, None]}}, budget=96
    )
    assert isinstance(two, Figure) and len(two.axes) == 2 and len(three.axes) == 3
    assert three.axes[2].get_xscale() == "log" and "reach gold 0.3" in three.axes[2].get_title()


def test_variant_curves_draw_gold_kl_and_the_update_step_of_each_run():
    history = [{"iteration": i, "gold_reward": 0.1 * i, "kl": 0.2 * i, "approx_kl": 1e-3 * (i + 1)} for i in range(4)]
    fig = experiments.plot_variant_curves({"PPO": history, "no clip": history[:2]}, smooth=1)
    gold, kl, step = fig.axes
    assert [line.get_label() for line in gold.lines] == ["PPO", "no clip"]
    assert list(kl.lines[0].get_ydata()) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert step.get_yscale() == "log" and list(step.lines[1].get_ydata()) == pytest.approx([1e-3, 2e-3])


def _fake_comparison() -> dict:
    """A comparison result of the shape ``compare.run`` writes, with two seeds and made-up numbers."""
    methods, rl = {}, []
    for method in beyond_ppo.RL_METHODS:
        per_seed = [{"kl_to_reference": 0.5 + s, "gold_reward": 0.3} for s in (0, 1)]
        methods[method] = {"best_lr": 1e-4, "per_seed": per_seed}
        for s in (0, 1):
            history = [{"gold_reward": 0.1 * i, "valid_fraction": 0.9} for i in range(6)]
            rl.append({"method": method, "lr": 1e-4, "seed": s, "history": history, "seconds": 5.0 + s})
    methods["dpo"] = {"best_lr": 1e-4}
    dpo_history = [{"passes": p, "gold_reward": 0.1 * p, "kl": 0.2 * p} for p in range(4)]
    dpo = [{"runs": {"0.0001": {"lr": 1e-4, "history": dpo_history}}} for _ in (0, 1)]
    rows = [{"n": n, "gold_reward": 0.1 * n, "proxy_reward": 0.2 * n, "kl_estimate": 0.1 * n,
             "kl_bound": math.log(n) - (n - 1) / n} for n in (1, 2, 4)]  # fmt: skip
    return {"rollout_batch": 16, "seeds": [0, 1], "summary": {"methods": methods}, "rl": rl, "dpo": dpo,
            "best_of_n": [{"rows": rows}, {"rows": rows}]}  # fmt: skip


def test_comparison_figures_draws_the_three_figures_of_notebook_07():
    figures = beyond_ppo.comparison_figures(_fake_comparison())
    assert set(figures) == {"rl", "plane", "dpo_bon"}
    assert all(isinstance(fig, Figure) for fig in figures.values())
    gold_axes = figures["rl"].axes[0]
    bold = [line for line in gold_axes.lines if line.get_linewidth() == 2.2]
    assert len(bold) == len(beyond_ppo.RL_METHODS)  # one mean curve per RL method, over its faint seeds
    assert list(bold[0].get_xdata()) == [16 * (i + 1) for i in range(6)]  # sampled answers, one batch per step


def test_heat_map_figures_accept_tensors():
    from ppo_lesson.plots import transformer

    attention = torch.softmax(torch.randn(2, 4, 4), dim=-1)
    fig = transformer.plot_attention_maps([("self", attention, list("abcd"), list("abcd"))])
    assert isinstance(fig, Figure)
    heads = [ax for ax in fig.axes if ax.get_title().startswith("self, head")]
    assert [ax.get_title() for ax in heads] == ["self, head 0", "self, head 1"]
    assert torch.allclose(torch.as_tensor(heads[1].images[0].get_array()), attention[1])
