"""What every check shares: the registry of exercises, the stub message, running the cases, comparing
with the package, recognizing known mistakes, and the cases' tensors."""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch

ATOL, RTOL = 1e-5, 1e-4


@dataclass(frozen=True)
class Exercise:
    number: str  # "04.2": notebook 04, second exercise
    task: str  # what the learner writes, in one line


EXERCISES = {
    "my_attention": Exercise("01.1", "scaled dot-product attention, returning (output, weights)"),
    "my_causal_mask": Exercise("01.2", "the (length, length) bool mask, True where position t may look"),
    "my_cached_attention_step": Exercise("01.3", "one decoding step that appends to the KV cache and attends"),
    "my_shift_right": Exercise("02.1", "the decoder input for teacher forcing: BOS, then all but the last token"),
    "my_teacher_forcing_loss": Exercise("02.2", "the mean cross-entropy over the real (non-PAD) target tokens"),
    "my_next_token_probs": Exercise("02.3", "next-token probabilities with temperature and top-k"),
    "my_bradley_terry_loss": Exercise("03.1", "the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), averaged"),
    "my_normalized_scores": Exercise("03.2", "scores normalized with the mean and std of the reference's scores"),
    "my_pair_accuracy": Exercise("03.3", "the share of pairs whose chosen answer scores strictly higher"),
    "my_clipped_surrogate_loss": Exercise("04.1", "PPO's clipped surrogate as a loss, a masked mean"),
    "my_compute_gae": Exercise("04.2", "advantages and returns by GAE, 0 after the last real token"),
    "my_approx_kl": Exercise("04.3", "the k3 estimate of KL(old || new), a masked mean"),
    "my_kl_penalty_rewards": Exercise("04.4", "per-token rewards: the KL penalty, plus the score on EOS"),
    "my_value_loss": Exercise("05.1", "the clipped value loss"),
    "my_adaptive_kl_update": Exercise("05.2", "one update of the adaptive KL controller's beta"),
    "my_planted_bug": Exercise("05.3", "the letter of the explanation the logged metrics point to"),
}


def todo() -> str:
    """The message of an unsolved exercise stub (nbgrader puts ``raise NotImplementedError(checks.todo())``
    in place of the solution): which exercise it is and what to write."""
    name = inspect.currentframe().f_back.f_code.co_name
    exercise = EXERCISES.get(name)
    if exercise is None:
        return "this exercise is not done yet: replace this line with your code"
    return f"exercise {exercise.number}: write {name}: {exercise.task}, then run the check below it"


# ---- the machinery: run cases, compare, recognize known mistakes ---------------------------------


def keeps_random_state(check):
    """Run a check without moving the notebook's random number generators."""

    @functools.wraps(check)
    def wrapped(fn) -> bool:
        with torch.random.fork_rng():
            return check(fn)

    return wrapped


def verdict(name: str, student, reference, cases, mistakes, call=None, parts=("output",)) -> bool:
    """Run ``student`` and ``reference`` (the package) on every case; on the first difference print the
    case, expected vs got, and the hint of every known-wrong variant the student's output matches.
    ``call(fn, case)`` runs the student's function (and the variants) on a case; by default fn(**case)."""
    call = call or (lambda fn, case: fn(**fresh(case)))
    number = EXERCISES[name].number
    for label, case in cases:
        expected = _parts(reference(**fresh(case)), parts)
        try:
            got = call(student, case)
        except NotImplementedError:
            print(f"✗ exercise {number} is not done yet: write the body of {name} ({EXERCISES[name].task}).")
            return False
        except Exception as err:  # the learner's code may fail in any way; say where and how
            print(f"✗ exercise {number}, case {label!r}: {name} raised {type(err).__name__}: {err}")
            return False
        problem = _difference(expected, got, parts)
        if problem:
            print(f"✗ exercise {number}, case {label!r}:\n{problem}")
            hints = [hint for hint, wrong in mistakes if _matches(wrong, call, case, got, expected, parts)]
            for hint in hints:
                print(f"  hint: {hint}")
            if not hints:
                print("  (no known mistake matches: compare your function with the contract in its docstring)")
            return False
    print(f"✓ exercise {number}: {name} is right on all {len(cases)} cases ({', '.join(label for label, _ in cases)}).")
    return True


def fresh(case: dict) -> dict:
    """A copy of the case's arguments, so that a function that writes into its inputs harms no other run."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def _parts(out, names) -> list | None:
    """The output as a list of tensors, one per name (None when its structure does not fit)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(items) != len(names):
        return None
    try:
        return [torch.as_tensor(x).detach() for x in items]
    except (TypeError, ValueError, RuntimeError):
        return None


def _difference(expected: list, got, names) -> str:
    """'' when got equals expected within tolerance, else a description of the first difference."""
    got = _parts(got, names)
    if got is None:
        return f"  expected {len(names)} output(s) ({', '.join(names)}) as tensors or numbers"
    for name, e, g in zip(names, expected, got):
        if e.dtype == torch.bool and g.dtype != torch.bool:
            return f"  {name}: expected dtype torch.bool, got {g.dtype}"
        if e.shape != g.shape:
            return f"  {name}: expected shape {tuple(e.shape)}, got {tuple(g.shape)}\n{_show(e, g)}"
        if not _close(e, g):
            diff = (e.double() - g.double()).abs().nan_to_num(nan=math.inf)
            where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.dim() else ()
            at = f" at {where}" if where else ""
            return (
                f"  {name}: max abs difference {diff.max().item():.3g}{at}: "
                f"expected {_num(e[where])}, got {_num(g[where])}\n{_show(e, g)}"
            )
    return ""


def _close(expected, got, equal_nan: bool = False) -> bool:
    return expected.shape == got.shape and torch.allclose(
        got.double(), expected.double(), rtol=RTOL, atol=ATOL, equal_nan=equal_nan
    )


def _matches(wrong, call, case, got, expected, parts) -> bool:
    """Whether the learner's output equals the known-wrong variant's (and that one differs from the truth)."""
    try:
        variant = _parts(call(wrong, case), parts)
    except Exception:  # a variant that cannot run on this case cannot be what the learner did
        return False
    got = _parts(got, parts)
    if variant is None or got is None:
        return False
    same = all(_close(v, g, equal_nan=True) for v, g in zip(variant, got))
    return same and not all(_close(e, v) for e, v in zip(expected, variant))


def _num(x) -> str:
    return f"{x.item():.4g}" if x.dtype != torch.bool else str(bool(x))


def _show(expected, got) -> str:
    if max(expected.numel(), got.numel()) > 32:
        return "  (too large to print)"
    fmt = lambda t: str(t.tolist() if t.dtype == torch.bool else torch.round(t.double(), decimals=4).tolist())
    return f"  expected: {fmt(expected)}\n  got:      {fmt(got)}"


# ---- cases ----------------------------------------------------------------------------------------


def randn(*shape, seed: int, scale: float = 1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def mask_of(lengths, width: int) -> torch.Tensor:
    """(len(lengths), width) float mask, 1 on the first ``length`` positions of each row."""
    return (torch.arange(width) < torch.tensor(lengths)[:, None]).float()


def junk_after_eos(x, mask, junk: float = 7.0):
    """Fill the masked positions with a value that must not matter (padding is never zero in practice)."""
    return torch.where(mask.bool(), x, torch.full_like(x, junk))


def token_cases():
    """(label, lengths, width) of the masks every per-token check uses, an all-padding row included."""
    return [
        ("one answer of 6 tokens", [6], 6),
        ("answers of lengths 6, 3, 1, 5", [6, 3, 1, 5], 6),
        ("an all-padding row", [4, 0, 2], 4),
    ]


def token_batch(seed: int, lengths, width, scale=0.5):
    """The mask of a batch whose rows end at ``lengths``, and ``make(i, scale)``: a random (batch, width)
    tensor for it, holding junk after each row's end."""
    mask = mask_of(lengths, width)
    make = lambda i, s=scale: junk_after_eos(randn(len(lengths), width, seed=seed + i, scale=s), mask)
    return mask, make
