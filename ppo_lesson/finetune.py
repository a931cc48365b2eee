"""PPO fine-tuning (notebook 05): the agent (policy + value head), the rollout buffer, collecting
rollouts, the update, and the loop with its checkpoints. The objective's pieces live in ``ppo.py``."""

from __future__ import annotations

import copy
import random
import time

import torch
from torch import nn

from .checkpoints import load_checkpoint, save_checkpoint
from .config import Config, PPOConfig
from .errors import TrainingError
from .flat_adam import FlatAdam
from .model import Seq2SeqTransformer
from .ppo import (
    clipped_surrogate_loss,
    compute_gae,
    explained_variance,
    kl_controller,
    kl_penalty_rewards,
    masked_mean,
    policy_diagnostics,
    value_loss,
    whiten,
)
from .progress import progress_bar
from .reward import RewardModel
from .stages import seed_for
from .task import encode_numbers, gold_scores, sample_numbers


class PPOAgent(nn.Module):
    """The policy (a Seq2SeqTransformer) plus a value head that reads the same decoder state.

    The value head starts at zero: until the critic has learned something, V(s) = 0 and the
    advantages are the lambda-discounted rewards-to-go. It learns at its own learning rate
    (``PPOConfig.value_lr``, see ``parameter_groups``): at the policy's small one it hardly moves."""

    def __init__(self, policy: Seq2SeqTransformer):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.cfg.d_model, 1).to(policy.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, src, tokens, temperature: float = 1.0):
        """Re-score sampled answers. Returns logprobs, entropy and values, each (B, T):
        values[:, t] estimates the return from the state in which tokens[:, t] was chosen."""
        logprobs, entropy, hidden = self.policy.score_tokens(src, tokens, temperature)
        return logprobs, entropy, self.value_head(hidden).squeeze(-1)

    def parameter_groups(self, cfg: PPOConfig) -> list[dict]:
        """Adam parameter groups: the policy at ``cfg.lr``, the value head at ``cfg.value_lr``."""
        return [
            {"params": list(self.policy.parameters()), "lr": cfg.lr},
            {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
        ]


class PPOMemory:
    """Rollout buffer: per-episode tensors of one batch, handed out as shuffled minibatches."""

    def __init__(self):
        self.data: dict[str, torch.Tensor] = {}

    def store(self, **tensors: torch.Tensor) -> None:
        """Add tensors of shape (episodes, ...), all with as many episodes as the buffer already holds."""
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected a tensor with the episodes along dim 0, got {shape}")
        sizes = [t.size(0) for t in (*self.data.values(), *tensors.values())]
        for name, t in tensors.items():
            if t.size(0) != sizes[0]:
                raise ValueError(f"{name}: expected {sizes[0]} episodes like the rest of the buffer, got {t.size(0)}")
        self.data.update(tensors)

    def __len__(self) -> int:
        return next(iter(self.data.values())).size(0) if self.data else 0

    def minibatches(self, n_minibatches: int, generator: torch.Generator | None = None):
        """Yield ``n_minibatches`` dicts covering a random permutation of the episodes."""
        if not 0 < n_minibatches <= len(self):
            raise ValueError(f"n_minibatches: expected an int in [1, {len(self)}], got {n_minibatches}")
        order = torch.randperm(len(self), generator=generator)
        for idx in order.tensor_split(n_minibatches):
            yield {name: t[idx.to(t.device)] for name, t in self.data.items()}


@torch.no_grad()
def collect_rollouts(
    agent: PPOAgent,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    src,
    cfg: Config,
    kl_beta: float,
    generator: torch.Generator | None = None,
) -> tuple[PPOMemory, dict]:
    """Sample one answer per source, score it, and fill a PPOMemory with everything the update
    needs (old logprobs and values from the same teacher-forced pass the update will use)."""
    ppo_cfg = cfg.ppo
    agent.eval()
    out = agent.policy.generate(src, cfg.task.max_target_len, temperature=ppo_cfg.temperature, generator=generator)
    tokens, mask = out.tokens, out.mask
    # The three scoring passes in inference mode, as generate samples: no autograd bookkeeping at all, the same
    # numbers, about 1.5 ms less per rollout (sampling included) than no_grad alone. Their outputs are copied
    # out of it: inference tensors refuse to take part in a later backward pass (a learner's own loss on them).
    with torch.inference_mode():
        scored = agent(src, tokens, ppo_cfg.temperature)
        ref_logprobs, _, _ = reference.score_tokens(src, tokens, ppo_cfg.temperature)
        scores = reward_model.score(src, tokens, mask)
    old_logprobs, entropy, old_values, ref_logprobs, scores = (t.clone() for t in (*scored, ref_logprobs, scores))
    if not ppo_cfg.use_critic:  # the "V = 0" baseline: advantages are the rewards-to-go
        old_values = torch.zeros_like(old_values)
    rewards = kl_penalty_rewards(old_logprobs, ref_logprobs, scores, mask, kl_beta)
    advantages, returns = compute_gae(rewards, old_values, mask, ppo_cfg.gamma, ppo_cfg.lam)
    memory = PPOMemory()
    memory.store(
        src=src,
        tokens=tokens,
        mask=mask,
        old_logprobs=old_logprobs,
        old_values=old_values,
        rewards=rewards,
        advantages=whiten(advantages, mask),
        returns=returns,
    )
    log_ratio = (old_logprobs - ref_logprobs) * mask  # log p / p_ref on the policy's own samples
    gold = gold_scores(src, tokens, mask, cfg.task)
    stats = {
        "proxy_reward": scores.mean().item(),
        "gold_reward": gold.mean().item(),
        "valid_fraction": (gold > -1).float().mean().item(),
        "kl": log_ratio.sum(1).mean().item(),
        "kl_k3": (((-log_ratio).exp() - 1 + log_ratio) * mask).sum(1).mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
        "length": mask.sum(1).mean().item(),
        "explained_variance": explained_variance(old_values, returns, mask),
    }
    return memory, stats


def ppo_update(agent: PPOAgent, optimizer, memory: PPOMemory, cfg: PPOConfig, generator=None) -> list[dict]:
    """K epochs of shuffled minibatches over one rollout; stops early when an epoch's mean
    approx_kl exceeds ``cfg.target_kl``. Returns one dict of statistics per minibatch."""
    clip_eps = cfg.clip_eps if cfg.clip else float("inf")
    stats = []
    for epoch in range(cfg.epochs):
        epoch_stats = []
        for mb in memory.minibatches(cfg.minibatches, generator):
            logprobs, entropy, values = agent(mb["src"], mb["tokens"], cfg.temperature)
            mask = mb["mask"]
            pg_loss = clipped_surrogate_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask, clip_eps)
            vf_loss = torch.zeros(())  # no critic: nothing to fit
            if cfg.use_critic:
                vf_loss = value_loss(values, mb["old_values"], mb["returns"], mask, cfg.value_clip)
            mean_entropy = masked_mean(entropy, mask)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * mean_entropy
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite PPO loss in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(optimizer, FlatAdam):  # PPOTrainer's: the same clip over one buffer of gradients
                grad_norm = optimizer.clip_grad_norm_(cfg.max_grad_norm)
            else:
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm, foreach=True)
            optimizer.step()
            epoch_stats.append(
                {
                    "epoch": epoch,
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "grad_norm": grad_norm.item(),
                    **policy_diagnostics(logprobs, mb["old_logprobs"], mask, cfg.clip_eps),
                }
            )
        stats.extend(epoch_stats)
        mean_kl = sum(s["approx_kl"] for s in epoch_stats) / len(epoch_stats)
        if cfg.target_kl is not None and mean_kl > cfg.target_kl:
            break
    return stats


def check_models(agent: PPOAgent, reference: Seq2SeqTransformer, reward_model: RewardModel) -> None:
    """Refuse models of the wrong type, and a reference or reward model that shares parameters with the
    agent: PPO would move it along with the policy (with ``reference=agent.policy`` the KL stays 0)."""
    for name, module, kind in (
        ("agent", agent, PPOAgent),
        ("reference", reference, nn.Module),
        ("reward_model", reward_model, nn.Module),
    ):
        if not isinstance(module, kind):
            raise TypeError(f"{name}: expected a {kind.__module__}.{kind.__name__}, got {type(module).__name__}")
    trained = {id(p) for p in agent.parameters()}
    for name, module in (("reference", reference), ("reward_model", reward_model)):
        shared = sum(id(p) in trained for p in module.parameters())
        if shared:
            raise ValueError(
                f"{name}: expected a model that shares no parameters with the agent being trained "
                f"(pass a copy, e.g. copy.deepcopy(policy)), got one that shares {shared} of them"
            )


class PPOTrainer:
    """Everything a PPO run changes as it goes: the agent, its optimizer, the KL controller, the random
    generators and the history. ``state()`` and ``load_state()`` capture and restore all of it, so an
    interrupted iteration can be undone and a saved run continues exactly as if it never stopped."""

    def __init__(self, agent: PPOAgent, reference, reward_model, cfg: Config, device="cpu"):
        check_models(agent, reference, reward_model)
        self.agent, self.cfg, self.device = agent.to(device), cfg, device
        self.reference = reference.to(device).eval().requires_grad_(False)
        self.reward_model = reward_model.to(device).eval()  # only used under no_grad: its flags stay the caller's
        # torch's fused Adam over one buffer per group instead of 93 tensors: the same numbers, less Python
        # per step (flat_adam.py)
        self.optimizer = FlatAdam(agent.parameter_groups(cfg.ppo), eps=1e-5)
        self.controller = kl_controller(cfg.ppo)
        self.rng = random.Random(seed_for(cfg, "rollouts"))  # draws the source numbers
        self.rollout_generator = torch.Generator(device=device).manual_seed(seed_for(cfg, "rollouts"))  # samples
        self.shuffle_generator = torch.Generator().manual_seed(seed_for(cfg, "minibatch_order"))
        self.history: list[dict] = []
        self._completed = None  # state() after the last iteration run_iteration_or_undo completed
        # the agent's state dict in the order of the optimizer's buffers, if it holds only those parameters
        names = {id(p): name for name, p in agent.named_parameters()}
        layout = [names.get(id(p)) for group in self.optimizer.params for p in group]
        self._agent_layout = (self.optimizer, layout) if set(layout) == set(agent.state_dict()) else None

    def iteration(self) -> dict:
        """One rollout, one update and one KL-controller step; appends the iteration's row to the history."""
        start = time.perf_counter()
        memory, rollout = self.rollout()
        row = self.learn(memory, rollout)
        row["seconds"] = time.perf_counter() - start
        return row

    def rollout(self) -> tuple[PPOMemory, dict]:
        """Sample a batch of answers with the current policy and fill the buffer (``collect_rollouts``)."""
        self._completed = None  # the generators move: a copy taken before is no longer the current state
        src = encode_numbers(sample_numbers(self.cfg.ppo.rollout_batch, self.cfg.task, self.rng)).to(self.device)
        memory, stats = collect_rollouts(
            self.agent, self.reference, self.reward_model, src, self.cfg, self.controller.value, self.rollout_generator
        )
        return memory, {**stats, "kl_beta": self.controller.value}

    def learn(self, memory: PPOMemory, rollout: dict) -> dict:
        """The update on one rollout, then the KL-controller step; appends and returns the history row."""
        ppo_cfg, it = self.cfg.ppo, len(self.history)
        self._completed = None
        try:
            updates = ppo_update(self.agent, self.optimizer, memory, ppo_cfg, self.shuffle_generator)
        except FloatingPointError as err:
            raise TrainingError("ppo", it, self.history[-1] if self.history else None) from err
        self.controller.update(rollout["kl"], ppo_cfg.rollout_batch)
        row = {
            "iteration": it,
            **rollout,
            **{k: mean_of(updates, k) for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac")},
            "epochs_run": updates[-1]["epoch"] + 1,
        }
        self.history.append(row)
        return row

    def state(self) -> dict:
        """A copy of everything the next iteration depends on (later steps do not change it), taken every
        iteration as the way back. ``copy.deepcopy`` of the same dicts took about 4 ms; here the weights are
        one clone per FlatAdam buffer (``_agent_copy``) and Adam's moments are one tensor per group."""
        optimizer = self.optimizer.state_dict()
        return {
            "agent": self._agent_copy(),
            "optimizer": {
                "state": {i: _clone_values(s) for i, s in optimizer["state"].items()},
                "param_groups": copy.deepcopy(optimizer["param_groups"]),
            },
            "kl_beta": self.controller.value,
            "python_random": self.rng.getstate(),
            "rollout_generator": self.rollout_generator.get_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "history": [dict(row) for row in self.history],  # rows hold numbers only
        }

    def _agent_copy(self) -> dict:
        """A copy of the agent's state dict: one clone per FlatAdam buffer (views into it), or one per tensor
        when the optimizer was replaced or the agent holds tensors it does not train."""
        if self._agent_layout is not None and self._agent_layout[0] is self.optimizer:
            copies = [t for group in self.optimizer.copy_parameters() for t in group]
            return dict(zip(self._agent_layout[1], copies))
        return {k: v.clone() for k, v in self.agent.state_dict().items()}

    def load_state(self, state: dict) -> None:
        """Go back (or forward) to a state from ``state()`` or ``load_ppo_checkpoint``."""
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.controller.value = state["kl_beta"]
        self.rng.setstate(state["python_random"])
        self.rollout_generator.set_state(state["rollout_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.history = [dict(row) for row in state["history"]]
        self._completed = None

    def save(self, path, state: dict | None = None) -> None:
        """Write the state (``state`` when given, a copy from ``state()`` taken now otherwise), the reference
        and the reward model to ``path`` atomically, as tensors and plain Python values only (loadable with
        ``weights_only=True``)."""
        state = dict(state or self.state())
        weights = {f"agent.{k}": v for k, v in state.pop("agent").items()}
        weights.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        weights.update({f"reward_model.{k}": v for k, v in self.reward_model.state_dict().items()})
        optimizer = state.pop("optimizer")  # its tensors go with the weights, packed in one buffer
        other = {}
        for i, param_state in optimizer["state"].items():
            other[i] = {k: v for k, v in param_state.items() if not isinstance(v, torch.Tensor)}
            weights.update({f"optimizer.{i}.{k}": v for k, v in param_state.items() if isinstance(v, torch.Tensor)})
        state["optimizer"] = {"state": other, "param_groups": optimizer["param_groups"]}
        extra = {**state, "iteration": len(self.history)}
        save_checkpoint(path, weights, self.cfg, "ppo_state", extra, packed=True)  # about 6 ms instead of 14

    def run_iteration_or_undo(self, checkpoint=None) -> None:
        """One iteration (saved to ``checkpoint`` when given); if anything stops it half-way (Ctrl-C,
        a non-finite loss), every part of the trainer goes back to the last completed iteration."""
        before = self._completed if self._completed is not None else self.state()
        try:
            self.iteration()
            completed = self.state()  # one copy serves as the checkpoint and as the next iteration's way back
            if checkpoint is not None:
                self.save(checkpoint, completed)
        except BaseException:
            self.load_state(before)
            raise
        self._completed = completed


def load_ppo_checkpoint(path) -> dict:
    """Read a checkpoint written by ``PPOTrainer.save``: the ``state()`` keys plus config (a Config),
    reference and reward_model (state dicts) and iteration (completed iterations)."""
    payload = load_checkpoint(path, "ppo_state")
    state = {**payload["extra"], "config": Config.from_dict(payload["config"])}
    for part in ("agent", "reference", "reward_model"):
        prefix = f"{part}."
        state[part] = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    optimizer = state["optimizer"]
    for name, tensor in payload["state_dict"].items():  # "optimizer.<param index>.<key>", from ``PPOTrainer.save``
        if name.startswith("optimizer."):
            index, key = name.removeprefix("optimizer.").split(".", 1)
            optimizer["state"].setdefault(int(index), {})[key] = tensor
    return state


def finetune_ppo(
    agent: PPOAgent,
    reference: Seq2SeqTransformer,
    reward_model: RewardModel,
    cfg: Config,
    device="cpu",
    callback=None,
    progress: bool = True,
    checkpoint=None,
    resume: dict | None = None,
) -> list[dict]:
    """The PPO loop: rollouts, GAE, K epochs of clipped updates, KL-controller step.

    Returns one dict per iteration (proxy_reward, gold_reward, valid_fraction, kl, kl_k3,
    entropy, approx_kl, clipfrac, policy_loss, value_loss, explained_variance, epochs_run, kl_beta, ...).
    The agent stays in eval mode throughout: with dropout off, re-scoring reproduces the
    sampling distribution exactly, so the ratio is 1 before the first step.
    ``callback(history)`` runs after every iteration. Interrupting (Ctrl-C, the notebook's stop
    button) discards the iteration in progress and returns the history so far; the agent, its
    optimizer and the KL controller stay exactly at the last completed iteration.
    ``checkpoint``: a path where the whole training state is saved before the first and after every
    completed iteration. ``resume``: a state from ``load_ppo_checkpoint`` to continue from."""
    trainer = PPOTrainer(agent, reference, reward_model, cfg, device)
    if resume is not None:
        if resume["config"] != cfg:
            raise ValueError("resume: expected a checkpoint made with this cfg, got one made with another config")
        trainer.load_state(resume)
    elif checkpoint is not None:
        trainer.save(checkpoint)
    bar = progress_bar(range(len(trainer.history), cfg.ppo.iterations), desc="ppo", enabled=progress)
    try:
        for _ in bar:
            trainer.run_iteration_or_undo(checkpoint)
            row = trainer.history[-1]
            bar.set_postfix(gold=f"{row['gold_reward']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(trainer.history)
    except KeyboardInterrupt:
        print(f"ppo: interrupted; returning the {len(trainer.history)} completed iterations")
    return trainer.history


def _clone_values(values: dict) -> dict:
    """A copy of one parameter's optimizer state: tensors cloned, other values (if any) deep-copied."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in values.items()}


def mean_of(rows: list[dict], key: str) -> float:
    """The mean of ``row[key]`` over the rows (the statistics of an update's minibatches)."""
    return sum(r[key] for r in rows) / len(rows)
