"""Shared fixtures for the unit tests.

Everything runs on one CPU thread with the ``tiny`` preset, and the stage cache is redirected
to a temporary folder so that no test reads or writes the real ``.cache/``."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from ppo_lesson.config import tiny_config

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Point $PPO_LESSON_CACHE at a fresh temporary folder for the whole session."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("ppo_lesson_cache")
    mp.setenv("PPO_LESSON_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, on one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def tiny_cfg():
    """The ``tiny`` preset: every stage trains in about a second."""
    return tiny_config()


@pytest.fixture(scope="session")
def pretrained_run(tiny_cfg, isolated_cache):
    """(policy, info): the tiny preset's supervised policy, trained once per session (and cached in
    the temporary cache, which test_checkpoints reuses)."""
    from ppo_lesson.pipeline import pretrained_policy

    policy, info = pretrained_policy(tiny_cfg, reuse=False, progress=False)
    return policy.eval(), info


@pytest.fixture(scope="session")
def reward_run(tiny_cfg, pretrained_run, isolated_cache):
    """(reward_model, info): the tiny Bradley-Terry reward model, trained and normalized once."""
    from ppo_lesson.pipeline import trained_reward_model

    rm, info = trained_reward_model(tiny_cfg, pretrained_run[0], reuse=False, progress=False)
    return rm.eval(), info


@pytest.fixture
def tiny_policy(pretrained_run):
    """A fresh copy of the session's tiny pretrained policy (tests may change it freely)."""
    return copy.deepcopy(pretrained_run[0]).eval()


@pytest.fixture
def tiny_reward_model(reward_run):
    """A fresh copy of the session's tiny reward model (trained and normalized)."""
    return copy.deepcopy(reward_run[0]).eval()


@pytest.fixture
def random_model(tiny_cfg):
    """An untrained tiny Seq2SeqTransformer (seeded), for tests that do not need training."""
    from ppo_lesson.model import Seq2SeqTransformer

    torch.manual_seed(123)
    return Seq2SeqTransformer(tiny_cfg.model).eval()
