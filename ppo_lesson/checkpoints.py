"""Safe checkpoints: written atomically, loaded with ``weights_only=True``, tied to their config.

Stage caching: a trained stage is stored under a key made of the config sections it depends
on and a fingerprint of the code that trains it, so a notebook reuses the policy that notebook
02 trained, and a change to either the settings or the training code retrains it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from .config import Config

FORMAT_VERSION = 1
_PACKAGE_DIR = Path(__file__).resolve().parent
_STAGE_CODE = {
    "pretrain": ("config.py", "task.py", "model.py", "pretrain.py"),
    "reward": ("config.py", "task.py", "model.py", "pretrain.py", "reward.py"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: wrong kind, wrong config, or not a checkpoint."""


def save_checkpoint(path, state_dict: dict, cfg: Config, kind: str, extra: dict | None = None) -> Path:
    """Write {kind, config, state_dict, extra} to ``path`` atomically: a temporary file in the same
    folder, then a rename, so an interrupted save never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, kind: str, cfg: Config | None = None, sections=("model",)) -> dict:
    """Load a checkpoint safely (tensors and plain data only) and check it fits.

    Raises CheckpointError when the file is missing, is not a ppo_lesson checkpoint of this
    ``kind``, or was made with different ``sections`` of the config than ``cfg``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"path: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise CheckpointError(f"path: {path} is not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"path: {path} is not a ppo_lesson checkpoint (format {FORMAT_VERSION})")
    if payload["kind"] != kind:
        raise CheckpointError(f"kind: {path} holds a {payload['kind']!r} checkpoint, expected {kind!r}")
    if cfg is not None:
        wanted = cfg.to_dict()
        for section in sections:
            if payload["config"].get(section) != wanted[section]:
                raise CheckpointError(
                    f"config.{section}: {path} was made for {payload['config'].get(section)}, "
                    f"but this run uses {wanted[section]}"
                )
    return payload


def cache_root() -> Path:
    """Where stage results are cached: $PPO_LESSON_CACHE, else ``.cache/`` in the checkout."""
    env = os.environ.get("PPO_LESSON_CACHE")
    return Path(env) if env else _PACKAGE_DIR.parent / ".cache"


def code_fingerprint(stage: str) -> str:
    """Hash of the source files whose code decides a stage's result."""
    digest = hashlib.sha256()
    for name in _STAGE_CODE[stage]:
        digest.update((_PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def stage_path(cfg: Config, stage: str) -> Path:
    """The cache file of a stage for this config, this code and this thread count (float sums
    are split differently across threads, so the weights differ in the last bits)."""
    key = f"{cfg.stage_key(stage)}-{code_fingerprint(stage)}-t{torch.get_num_threads()}"
    return cache_root() / f"{stage}-{key}.pt"
