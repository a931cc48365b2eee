"""The package's own exceptions. Bad arguments raise the built-in ``ValueError`` or ``TypeError``
with a message that names the argument and what was expected; these classes are for the rest."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training produced a non-finite loss; carries the stage, the step and the last good metrics."""

    def __init__(self, stage: str, step: int, last_good: dict | None):
        self.stage, self.step, self.last_good = stage, step, last_good
        super().__init__(
            f"{stage}: non-finite loss at step {step}; last good metrics: {last_good}. "
            "Nothing was saved from this run; try a smaller learning rate."
        )


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: wrong kind, wrong config, or not a checkpoint."""


class RunInterrupted(Exception):
    """A command-line run was stopped (Ctrl-C); the message says what was kept and how to continue."""


class RunFailed(RuntimeError):
    """A command-line run diverged or its results could not be written; the message says what was kept."""
