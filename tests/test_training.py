"""Trustworthy training: the critic's own learning rate and the V = 0 baseline, an interrupt that
leaves everything at the last completed iteration, exact resume, and a results folder that is
always one whole run (or says that it is not)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ppo_lesson import finetune
from ppo_lesson.checkpoints import load_checkpoint
from ppo_lesson.cli import main
from ppo_lesson.config import PPOConfig
from ppo_lesson.finetune import PPOAgent, PPOTrainer, finetune_ppo, load_ppo_checkpoint
from ppo_lesson.results import INCOMPLETE, STAGING
from ppo_lesson.reward import normalize_reward_model
from ppo_lesson.task import encode_numbers, sample_numbers

# ------------------------------------------------------------------------ the critic


def test_value_head_has_its_own_learning_rate(tiny_cfg, tiny_policy, tiny_reward_model):
    """The optimizer holds two groups: the policy at ppo.lr, the value head at ppo.value_lr."""
    cfg = tiny_cfg.replace(ppo={"lr": 1e-5, "value_lr": 2e-3})
    trainer = PPOTrainer(PPOAgent(tiny_policy), copy.deepcopy(tiny_policy), tiny_reward_model, cfg)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-5, 2e-3]
    assert {id(p) for p in trainer.optimizer.params[1]} == {id(p) for p in trainer.agent.value_head.parameters()}


def test_without_critic_values_are_zero_and_the_value_head_never_moves(tiny_cfg, tiny_policy, tiny_reward_model):
    """use_critic=False: every stored value is 0, so explained variance and value loss are 0, and the
    value head keeps its initial (zero) weights through training."""
    cfg = tiny_cfg.replace(ppo={"use_critic": False, "iterations": 2})
    agent = PPOAgent(copy.deepcopy(tiny_policy))
    torch.nn.init.normal_(agent.value_head.weight)  # a head that would predict non-zero values
    head = copy.deepcopy(agent.value_head.state_dict())
    history = finetune_ppo(agent, copy.deepcopy(tiny_policy), tiny_reward_model, cfg, progress=False)
    assert [(h["explained_variance"], h["value_loss"]) for h in history] == [(0.0, 0.0)] * 2
    assert all(torch.equal(head[k], v) for k, v in agent.value_head.state_dict().items())


# ------------------------------------------------------------------------ refused settings and models


def test_adaptive_kl_with_zero_beta_is_refused():
    """The adaptive controller multiplies beta, so starting at 0 it could never move."""
    with pytest.raises(ValueError, match=r"^kl_beta: expected a positive float when adaptive_kl is True"):
        PPOConfig(kl_beta=0.0, adaptive_kl=True)
    assert PPOConfig(kl_beta=0.0, adaptive_kl=False).kl_beta == 0.0


def test_reference_that_is_the_trained_policy_is_refused(tiny_cfg, tiny_policy, tiny_reward_model):
    """With reference=agent.policy the KL penalty is always 0; a shared parameter is refused too."""
    agent = PPOAgent(tiny_policy)
    with pytest.raises(ValueError, match=r"^reference: expected a model that shares no parameters with the agent"):
        finetune_ppo(agent, agent.policy, tiny_reward_model, tiny_cfg, progress=False)
    shared = copy.deepcopy(tiny_policy)
    first_child = next(name for name, _ in shared.named_children())
    setattr(shared, first_child, getattr(agent.policy, first_child))  # one layer shared with the agent
    with pytest.raises(ValueError, match=r"^reference: .* shares \d+ of them"):
        finetune_ppo(agent, shared, tiny_reward_model, tiny_cfg, progress=False)


def test_caller_reward_model_is_not_frozen(tiny_cfg, tiny_policy, tiny_reward_model):
    """finetune_ppo scores under no_grad and leaves the caller's requires_grad flags as they were."""
    cfg = tiny_cfg.replace(ppo={"iterations": 1})
    finetune_ppo(PPOAgent(copy.deepcopy(tiny_policy)), tiny_policy, tiny_reward_model, cfg, progress=False)
    assert all(p.requires_grad for p in tiny_reward_model.parameters())


def test_reward_model_is_normalized_at_the_given_temperature(tiny_cfg, tiny_policy, tiny_reward_model):
    """Scores of the reference's answers sampled at 0.7 (the same draws normalize_reward_model made)
    have mean 0 and std 1 after normalizing at 0.7; at 1.0 they would not."""
    stats = normalize_reward_model(tiny_reward_model, tiny_policy, tiny_cfg, n=256, temperature=0.7)
    assert stats["temperature"] == 0.7
    import random

    src = encode_numbers(sample_numbers(256, tiny_cfg.task, random.Random(tiny_cfg.seed + 3)))
    gen = torch.Generator().manual_seed(tiny_cfg.seed + 3)
    out = tiny_policy.generate(src, tiny_cfg.task.max_target_len, temperature=0.7, generator=gen)
    scores = tiny_reward_model.score(src, out.tokens, out.mask)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4
    with pytest.raises(ValueError, match=r"^temperature: expected a positive float"):
        normalize_reward_model(tiny_reward_model, tiny_policy, tiny_cfg, n=16, temperature=0.0)


def test_pipeline_normalizes_at_the_ppo_temperature_cached_or_not(tiny_cfg, tiny_policy):
    """trained_reward_model normalizes at cfg.ppo.temperature, also when the cache holds the same
    reward model normalized for another PPO temperature."""
    from ppo_lesson.pipeline import trained_reward_model

    cfg = tiny_cfg.replace(seed=31, ppo={"temperature": 0.7})
    _, fresh = trained_reward_model(cfg, tiny_policy, progress=False)
    assert fresh["normalization"]["temperature"] == 0.7
    rm, cached = trained_reward_model(cfg.replace(ppo={"temperature": 1.3}), tiny_policy, progress=False)
    assert cached["from_cache"] and cached["normalization"]["temperature"] == 1.3
    assert rm.score_mean.item() == cached["normalization"]["mean"] != fresh["normalization"]["mean"]


# ------------------------------------------------------------------------ interrupts and checkpoints


def _interrupt_during_update(monkeypatch, on_call: int):
    """Make the ``on_call``-th ppo_update (1-based) apply its full update, then raise KeyboardInterrupt:
    the worst moment, with the weights and the optimizer already changed."""
    real_update, calls = finetune.ppo_update, []

    def update_then_interrupt(*args, **kwargs):
        calls.append(1)
        stats = real_update(*args, **kwargs)
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return stats

    monkeypatch.setattr(finetune, "ppo_update", update_then_interrupt)


def _states_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("direct_iterations", [0, 1])
def test_interrupt_mid_update_restores_the_last_completed_iteration(
    tiny_cfg, tiny_policy, tiny_reward_model, monkeypatch, direct_iterations
):
    """A Ctrl-C after the next iteration's update has been applied puts the agent, the optimizer, the KL
    controller, the random generators and the history back where the last completed iteration left them.
    run_iteration_or_undo keeps its copy of the completed state for the next call; an ``iteration()`` run
    directly in between makes that copy stale, and the undo then goes back to the direct one's end."""
    trainer = PPOTrainer(PPOAgent(copy.deepcopy(tiny_policy)), tiny_policy, tiny_reward_model, tiny_cfg)
    trainer.run_iteration_or_undo()
    for _ in range(direct_iterations):
        trainer.iteration()
    completed = trainer.state()
    _interrupt_during_update(monkeypatch, on_call=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_iteration_or_undo()
    assert _states_equal(trainer.state(), completed)
    assert len(trainer.history) == 1 + direct_iterations


def test_state_is_a_copy_and_the_checkpoint_holds_all_of_it(tiny_cfg, tiny_policy, tiny_reward_model, tmp_path):
    """state() equals a deep copy of the live dicts taken at the same moment, and stays equal to it while
    training goes on (its tensors are copies, not the live ones); a saved checkpoint loads back to the same
    state, the optimizer's moments and step counts (packed with the weights) included."""
    trainer = PPOTrainer(PPOAgent(copy.deepcopy(tiny_policy)), tiny_policy, tiny_reward_model, tiny_cfg)
    trainer.run_iteration_or_undo()
    state = trainer.state()
    deep = copy.deepcopy(
        {"agent": trainer.agent.state_dict(), "optimizer": trainer.optimizer.state_dict(), "history": trainer.history}
    )
    assert all(_states_equal(state[k], deep[k]) for k in deep)
    storages = {t.untyped_storage().data_ptr() for t in state["agent"].values()}
    assert len(storages) == 2, "the weights are copied as one clone per FlatAdam buffer (policy, value head)"
    trainer.save(tmp_path / "state.pt", state)
    trainer.iteration()  # moves every weight and moment
    assert not _states_equal(trainer.agent.state_dict(), deep["agent"])
    assert all(_states_equal(state[k], deep[k]) for k in deep)
    loaded = load_ppo_checkpoint(tmp_path / "state.pt")
    assert loaded["optimizer"]["state"] and all(
        isinstance(v, torch.Tensor) for s in loaded["optimizer"]["state"].values() for v in s.values()
    )
    assert all(_states_equal(loaded[k], state[k]) for k in state)


def test_finetune_ppo_interrupted_keeps_checkpoint_and_weights_in_step(
    tiny_cfg, tiny_policy, tiny_reward_model, monkeypatch, tmp_path
):
    """Interrupted in its second update, finetune_ppo returns 1 row; the checkpoint says 1 iteration
    and holds exactly the agent's weights, loadable with weights_only=True."""
    _interrupt_during_update(monkeypatch, on_call=2)
    agent, path = PPOAgent(copy.deepcopy(tiny_policy)), tmp_path / "state.pt"
    history = finetune_ppo(agent, tiny_policy, tiny_reward_model, tiny_cfg, progress=False, checkpoint=path)
    state = load_ppo_checkpoint(path)  # load_checkpoint uses weights_only=True
    assert len(history) == state["iteration"] == len(state["history"]) == 1
    assert _states_equal(state["agent"], agent.state_dict())
    assert _states_equal(state["reference"], tiny_policy.state_dict())


def test_resume_continues_exactly(tiny_cfg, tiny_policy, tiny_reward_model, monkeypatch, tmp_path):
    """Interrupted at iteration 1 and resumed from its checkpoint, finetune_ppo ends with the same
    history and weights as a run that never stopped."""
    cfg = tiny_cfg.replace(ppo={"iterations": 3})
    whole = PPOAgent(copy.deepcopy(tiny_policy))
    expected = finetune_ppo(whole, copy.deepcopy(tiny_policy), copy.deepcopy(tiny_reward_model), cfg, progress=False)

    path = tmp_path / "state.pt"
    with monkeypatch.context() as patch:
        _interrupt_during_update(patch, on_call=2)
        finetune_ppo(
            PPOAgent(copy.deepcopy(tiny_policy)), tiny_policy, tiny_reward_model, cfg, progress=False, checkpoint=path
        )
    from ppo_lesson.pipeline import resume_ppo

    _, agent, _, _, history, _ = resume_ppo(path, progress=False)
    without_seconds = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert without_seconds(history) == without_seconds(expected)
    assert _states_equal(agent.state_dict(), whole.state_dict())


# ------------------------------------------------------------------------ the run command


def _run(out: Path, *extra: str) -> None:
    main(["run", "--preset", "tiny", "--out", str(out), "--no-progress", "--threads", "1", *extra])


def _exit_code_and_message(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([*args, "--no-progress", "--threads", "1"])
    return info.value.code, capsys.readouterr().err


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in summary.items() if not k.startswith("seconds_")}


def _snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A complete tiny run, its stages taken from the test cache (filled first), like every run here."""
    from ppo_lesson.config import tiny_config
    from ppo_lesson.pipeline import pretrained_policy, trained_reward_model

    trained_reward_model(tiny_config(), pretrained_policy(tiny_config(), progress=False)[0], progress=False)
    out = tmp_path_factory.mktemp("good") / "out"
    _run(out, "--reuse")
    return out


def test_interrupted_run_resumes_to_the_same_results(good_run, tmp_path, monkeypatch, capsys):
    """Through the CLI: Ctrl-C during PPO iteration 1 exits 130, says how to continue and keeps no
    summary; ``run --resume`` then writes the same summary.json and metrics.jsonl (timings aside) as
    the uninterrupted run, and removes the unfinished folder."""
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_during_update(patch, on_call=2)
        code, err = _exit_code_and_message(capsys, "run", "--preset", "tiny", "--reuse", "--out", str(out))
    assert code == 130
    assert "interrupted" in err and f"--resume {out}" in err and "after 1 of 3 PPO iterations" in err
    assert not (out / "summary.json").exists()
    assert load_checkpoint(out / STAGING / "ppo_state.pt", "ppo_state")["extra"]["iteration"] == 1

    main(["run", "--resume", str(out), "--no-progress", "--threads", "1"])
    assert _summary(out) == _summary(good_run)
    assert _metrics(out) == _metrics(good_run)
    assert not (out / STAGING).exists() and not (out / INCOMPLETE).exists()


def test_resume_without_an_unfinished_run_is_refused(tmp_path, capsys):
    code, err = _exit_code_and_message(capsys, "run", "--resume", str(tmp_path))
    assert code == 2 and "--resume: expected an unfinished run in" in err


def test_interrupted_run_leaves_the_previous_results_untouched(good_run, tmp_path, monkeypatch, capsys):
    """After a good run into out, an interrupted one changes none of its files."""
    out = tmp_path / "out"
    _copy_run(good_run, out)
    before = _snapshot(out)
    _interrupt_during_update(monkeypatch, on_call=1)
    code, err = _exit_code_and_message(capsys, "run", "--preset", "tiny", "--reuse", "--out", str(out))
    assert code == 130 and "still holds the previous complete run" in err
    assert _snapshot(out) == before


def test_diverging_run_leaves_the_previous_results_untouched(good_run, tmp_path, monkeypatch, capsys):
    """A NaN value loss in PPO iteration 1: exit 1, the old results stay whole, and the message says
    what was kept instead of claiming that nothing was saved."""
    out = tmp_path / "out"
    _copy_run(good_run, out)
    before = _snapshot(out)
    real_value_loss, calls = finetune.value_loss, []

    def nan_in_second_iteration(*args):
        calls.append(1)
        loss = real_value_loss(*args)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(finetune, "value_loss", nan_in_second_iteration)
    code, err = _exit_code_and_message(capsys, "run", "--preset", "tiny", "--reuse", "--out", str(out))
    assert code == 1 and "ppo: non-finite loss at step 1" in err
    assert "Nothing was saved" not in err and "still holds the previous complete run" in err
    assert "after its last good PPO iteration (1 of 3)" in err
    assert _snapshot(out) == before


def test_write_error_before_the_move_leaves_the_previous_results_untouched(good_run, tmp_path, monkeypatch, capsys):
    """A failing figure write (say, a full disk) after training: exit 1, the old run intact, and the
    trained state kept, so ``--resume`` finishes the job without training again."""
    out = tmp_path / "out"
    _copy_run(good_run, out)
    before = _snapshot(out)
    with monkeypatch.context() as patch:
        patch.setattr("matplotlib.figure.Figure.savefig", _raise_oserror)  # the write itself, whoever calls it
        code, err = _exit_code_and_message(capsys, "run", "--preset", "tiny", "--reuse", "--out", str(out))
    assert code == 1 and "could not write the results" in err and "--resume" in err
    assert _snapshot(out) == before
    main(["run", "--resume", str(out), "--no-progress", "--threads", "1"])
    assert _summary(out) == _summary(good_run) and _metrics(out) == _metrics(good_run)


def test_write_error_while_moving_marks_the_folder_incomplete(good_run, tmp_path, monkeypatch, capsys):
    """A failure after the first file moved in: out carries the INCOMPLETE marker and the message
    says so; ``--resume`` completes the move and removes the marker."""
    out = tmp_path / "out"
    _copy_run(good_run, out)
    import os

    real_replace, moved = os.replace, []

    def fail_second_move_into_out(src, dst):
        if Path(dst).parent == out:
            moved.append(dst)
            if len(moved) == 2:
                raise OSError(28, "No space left on device")
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail_second_move_into_out)
        code, err = _exit_code_and_message(capsys, "run", "--preset", "tiny", "--reuse", "--out", str(out))
    assert code == 1 and f"is marked {INCOMPLETE}" in err
    assert (out / INCOMPLETE).exists()
    main(["run", "--resume", str(out), "--no-progress", "--threads", "1"])
    assert not (out / INCOMPLETE).exists()
    assert _summary(out) == _summary(good_run) and _metrics(out) == _metrics(good_run)


def _copy_run(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())


def _raise_oserror(*args, **kwargs):
    raise OSError(28, "No space left on device")
