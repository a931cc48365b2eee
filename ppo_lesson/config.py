"""Hyperparameters for every stage, as dataclasses with one line of explanation each.

Two presets: ``lesson`` (what the notebooks and ``make lesson`` use) and ``tiny`` (for tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass, field

MAX_SEED = 2**32 - 1  # seeds above it are refused: later stages add small offsets, torch takes < 2**63


@dataclass(frozen=True)
class TaskConfig:
    """The toy task "write N as a sum of digits"."""

    min_number: int = 10  # smallest source number N
    max_number: int = 45  # largest source number N
    max_terms: int = 8  # longest sum in the supervised data (and the cap on a valid answer)

    def __post_init__(self):
        _check_field_types(self)
        _check(self.min_number >= 2, "min_number", "an integer >= 2", self.min_number)
        _check(
            self.max_number >= self.min_number,
            "max_number",
            f">= min_number ({self.min_number})",
            self.max_number,
        )
        _check(
            self.max_terms * 9 >= self.max_number,
            "max_terms",
            f"at least ceil(max_number / 9) = {-(-self.max_number // 9)} so every N has a valid sum",
            self.max_terms,
        )

    @property
    def max_target_len(self) -> int:
        """Longest valid target in tokens, EOS included (digits, pluses, EOS)."""
        return 2 * self.max_terms


@dataclass(frozen=True)
class ModelConfig:
    """Size of the Seq2Seq Transformer (policy, reference and reward model share it)."""

    d_model: int = 64  # width of every hidden vector
    n_heads: int = 4  # attention heads; d_model must be divisible by it
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 128  # hidden width of the feed-forward blocks
    dropout: float = 0.0  # 0 keeps PPO's ratio exactly 1 before the first update
    max_len: int = 64  # longest sequence the positional table covers

    def __post_init__(self):
        _check_field_types(self)
        for name in ("d_model", "n_encoder_layers", "n_decoder_layers", "d_ff", "max_len"):
            _check(getattr(self, name) > 0, name, "a positive integer", getattr(self, name))
        _check(
            self.n_heads > 0 and self.d_model % self.n_heads == 0,
            "n_heads",
            f"a positive divisor of d_model ({self.d_model})",
            self.n_heads,
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", "a float in [0, 1)", self.dropout)


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised (teacher-forced) training of the policy on valid but tasteless sums."""

    steps: int = 1300  # optimizer steps
    batch_size: int = 128  # (source, target) pairs per step
    lr: float = 7e-3  # peak Adam learning rate
    beta2: float = 0.98  # Adam's decay of its squared-gradient average (PyTorch's default is 0.999). Measured
    # on seeds 0-2 (validity at temperature 1): 1000 steps at lr 5e-3 reach 0.84-0.86 with 0.999 and 0.90-0.94
    # with 0.98; 1300 steps at 7e-3 with 0.98 reach 0.96-0.97, as 1600 steps at 5e-3 with 0.999 did
    warmup_steps: int = 50  # linear warm-up before the cosine decay
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm

    def __post_init__(self):
        _check_field_types(self)
        _check(self.steps > 0, "steps", "a positive integer", self.steps)
        _check(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        _check(self.lr > 0, "lr", "a positive float", self.lr)
        _check(0.0 <= self.beta2 < 1.0, "beta2", "a float in [0, 1)", self.beta2)
        _check(self.weight_decay >= 0, "weight_decay", "a float >= 0", self.weight_decay)
        _check(self.grad_clip > 0, "grad_clip", "a positive float (a clip at 0 changes no parameter)", self.grad_clip)
        _check(
            0 <= self.warmup_steps <= self.steps,
            "warmup_steps",
            f"an integer in [0, steps={self.steps}]",
            self.warmup_steps,
        )


@dataclass(frozen=True)
class RewardConfig:
    """Bradley-Terry reward model trained on preference pairs labelled by the gold scorer."""

    n_pairs: int = 4000  # preference pairs sampled from the pretrained policy (with 4 epochs at lr 1e-4, 8000 gave
    # the same held-out accuracy to within 0.03 on seeds 0-2, in twice the time; with 2 epochs at 3e-4, 3000 gave
    # gold gains of 0.38 / 0.37 / 0.43 where 4000 give 0.45 / 0.45 / 0.43)
    heldout_fraction: float = 0.2  # share of pairs kept for measuring accuracy
    label_noise: float = 0.0  # probability that a human label is flipped
    pair_temperature: float = 1.3  # sampling temperature of the answers the human compares: above 1,
    # the human also sees the rarer wrong sums, so the reward model learns that they are bad
    epochs: int = 2  # passes over the training pairs. Measured on seeds 0-2 (held-out accuracy; gold gain of the
    # lesson's PPO on it): 2 epochs at lr 3e-4 give 0.926 / 0.929 / 0.933 and 0.45 / 0.45 / 0.43, 4 at 1e-4 gave
    # 0.930 / 0.931 / 0.929 and 0.40 / 0.43 / 0.39 in twice the steps; 1 at 4e-4 fell to 0.894 and 0.33 on seed 2
    batch_size: int = 128
    lr: float = 3e-4  # Adam's step size; 3e-3 for 2 epochs gave 0.931 / 0.908 / 0.928, no better
    init_from_policy: bool = True  # start from the pretrained weights, as RLHF does

    def __post_init__(self):
        _check_field_types(self)
        _check(self.n_pairs >= 10, "n_pairs", "an integer >= 10", self.n_pairs)
        _check(
            0.0 < self.heldout_fraction < 1.0,
            "heldout_fraction",
            "a float in (0, 1)",
            self.heldout_fraction,
        )
        _check(0.0 <= self.label_noise < 0.5, "label_noise", "a float in [0, 0.5)", self.label_noise)
        _check(self.epochs > 0, "epochs", "a positive integer", self.epochs)
        _check(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        _check(self.lr > 0, "lr", "a positive float", self.lr)
        _check(self.pair_temperature > 0, "pair_temperature", "a positive float", self.pair_temperature)


@dataclass(frozen=True)
class PPOConfig:
    """PPO with a KL penalty to the frozen reference (explained in notebooks 04 and 05)."""

    iterations: int = 60  # rollout + update cycles
    rollout_batch: int = 128  # targets sampled per iteration
    epochs: int = 2  # K: passes over each rollout
    minibatches: int = 2  # minibatches per pass: K x M = 4 gradient steps on every batch of answers
    lr: float = 1e-4  # Adam learning rate (eps 1e-5). 2 x 2 steps at 1e-4 learn as much per sampled answer as
    # 4 x 4 at 3e-5 did (measured on seeds 0-2: the same plateau, a little lower over the first 10 iterations)
    # in less than half the update time: on a CPU a step on 64 answers costs about 1.6 times one on 32, not 2
    value_lr: float = 3e-3  # Adam learning rate of the value head alone. Adam moves each weight by about lr
    # per step, so at the policy's 1e-4 the zero-initialized head hardly leaves 0 in a whole run (explained
    # variance at most 0.03, measured on seed 0); the critic needs steps that matter next to returns of size ~1.
    # Usually 1e-3 to 1e-2
    clip_eps: float = 0.2  # epsilon of the clipped surrogate
    value_clip: float = 0.2  # clip of the value update around the old values
    vf_coef: float = 0.1  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    gamma: float = 1.0  # discount (1: the episode is one short answer)
    lam: float = 0.95  # GAE lambda
    kl_beta: float = 0.2  # initial weight of the per-token KL penalty
    adaptive_kl: bool = True  # adapt kl_beta towards kl_target
    kl_target: float = 1.0  # KL to the reference (nats per answer) the controller aims for
    kl_horizon: int = 2000  # samples over which the controller moves beta by at most 20%
    target_kl: float | None = 0.1  # a safety net: skip an iteration's remaining epochs once an epoch's mean
    # approx_kl (per token) exceeds it. On the lesson preset approx_kl stays near 0.001-0.02, so it never fires;
    # it stops a too-large lr or too many epochs from moving the policy far on one rollout. Usually 0.01 to 0.1
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # used both when sampling and when re-scoring
    clip: bool = True  # False gives the unclipped surrogate (for the stability experiment)
    use_critic: bool = True  # False: V(s) = 0 everywhere and no value loss, so the advantages are the
    # whitened lambda-discounted rewards-to-go ("PPO with V = 0", a REINFORCE-like baseline)

    def __post_init__(self):
        _check_field_types(self)
        _check(self.iterations >= 0, "iterations", "an integer >= 0", self.iterations)
        _check(self.rollout_batch > 0, "rollout_batch", "a positive integer", self.rollout_batch)
        _check(self.epochs > 0, "epochs", "a positive integer", self.epochs)
        _check(
            0 < self.minibatches <= self.rollout_batch,
            "minibatches",
            f"an integer in [1, rollout_batch={self.rollout_batch}]",
            self.minibatches,
        )
        _check(self.lr > 0, "lr", "a positive float", self.lr)
        _check(self.clip_eps > 0, "clip_eps", "a positive float", self.clip_eps)
        _check(self.value_clip > 0, "value_clip", "a positive float", self.value_clip)
        _check(0.0 <= self.gamma <= 1.0, "gamma", "a float in [0, 1]", self.gamma)
        _check(0.0 <= self.lam <= 1.0, "lam", "a float in [0, 1]", self.lam)
        _check(self.kl_beta >= 0, "kl_beta", "a float >= 0", self.kl_beta)
        _check(
            not (self.adaptive_kl and self.kl_beta == 0),
            "kl_beta",
            "a positive float when adaptive_kl is True (the controller multiplies it, so 0 stays 0)",
            self.kl_beta,
        )
        _check(self.value_lr > 0, "value_lr", "a positive float", self.value_lr)
        _check(self.vf_coef >= 0, "vf_coef", "a float >= 0", self.vf_coef)
        _check(self.ent_coef >= 0, "ent_coef", "a float >= 0", self.ent_coef)
        _check(
            self.max_grad_norm > 0,
            "max_grad_norm",
            "a positive float (a clip at 0 changes no parameter)",
            self.max_grad_norm,
        )
        _check(self.kl_target > 0, "kl_target", "a positive float", self.kl_target)
        _check(self.kl_horizon > 0, "kl_horizon", "a positive integer", self.kl_horizon)
        _check(self.temperature > 0, "temperature", "a positive float", self.temperature)
        _check(
            self.target_kl is None or self.target_kl > 0,
            "target_kl",
            "None or a positive float",
            self.target_kl,
        )


@dataclass(frozen=True)
class Config:
    """Everything one run needs."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    seed: int = 0

    def __post_init__(self):
        _check_field_types(self)
        _check(0 <= self.seed <= MAX_SEED, "seed", f"an integer in [0, {MAX_SEED}]", self.seed)
        _check(
            self.model.max_len >= max(self.task.max_target_len + 1, 4),
            "model.max_len",
            f">= task.max_target_len + 1 = {self.task.max_target_len + 1}",
            self.model.max_len,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> Config:
        """A copy with some sections changed: ``cfg.replace(ppo={"lr": 1e-5}, seed=3)``."""
        unknown = [name for name in sections if name not in _SECTIONS]
        if unknown:
            raise ValueError(f"replace: unknown section {unknown[0]!r}; expected one of {_SECTIONS}")
        changes = {
            name: _with_settings(name, getattr(self, name), value) if isinstance(value, dict) else value
            for name, value in sections.items()
        }
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """The inverse of ``to_dict``; missing sections and settings take their defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"data: expected a dict like Config.to_dict() gives, got {type(data).__name__}")
        unknown = [name for name in data if name not in _SECTIONS]
        if unknown:
            raise ValueError(f"from_dict: unknown section {unknown[0]!r}; expected one of {_SECTIONS}")
        defaults = cls()
        return defaults.replace(**data)


_SECTIONS = ("task", "model", "pretrain", "reward", "ppo", "seed")


def _with_settings(section: str, current, settings: dict):
    """``current`` with some settings changed; errors are named ``section.setting``."""
    known = [f.name for f in dataclasses.fields(current)]
    unknown = [name for name in settings if name not in known]
    if unknown:
        raise ValueError(f"{section}.{unknown[0]}: unknown setting; expected one of {known}")
    try:
        return dataclasses.replace(current, **settings)
    except ValueError as err:
        raise ValueError(f"{section}.{err}") from None


def _check(ok: bool, name: str, expected: str, got) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {got!r}")


_EXPECTED = {bool: "True or False", int: "an integer", float: "a finite number", str: "a string", type(None): "None"}


@functools.cache
def _field_kinds(cls) -> dict:
    """Each field's declared types as a tuple: ``float | None`` gives (float, NoneType)."""
    return {name: typing.get_args(hint) or (hint,) for name, hint in typing.get_type_hints(cls).items()}


def _check_field_types(obj) -> None:
    """Raise a ValueError naming the first field whose value is not of its declared type: an int
    field takes an integer (not a bool, float or string), a float field a finite real (an int is
    stored as a float), a bool field True or False. Runs before each section's range checks."""
    kinds = _field_kinds(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        converted = next((c for c in (_as_kind(value, kind) for kind in kinds[f.name]) if c is not _WRONG), _WRONG)
        expected = " or ".join(_EXPECTED.get(kind, f"a {kind.__name__}") for kind in kinds[f.name])
        _check(converted is not _WRONG, f.name, expected, value)
        object.__setattr__(obj, f.name, converted)


_WRONG = object()


def _as_kind(value, kind):
    """``value`` as a plain ``kind`` (numpy scalars and ints for floats included), or _WRONG."""
    is_bool = isinstance(value, bool)
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) and not is_bool else _WRONG
    if kind is float:
        real = isinstance(value, numbers.Real) and not is_bool
        return float(value) if real and math.isfinite(value) else _WRONG
    if kind is type(None):
        return value if value is None else _WRONG
    return value if isinstance(value, kind) else _WRONG


def lesson_config(seed: int = 0) -> Config:
    """The preset the notebooks and ``make lesson`` share."""
    return Config(seed=seed)


def tiny_config(seed: int = 0) -> Config:
    """A preset that trains every stage in a few seconds, for tests (results are not meaningful)."""
    return Config(
        task=TaskConfig(min_number=10, max_number=20, max_terms=4),
        model=ModelConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64),
        pretrain=PretrainConfig(steps=60, batch_size=64, warmup_steps=10),
        reward=RewardConfig(n_pairs=200, epochs=1, batch_size=64),
        ppo=PPOConfig(iterations=3, rollout_batch=32, epochs=2, minibatches=2),
        seed=seed,
    )


PRESETS = {"lesson": lesson_config, "tiny": tiny_config}


def get_preset(name: str, seed: int = 0) -> Config:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name](seed=seed)


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's generators (call once, up front)."""
    import random

    import torch

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: expected an integer in [0, 2**63) (torch's limit), got {seed!r}")
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "cpu"):
    """``"auto"`` picks CUDA when present, else the CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    return torch.device(device)
