"""The results folder of ``python -m ppo_lesson run``: a run writes into ``OUT/unfinished/`` and its
files move into ``OUT`` only once it is complete, so a run that fails or is interrupted leaves the
previous results untouched (``run --resume OUT`` continues it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoints import load_checkpoint
from .errors import CheckpointError

STAGING = "unfinished"  # the folder inside --out where a run writes until it is complete (what --resume continues)
INCOMPLETE = "INCOMPLETE"  # a marker in --out while a finished run's files are moved in
RESULTS = (  # what a complete run leaves in --out; summary.json last, since it marks a complete run
    "metrics.jsonl",
    "policy_pretrained.pt",
    "reward_model.pt",
    "policy_ppo.pt",
    "ppo_curves.png",
    "gold_before_after.png",
    "summary.json",
)


def publish(staging: Path, out: Path) -> None:
    """Move a complete run from ``staging`` into ``out``, replacing the previous one. While the files
    move, ``out/INCOMPLETE`` says that the folder mixes two runs; it goes once all are in place."""
    marker = out / INCOMPLETE
    marker.write_text(
        f"A run was moving its results into this folder and stopped half-way: these files may come from two "
        f"runs. Those not moved yet are in {STAGING}/; python -m ppo_lesson run --resume {out} finishes the move.\n"
    )
    for name in RESULTS:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)  # the previous run's, which this run did not make
    marker.unlink()
    shutil.rmtree(staging)


def what_was_kept(out: Path, staging: Path, resumable: bool = True) -> str:
    """Where a stopped run left things, in words: the state of ``out`` and what ``staging`` holds."""
    if (out / INCOMPLETE).exists():
        kept = f"{out} is marked {INCOMPLETE}: it stopped while moving the new results in."
    elif (out / "summary.json").exists():
        kept = f"{out} still holds the previous complete run."
    else:
        kept = f"{out} holds no complete run."
    try:
        saved = load_checkpoint(staging / "ppo_state.pt", "ppo_state")
    except CheckpointError:
        return f"{kept} Nothing of this run was saved."
    done, total = saved["extra"]["iteration"], saved["config"]["ppo"]["iterations"]
    if not resumable:
        return f"{kept} This run's state after its last good PPO iteration ({done} of {total}) is in {staging}."
    return (
        f"{kept} This run's state after {done} of {total} PPO iterations is saved in {staging}; "
        f"continue with: python -m ppo_lesson run --resume {out}"
    )
