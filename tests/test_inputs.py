"""Bad inputs get a clear error naming the argument, before any training; a non-finite loss stops
training with a TrainingError naming the step, and nothing is cached."""

from __future__ import annotations

import copy

import pytest
import torch

from ppo_lesson import finetune, pipeline, pretrain, reward
from ppo_lesson.checkpoints import stage_path
from ppo_lesson.config import Config, ModelConfig, PPOConfig, TaskConfig, get_preset, resolve_device, set_seed
from ppo_lesson.errors import TrainingError
from ppo_lesson.finetune import PPOAgent
from ppo_lesson.ppo import clipped_surrogate_loss, compute_gae, kl_penalty_rewards
from ppo_lesson.task import encode, encode_numbers, pad_batch


def _mask_inputs():
    x = torch.zeros(2, 4)
    return x, x.clone(), x.clone(), torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: PPOConfig(clip_eps=0), "clip_eps"),
        (lambda: PPOConfig(clip_eps=-1), "clip_eps"),
        (lambda: PPOConfig(gamma=1.5), "gamma"),
        (lambda: PPOConfig(lam=-0.1), "lam"),
        (lambda: PPOConfig(rollout_batch=8, minibatches=9), "minibatches"),
        (lambda: PPOConfig(kl_beta=-0.1), "kl_beta"),
        (lambda: PPOConfig(temperature=0), "temperature"),
        (lambda: PPOConfig(target_kl=0), "target_kl"),
        (lambda: TaskConfig(max_terms=1, max_number=45), "max_terms"),
        (lambda: TaskConfig(min_number=1), "min_number"),
        (lambda: TaskConfig(min_number=30, max_number=20), "max_number"),
        (lambda: ModelConfig(d_model=32, n_heads=3), "n_heads"),
        (lambda: ModelConfig(dropout=1.0), "dropout"),
        (lambda: Config(model=ModelConfig(max_len=8)), r"model\.max_len"),
        (lambda: get_preset("nope"), "preset"),
        (lambda: get_preset("tiny").replace(optimizer={"lr": 1}), "replace"),
        (lambda: set_seed(-1), "seed"),
        (lambda: encode("12x"), "text"),
        (lambda: pad_batch([]), "seqs"),
        (lambda: resolve_device("tpu"), "device"),
    ],
)
def test_config_and_helper_errors_name_the_argument(make, name):
    """Each bad setting is a ValueError whose message starts with the argument's name."""
    with pytest.raises(ValueError, match=f"^{name}:"):
        make()


def test_resolve_device_cuda_without_gpu():
    """Asking for 'cuda' (or 'cuda:0') on a machine without a GPU is a ValueError naming device."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="^device:"):
            resolve_device(device)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    "call",
    [
        lambda r, v, m: compute_gae(r, v, m),
        lambda r, v, m: clipped_surrogate_loss(r, v, torch.zeros_like(r), m),
        lambda r, v, m: kl_penalty_rewards(r, v, torch.zeros(2), m, 0.1),
    ],
)
def test_mask_errors_name_mask(call):
    """A mask with a 2 in it, a mask of the wrong shape, and a 1-D mask are ValueErrors naming mask."""
    rewards, values, _, mask = _mask_inputs()
    call(rewards, values, mask)  # the good mask is accepted
    with_two = mask.clone()
    with_two[0, 1] = 2
    for bad in (with_two, mask[:, :3], mask.t(), mask[0]):
        with pytest.raises(ValueError, match="^mask:"):
            call(rewards, values, bad)


def test_shape_errors_name_the_tensor():
    """Tensors that do not match the mask's shape are named; so are per-episode scores (gamma, lam and
    clip_eps are checked once, by PPOConfig)."""
    rewards, values, _, mask = _mask_inputs()
    with pytest.raises(ValueError, match="^values:"):
        compute_gae(rewards, values[:, :3], mask)
    with pytest.raises(ValueError, match="^advantages:"):
        clipped_surrogate_loss(rewards, values, torch.zeros(2, 5), mask)
    with pytest.raises(ValueError, match="^scores:"):
        kl_penalty_rewards(rewards, values, torch.zeros(3), mask, 0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10_000}, "max_new_tokens"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_generate_errors_name_the_argument(random_model, kwargs, name):
    """generate() rejects a non-positive temperature, a max_new_tokens outside [1, max_len-1] and a
    negative top_k, naming each; the same call with good values works."""
    src = encode_numbers([12, 17])
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        random_model.generate(src, **args)
    random_model.generate(src, 4)
    with pytest.raises(ValueError, match="^temperature:"):
        random_model.score_tokens(src, encode_numbers([11, 13]), temperature=0)


def test_bad_device_fails_before_training(tiny_cfg, monkeypatch):
    """pretrained_policy with device='tpu' raises a ValueError naming device before pretrain() runs."""
    calls = []
    monkeypatch.setattr(pipeline, "pretrain", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="^device:"):
        pipeline.pretrained_policy(tiny_cfg.replace(seed=11), device="tpu", reuse=False, progress=False)
    assert calls == []


def test_huge_learning_rate_stops_pretraining_and_caches_nothing(tiny_cfg):
    """Pretraining the tiny preset with lr = 1e30 blows up after the first step: a TrainingError
    names the stage and the step (1), carries the last good metrics (step 0), and no checkpoint is
    written to the stage cache."""
    cfg = tiny_cfg.replace(pretrain={"lr": 1e30}, seed=21)
    with pytest.raises(TrainingError, match=r"^pretrain: non-finite loss at step 1\b") as info:
        pipeline.pretrained_policy(cfg, reuse=False, progress=False)
    assert info.value.step == 1 and info.value.last_good["step"] == 0
    assert not stage_path(cfg, "pretrain").exists()


def test_nan_loss_at_a_chosen_step_stops_pretraining(tiny_cfg, monkeypatch):
    """A loss that turns NaN at step 5 (the real loss, patched) stops pretraining at step 5 exactly,
    with the metrics of step 4 as the last good ones; nothing is cached."""
    real_loss = pretrain.teacher_forcing_loss
    calls = []

    def loss_nan_at_5(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(pretrain, "teacher_forcing_loss", loss_nan_at_5)
    cfg = tiny_cfg.replace(seed=22)
    with pytest.raises(TrainingError, match=r"step 5\b") as info:
        pipeline.pretrained_policy(cfg, reuse=False, progress=False)
    assert info.value.step == 5 and info.value.last_good["step"] == 4
    assert not stage_path(cfg, "pretrain").exists()


def test_nan_loss_stops_reward_training_and_caches_nothing(tiny_cfg, tiny_policy, monkeypatch):
    """A NaN Bradley-Terry loss stops reward-model training with a TrainingError naming the stage
    and step 0, and no reward-model checkpoint is cached."""
    monkeypatch.setattr(reward, "bradley_terry_loss", lambda rc, rr: (rc - rr).mean() * float("nan"))
    cfg = tiny_cfg.replace(seed=23)
    with pytest.raises(TrainingError, match=r"^reward model: non-finite loss at step 0\b"):
        pipeline.trained_reward_model(cfg, tiny_policy, reuse=False, progress=False)
    assert not stage_path(cfg, "reward").exists()


def test_nan_loss_stops_ppo_naming_the_iteration(tiny_cfg, tiny_policy, tiny_reward_model, monkeypatch):
    """A value loss that turns NaN in the second PPO iteration stops finetune_ppo with a TrainingError
    naming iteration 1 and carrying iteration 0's row as the last good metrics."""
    real_value_loss = finetune.value_loss
    calls = []
    per_iteration = tiny_cfg.ppo.epochs * tiny_cfg.ppo.minibatches

    def value_loss_nan_later(*args):
        calls.append(1)
        loss = real_value_loss(*args)
        return loss * float("nan") if len(calls) > per_iteration else loss

    monkeypatch.setattr(finetune, "value_loss", value_loss_nan_later)
    cfg = tiny_cfg.replace(ppo={"target_kl": None})
    agent = PPOAgent(copy.deepcopy(tiny_policy))
    with pytest.raises(TrainingError, match=r"^ppo: non-finite loss at step 1\b") as info:
        finetune.finetune_ppo(agent, copy.deepcopy(tiny_policy), tiny_reward_model, cfg, progress=False)
    assert info.value.step == 1 and info.value.last_good["iteration"] == 0
