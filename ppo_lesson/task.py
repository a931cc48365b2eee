"""The toy task: write a number N as a sum of digits, e.g. ``27 -> 9+9+9``.

Many answers are valid, the supervised data has no preference among them, and a hidden gold
scorer (our stand-in for a human) prefers short sums. PPO has to learn that taste from a
reward model that only saw the gold scorer's preferences.
"""

from __future__ import annotations

import functools
import random

import torch
import torch.nn.functional as F

from .config import TaskConfig

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
SYMBOLS = tuple("0123456789+")
VOCAB = SPECIALS + SYMBOLS
STOI = {s: i for i, s in enumerate(VOCAB)}
PAD_ID, BOS_ID, EOS_ID = STOI[PAD], STOI[BOS], STOI[EOS]
PLUS_ID = STOI["+"]
VOCAB_SIZE = len(VOCAB)
INVALID_SCORE = -1.0


def encode(text: str, add_eos: bool = True) -> list[int]:
    """Token ids of ``text`` (characters from ``0-9`` and ``+``), EOS appended by default."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    unknown = sorted({ch for ch in text if ch not in STOI or ch in SPECIALS})
    if unknown:
        raise ValueError(f"text: unknown symbols {unknown} in {text!r}; the vocabulary is {''.join(SYMBOLS)!r}")
    ids = [STOI[ch] for ch in text]
    return ids + [EOS_ID] if add_eos else ids


def decode(ids) -> str:
    """Text of a token sequence, stopping at the first EOS and skipping padding and BOS."""
    out = []
    for i in _as_list(ids):
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"ids: expected token ids in [0, {VOCAB_SIZE}), got {i}")
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        out.append(VOCAB[i])
    return "".join(out)


def pad_batch(seqs: list[list[int]], length: int | None = None) -> torch.Tensor:
    """Right-pad token lists with PAD into a (batch, length) long tensor."""
    if len(seqs) == 0:
        raise ValueError("seqs: expected at least one sequence, got an empty list")
    length = length or max(len(s) for s in seqs)
    for row, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"seqs: sequence {row} has {len(s)} tokens, more than length={length}")
    # one tensor from padded lists: a copy per row costs several times more at batch 128
    return torch.tensor([list(s) + [PAD_ID] * (length - len(s)) for s in seqs], dtype=torch.long)


def min_terms(n: int) -> int:
    """Fewest digits 1..9 that can add up to n."""
    return -(-n // 9)


def feasible_terms(n: int, cfg: TaskConfig) -> range:
    """Numbers of terms a valid answer for n may have."""
    return range(min_terms(n), min(n, cfg.max_terms) + 1)


def sample_numbers(batch_size: int, cfg: TaskConfig, rng: random.Random) -> list[int]:
    """``batch_size`` source numbers drawn uniformly from [min_number, max_number]."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return [rng.randint(cfg.min_number, cfg.max_number) for _ in range(batch_size)]


def encode_numbers(numbers) -> torch.Tensor:
    """(batch, src_len) source tokens: the digits of each number, then EOS, right-padded."""
    return pad_batch([_number_tokens(int(n)) for n in _as_list(numbers)])


@functools.cache
def _number_tokens(n: int) -> tuple[int, ...]:
    """``encode(str(n))``, kept: a batch of 128 sources takes 0.05 ms instead of 0.13 (a pretraining step's
    source batch, 1,300 times a run)."""
    return tuple(encode(str(n)))


def sample_target(n: int, cfg: TaskConfig, rng: random.Random) -> str:
    """One supervised answer for n: the number of terms uniform over the feasible range,
    then the surplus above all-ones spread at random over terms (each at most 9)."""
    terms_range = feasible_terms(n, cfg)
    if len(terms_range) == 0:
        raise ValueError(f"n: {n} has no sum of at most max_terms={cfg.max_terms} digits")
    k = rng.choice(terms_range)
    digits = [1] * k
    open_slots = list(range(k))  # terms still below 9, in order; kept up to date, not rebuilt per unit
    for _ in range(n - k):
        slot = rng.choice(open_slots)
        digits[slot] += 1
        if digits[slot] == 9:
            open_slots.remove(slot)
    return "+".join(map(str, digits))


DRAWS_PER_ROUND = 64  # term draws made at once by ``sample_digits``; an answer that needs more gets another round


def sample_digits(numbers: torch.Tensor, cfg: TaskConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, max_terms) digits of one supervised answer per number in ``numbers`` (B,), 0 after the last
    term: ``sample_target``'s distribution, drawn for the whole batch at once (tests/test_task.py
    compares the two).

    ``sample_target`` gives each unit of surplus to a term chosen uniformly among those still below 9.
    Choosing uniformly among all the terms and skipping the draw when that term is already at 9 gives
    the same probabilities, and such draws can be made up front: after each draw a term holds
    min(8, its draws so far) units, and the answer is read at the first draw where they add up."""
    numbers = torch.as_tensor(numbers, dtype=torch.long)
    if bool((numbers < 1).any() | (numbers > 9 * cfg.max_terms).any()):
        raise ValueError(f"numbers: expected integers in [1, {9 * cfg.max_terms}] (max_terms={cfg.max_terms})")
    fewest = (numbers + 8) // 9
    most = numbers.clamp(max=cfg.max_terms)
    terms = fewest + (torch.rand(len(numbers), generator=generator) * (most - fewest + 1)).long()
    surplus = numbers - terms
    units = torch.zeros(len(numbers), cfg.max_terms, dtype=torch.long)  # units above 1 per term
    todo = torch.arange(len(numbers))
    while len(todo):  # most answers are placed in the first round; the rest go on from where they are
        draws = (torch.rand(len(todo), DRAWS_PER_ROUND, generator=generator) * terms[todo, None]).long()
        counts = F.one_hot(draws, cfg.max_terms).cumsum(1)  # (R, draws, max_terms)
        after = torch.cat([units[todo, None], units[todo, None] + counts], 1).clamp(max=8)  # index 0: no draw
        enough = after.sum(-1) >= surplus[todo, None]
        placed = enough[:, -1]
        first = enough.int().argmax(1)  # the first draw by which the whole surplus is placed
        units[todo] = torch.where(placed[:, None], after[torch.arange(len(todo)), first], after[:, -1])
        todo = todo[~placed]
    return (1 + units) * (torch.arange(cfg.max_terms) < terms[:, None])


def answer_tokens(digits: torch.Tensor) -> torch.Tensor:
    """(B, 2 * longest) token ids of ``d+d+...+d`` then EOS, right-padded, from (B, T) digits (0 = no term)."""
    terms = (digits > 0).sum(1)
    width = 2 * int(terms.max())
    tokens = torch.full((len(digits), width), PAD_ID, dtype=torch.long)
    position = torch.arange(width // 2)
    in_answer = position < terms[:, None]
    tokens[:, 0::2] = torch.where(in_answer, STOI["0"] + digits[:, : width // 2], PAD_ID)  # ids of 0-9 are consecutive
    tokens[:, 1::2] = torch.where(position < terms[:, None] - 1, PLUS_ID, torch.where(in_answer, EOS_ID, PAD_ID))
    return tokens


def supervised_batch(batch_size: int, cfg: TaskConfig, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, tgt) token tensors for teacher forcing; tgt ends with EOS and is right-padded.

    The numbers come from ``rng``; the answers are drawn for the whole batch at once by a torch generator
    seeded from ``rng``: a batch of 128 takes about 0.55 ms, against 1.5 ms answer by answer with ``sample_target``."""
    numbers = sample_numbers(batch_size, cfg, rng)
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    return encode_numbers(numbers), answer_tokens(sample_digits(torch.tensor(numbers), cfg, generator))


def parse_answer(text: str) -> list[int] | None:
    """The digits of a well-formed answer ``d+d+...+d`` (each d in 1..9), else None."""
    parts = text.split("+")
    if not text or any(len(p) != 1 or p not in "123456789" for p in parts):
        return None
    return [int(p) for p in parts]


def gold_score(n: int, answer: str, cfg: TaskConfig | None = None) -> float:
    """The hidden human preference: 1 for a shortest valid sum, halving with every extra term;
    -1 for anything invalid (wrong total, malformed, too many terms, or no EOS)."""
    cfg = cfg or TaskConfig()
    digits = parse_answer(answer)
    if digits is None or sum(digits) != n or len(digits) > cfg.max_terms:
        return INVALID_SCORE
    return 0.5 ** (len(digits) - min_terms(n))


def source_numbers(src: torch.Tensor) -> list[int]:
    """Numbers written in a (batch, src_len) source tensor."""
    return [int(decode(row)) for row in src]


def gold_scores(src: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, cfg: TaskConfig) -> torch.Tensor:
    """(batch,) gold scores of generated answers; an answer with no EOS inside ``mask`` is invalid.

    src: (batch, src_len); tokens, mask: (batch, time) as returned by ``generate``, on any device
    (the scoring is Python, so they are read on the CPU); the scores are on the CPU.
    """
    src, tokens, mask = src.cpu(), tokens.cpu(), mask.cpu()
    finished = ended_with_eos(tokens, mask)
    scores = [
        gold_score(n, decode(t), cfg) if done else INVALID_SCORE
        for n, t, done in zip(source_numbers(src), tokens, finished.tolist())
    ]
    return torch.tensor(scores, dtype=torch.float32)


def ended_with_eos(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch,) bool: whether the last real token of each row is EOS."""
    lengths = mask.long().sum(1)
    last = tokens.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return (last == EOS_ID) & (lengths > 0)


def preference_pairs(
    src: torch.Tensor,
    tokens_a: torch.Tensor,
    mask_a: torch.Tensor,
    tokens_b: torch.Tensor,
    mask_b: torch.Tensor,
    cfg: TaskConfig,
    label_noise: float = 0.0,
    rng: random.Random | None = None,
) -> dict[str, torch.Tensor]:
    """Label two answers per source with the gold scorer: (chosen, rejected), ties dropped.

    tokens_*: (batch, time) answers with PAD after EOS, as ``generate`` returns them.
    With ``label_noise`` p, each kept label is flipped with probability p (a noisy human).
    Returns src, chosen, rejected (token tensors) and the gold scores of both.
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise: expected a float in [0, 0.5), got {label_noise}")
    gold_a = gold_scores(src, tokens_a, mask_a, cfg)
    gold_b = gold_scores(src, tokens_b, mask_b, cfg)
    keep = gold_a != gold_b
    a_wins = gold_a > gold_b
    if label_noise > 0:
        rng = rng or random.Random(0)
        flip = torch.tensor([rng.random() < label_noise for _ in range(len(a_wins))], dtype=torch.bool)
        a_wins = a_wins ^ flip
    pick = a_wins.unsqueeze(1)
    chosen = torch.where(pick, tokens_a, tokens_b)[keep]
    rejected = torch.where(pick, tokens_b, tokens_a)[keep]
    return {
        "src": src[keep],
        "chosen": chosen,
        "rejected": rejected,
        "gold_chosen": torch.where(a_wins, gold_a, gold_b)[keep],
        "gold_rejected": torch.where(a_wins, gold_b, gold_a)[keep],
    }


def _as_list(x) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)
