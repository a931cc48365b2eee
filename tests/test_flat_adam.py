"""FlatAdam (flat_adam.py): torch's fused Adam and clip_grad_norm_ over one buffer per parameter group must
give the same numbers, bit for bit, as over the separate tensors; computed here both ways."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from ppo_lesson.finetune import PPOAgent, PPOTrainer
from ppo_lesson.flat_adam import FlatAdam
from ppo_lesson.pretrain import teacher_forcing_loss
from ppo_lesson.task import supervised_batch


def _two_groups(model: nn.Module) -> list[dict]:
    """The embedding (the first parameter) at one learning rate, everything after it at another, as PPO's
    policy and value head. In ``model.parameters()`` order: the norm of the per-tensor norms is summed in
    the groups' order, which is the plain clip's only when it is the parameters' order."""
    embed = [model.embed.weight]
    rest = [p for p in model.parameters() if p is not model.embed.weight]
    assert next(model.parameters()) is model.embed.weight
    return [{"params": embed, "lr": 1e-2}, {"params": rest, "lr": 3e-3}]


def _train(model, optimizer, cfg, steps: int, max_norm: float) -> list[float]:
    """Teacher-forced steps with a clip, the plain way (torch Adam) or FlatAdam's; returns the norms."""
    rng, norms = random.Random(7), []
    model.train()
    for _ in range(steps):
        src, tgt = supervised_batch(32, cfg.task, rng)
        optimizer.zero_grad(set_to_none=True)
        teacher_forcing_loss(model, src, tgt).backward()
        if isinstance(optimizer, FlatAdam):
            norms.append(optimizer.clip_grad_norm_(max_norm).item())
        else:
            norms.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True).item())
        optimizer.step()
    return norms


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    different = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
    assert not different, f"weights differ: {different}"


@pytest.mark.parametrize("max_norm", [0.05, 100.0], ids=["clipping", "not-clipping"])
def test_same_updates_as_fused_adam_and_clip_grad_norm_bit_for_bit(random_model, tiny_cfg, max_norm):
    plain_model, flat_model, start = random_model, copy.deepcopy(random_model), copy.deepcopy(random_model)
    plain = torch.optim.Adam(_two_groups(plain_model), betas=(0.9, 0.98), eps=1e-5, fused=True)
    flat = FlatAdam(_two_groups(flat_model), betas=(0.9, 0.98), eps=1e-5)
    plain_norms = _train(plain_model, plain, tiny_cfg, 6, max_norm)
    flat_norms = _train(flat_model, flat, tiny_cfg, 6, max_norm)
    assert plain_norms == flat_norms
    assert (max(plain_norms) > max_norm) == (max_norm < 1), "the clip must act in one case and not the other"
    _assert_same_weights(plain_model, flat_model)
    moved = [k for k, v in flat_model.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert moved, "training changed no weight"


def test_parameters_live_in_the_buffer_and_stay_there(random_model, tiny_cfg):
    flat = FlatAdam([{"params": list(random_model.parameters())}], lr=1e-2)
    buffer = flat.buffers[0]
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel() * buffer.element_size()
    assert all(start <= p.data_ptr() < end for p in random_model.parameters())
    random_model.load_state_dict(copy.deepcopy(random_model.state_dict()))  # copies in place
    before = buffer.detach().clone()
    _train(random_model, flat, tiny_cfg, 1, 1.0)
    assert all(start <= p.data_ptr() < end for p in random_model.parameters())
    assert not torch.equal(before, buffer.detach()), "the step must move the module's own weights"
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in random_model.parameters()]), buffer.detach())


def test_loads_a_plain_adams_state_and_continues_the_same(random_model, tiny_cfg):
    """An older checkpoint holds one Adam entry per parameter: laid end to end, training goes on exactly."""
    plain_model = random_model
    plain = torch.optim.Adam(_two_groups(plain_model), eps=1e-5, fused=True)
    _train(plain_model, plain, tiny_cfg, 3, 1.0)
    resumed_model = copy.deepcopy(plain_model)
    resumed = FlatAdam(_two_groups(resumed_model), eps=1e-5)
    resumed.load_state_dict(plain.state_dict())
    assert [len(g["params"]) for g in resumed.state_dict()["param_groups"]] == [1, 1]
    _train(plain_model, plain, tiny_cfg, 2, 1.0)
    _train(resumed_model, resumed, tiny_cfg, 2, 1.0)
    _assert_same_weights(plain_model, resumed_model)
    other = FlatAdam(_two_groups(copy.deepcopy(random_model)), eps=1e-5)
    other.load_state_dict(resumed.state_dict())  # its own format round-trips
    assert all(
        torch.equal(a, b)
        for s, t in zip(other.state_dict()["state"].values(), resumed.state_dict()["state"].values())
        for a, b in zip(s.values(), t.values())
    )


def test_state_dict_is_a_torch_adams_over_the_buffers(random_model, tiny_cfg):
    """The same keys, options and moments as torch's Adam, its per-parameter moments laid end to end."""
    plain_model, flat_model = random_model, copy.deepcopy(random_model)
    plain = torch.optim.Adam(_two_groups(plain_model), betas=(0.9, 0.98), eps=1e-5, fused=True)
    flat = FlatAdam(_two_groups(flat_model), betas=(0.9, 0.98), eps=1e-5)
    _train(plain_model, plain, tiny_cfg, 2, 1.0)
    _train(flat_model, flat, tiny_cfg, 2, 1.0)
    expected, got = flat._flatten_state(plain.state_dict()), flat.state_dict()
    assert got["param_groups"] == expected["param_groups"]
    assert list(got["state"]) == [0, 1] and all(
        set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in got["state"].values()
    )
    for index, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(got["state"][index][key], value), (index, key)
            assert got["state"][index][key].dtype == value.dtype, (index, key)


def test_load_state_dict_refuses_moments_of_another_size(random_model, tiny_cfg):
    flat = FlatAdam(_two_groups(random_model), eps=1e-5)
    _train(random_model, flat, tiny_cfg, 1, 1.0)
    state = flat.state_dict()
    state["state"][1] = {**state["state"][1], "exp_avg": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"state_dict: group 1 expected step, exp_avg and exp_avg_sq of \d+ numbers"):
        FlatAdam(_two_groups(copy.deepcopy(random_model)), eps=1e-5).load_state_dict(state)


def test_training_never_imports_torch_dynamo(tmp_path):
    """Building a ``torch.optim`` optimizer imports ``torch._dynamo`` (most of a second); pretraining, the
    reward model and PPO all train with FlatAdam, which does not (in a fresh process: this one has it)."""
    script = """
import sys
from ppo_lesson.config import tiny_config
from ppo_lesson.pipeline import pretrained_policy, run_ppo, trained_reward_model
cfg = tiny_config().replace(ppo={"iterations": 1})
policy, _ = pretrained_policy(cfg, progress=False)
rm, _ = trained_reward_model(cfg, policy, progress=False)
run_ppo(cfg, policy, rm, progress=False)
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    env = {**os.environ, "PPO_LESSON_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dynamo imported: False" in done.stdout, done.stdout


def test_a_group_without_gradients_is_skipped_as_adam_skips_it(random_model, tiny_cfg):
    head = nn.Linear(4, 1)  # in no loss: like the value head when the critic is off
    flat = FlatAdam([{"params": list(random_model.parameters())}, {"params": list(head.parameters())}], lr=1e-2)
    before = copy.deepcopy(head.state_dict())
    _train(random_model, flat, tiny_cfg, 2, 1.0)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    assert list(flat.state_dict()["state"]) == [0], "no Adam state for a group that never had a gradient"


def test_refuses_a_group_where_only_some_parameters_have_gradients(random_model, tiny_cfg):
    unused = nn.Parameter(torch.zeros(3))
    flat = FlatAdam([{"params": [*random_model.parameters(), unused]}], lr=1e-2)
    with pytest.raises(RuntimeError, match=r"groups\[0\]: 1 of \d+ parameters got no gradient"):
        _train(random_model, flat, tiny_cfg, 1, 1.0)


@pytest.mark.parametrize(
    ("groups", "kwargs", "error", "message"),
    [
        (lambda m: [{"params": []}], {}, ValueError, r"groups\[0\]: expected at least one parameter"),
        (lambda m: [{"params": [m.embed.weight]}, {"params": [m.embed.weight]}], {}, ValueError, "appears twice"),
        (lambda m: [{"params": [m.embed.weight.detach()]}], {}, TypeError, "nn.Parameter"),
        (lambda m: [{"params": [m.embed.weight]}], {"fused": False}, ValueError, "adam_kwargs: .* got \\['fused'\\]"),
        (
            lambda m: [{"params": [m.embed.weight], "momentum": 0.9}],
            {},
            ValueError,
            r"groups\[0\]: .* got \['momentum'\]",
        ),
    ],
)
def test_bad_groups_are_refused_by_name(random_model, groups, kwargs, error, message):
    with pytest.raises(error, match=message):
        FlatAdam(groups(random_model), **kwargs)


@pytest.mark.parametrize("use_critic", [True, False])
def test_ppo_trainer_learns_exactly_as_with_torchs_adam(tiny_cfg, tiny_policy, tiny_reward_model, use_critic):
    """Three PPO iterations with the trainer's FlatAdam and with a plain fused Adam over the same groups
    (ppo_update's other branch: clip_grad_norm_ over the parameters) end in the same weights and history."""
    cfg = tiny_cfg.replace(ppo={"use_critic": use_critic, "max_grad_norm": 0.05})
    trainers = []
    for plain in (False, True):
        torch.manual_seed(5)
        agent = PPOAgent(copy.deepcopy(tiny_policy))
        trainer = PPOTrainer(agent, copy.deepcopy(tiny_policy), copy.deepcopy(tiny_reward_model), cfg)
        if plain:
            trainer.optimizer = torch.optim.Adam(agent.parameter_groups(cfg.ppo), eps=1e-5, fused=True)
        for _ in range(3):
            trainer.iteration()
        trainers.append(trainer)
    flat, plain = trainers
    assert isinstance(flat.optimizer, FlatAdam) and not isinstance(plain.optimizer, FlatAdam)
    _assert_same_weights(flat.agent, plain.agent)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(flat.history) == drop(plain.history)
