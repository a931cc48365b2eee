"""The pipeline's stages in one table: which config sections and which code files decide each
cached result, and the random streams every part of the pipeline draws from.

The stage cache (``checkpoints.stage_path``) keys a trained stage by ``stage_key`` (its config
sections and the seed) and ``code_fingerprint`` (its code files); the pipeline checks a cached
checkpoint against the same sections."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from . import PACKAGE_DIR
from .config import Config


@dataclass(frozen=True)
class Stage:
    sections: tuple[str, ...]  # the config sections its result depends on (the seed always does)
    code: tuple[str, ...]  # the package files whose code decides its result, metrics included


_TRAINING_CODE = ("config.py", "stages.py", "pipeline.py", "task.py", "model.py", "evaluate.py")
STAGES = {
    "pretrain": Stage(("task", "model", "pretrain"), (*_TRAINING_CODE, "flat_adam.py", "pretrain.py")),
    "reward": Stage(
        ("task", "model", "pretrain", "reward"), (*_TRAINING_CODE, "flat_adam.py", "pretrain.py", "reward.py")
    ),
}

# Each random stream starts from cfg.seed plus its own offset, so that one stage drawing more or fewer
# numbers never shifts what another stage draws. Two streams share an offset where they never meet.
SEED_OFFSETS = {
    "pretrain": 0,  # initial weights and the supervised batches
    "preferences": 1,  # which answers the human compares (and the rest of the reward stage's setup)
    "reward_order": 2,  # the order of the preference pairs in reward-model training
    "ppo_setup": 2,  # the value head's initial weights and anything else drawn before the first rollout
    "normalization": 3,  # the answers the reward model's score is normalized on
    "rollouts": 4,  # the source numbers and the sampled answers of RL fine-tuning
    "minibatch_order": 5,  # the order of the episodes in PPO's (and GRPO/RLOO's) minibatches
    "dpo_order": 6,  # the order of the preference pairs in DPO
}


def seed_for(cfg: Config, stream: str) -> int:
    """The seed of a named random stream (see ``SEED_OFFSETS``) for this config."""
    if stream not in SEED_OFFSETS:
        raise ValueError(f"stream: expected one of {sorted(SEED_OFFSETS)}, got {stream!r}")
    return cfg.seed + SEED_OFFSETS[stream]


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {sorted(STAGES)}, got {stage!r}")
    return STAGES[stage]


def stage_key(cfg: Config, stage: str) -> str:
    """Hash of the config sections (and the seed) a stage's result depends on."""
    payload = {name: dataclasses.asdict(getattr(cfg, name)) for name in _stage(stage).sections}
    payload["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def code_fingerprint(stage: str) -> str:
    """Hash of the source files whose code decides a stage's result."""
    digest = hashlib.sha256()
    for name in _stage(stage).code:
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]
