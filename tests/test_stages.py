"""The one stage table and the named random streams (ppo_lesson/stages.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ppo_lesson.config import lesson_config
from ppo_lesson.stages import SEED_OFFSETS, STAGES, code_fingerprint, seed_for, stage_key

PACKAGE = Path(__file__).resolve().parent.parent / "ppo_lesson"


def test_every_stage_names_existing_code_and_config_sections():
    cfg = lesson_config()
    for name, stage in STAGES.items():
        for file in stage.code:
            assert (PACKAGE / file).is_file(), f"{name}: {file} does not exist"
        for section in stage.sections:
            assert hasattr(cfg, section), f"{name}: no config section {section!r}"
        assert "evaluate.py" in stage.code, f"{name}: its cached metrics come from evaluate.py"
        assert len(code_fingerprint(name)) == 12


def test_a_stage_key_follows_its_sections_and_the_seed_only():
    cfg = lesson_config()
    pretrain, reward = stage_key(cfg, "pretrain"), stage_key(cfg, "reward")
    assert stage_key(cfg.replace(ppo={"lr": 1e-3}), "pretrain") == pretrain  # PPO settings never retrain a stage
    assert stage_key(cfg.replace(ppo={"lr": 1e-3}), "reward") == reward
    assert stage_key(cfg.replace(reward={"epochs": 1}), "pretrain") == pretrain
    assert stage_key(cfg.replace(reward={"epochs": 1}), "reward") != reward
    assert stage_key(cfg.replace(pretrain={"steps": 10, "warmup_steps": 5}), "reward") != reward
    assert stage_key(cfg.replace(seed=1), "pretrain") != pretrain
    with pytest.raises(ValueError, match=r"^stage: expected one of \['pretrain', 'reward'\], got 'ppo'"):
        stage_key(cfg, "ppo")


def test_streams_are_named_and_unknown_names_are_refused():
    cfg = lesson_config(seed=7)
    assert seed_for(cfg, "rollouts") == 7 + SEED_OFFSETS["rollouts"]
    # the streams one PPO run draws from at the same time must differ
    assert len({seed_for(cfg, s) for s in ("ppo_setup", "rollouts", "minibatch_order")}) == 3
    with pytest.raises(ValueError, match=r"^stream: expected one of .*got 'rollout'"):
        seed_for(cfg, "rollout")


def test_no_module_adds_an_unnamed_offset_to_the_seed():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "stages.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bseed\s*\+\s*\d", line) and "checks" not in path.parts:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "use stages.seed_for(cfg, name) instead of cfg.seed + N:\n" + "\n".join(offenders)
