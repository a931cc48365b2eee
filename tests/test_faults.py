"""Faults and bad input (issue 9, part 4): one test per defect, each an input and the message it now
gets, raised before any training, or a fault handled with nothing lost."""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import stat
import time

import pytest
import torch

from ppo_lesson import checkpoints, pipeline
from ppo_lesson.checkpoints import save_checkpoint, stage_path
from ppo_lesson.cli import main
from ppo_lesson.config import (
    Config,
    ModelConfig,
    PPOConfig,
    PretrainConfig,
    RewardConfig,
    TaskConfig,
    set_seed,
)
from ppo_lesson.finetune import PPOMemory
from ppo_lesson.model import Seq2SeqTransformer
from ppo_lesson.ppo import clipped_surrogate_loss, compute_gae, masked_mean, whiten
from ppo_lesson.reward import RewardModel
from ppo_lesson.task import PAD_ID, encode_numbers

# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 2**64 - 1}, "seed: expected an integer in [0, 4294967295], got 18446744073709551615"),
        ({"seed": True}, "seed: expected an integer, got True"),
        ({"ppo": {"lr": float("inf")}}, "ppo.lr: expected a finite number, got inf"),
        ({"ppo": {"lr": float("nan")}}, "ppo.lr: expected a finite number, got nan"),
        ({"ppo": {"lr": "1e-3"}}, "ppo.lr: expected a finite number, got '1e-3'"),
        ({"reward": {"batch_size": 0}}, "reward.batch_size: expected a positive integer, got 0"),
        ({"ppo": {"iterations": 2.5}}, "ppo.iterations: expected an integer, got 2.5"),
        ({"ppo": {"clip": 1}}, "ppo.clip: expected True or False, got 1"),
        ({"reward": {"init_from_policy": 0}}, "reward.init_from_policy: expected True or False, got 0"),
        ({"ppo": {"max_grad_norm": 0}}, "ppo.max_grad_norm: expected a positive float (a clip at 0 changes no"),
        ({"pretrain": {"grad_clip": 0}}, "pretrain.grad_clip: expected a positive float (a clip at 0 changes no"),
        ({"pretrain": {"beta2": 1.0}}, "pretrain.beta2: expected a float in [0, 1), got 1.0"),
        ({"ppo": {"value_clip": -0.1}}, "ppo.value_clip: expected a positive float, got -0.1"),
        ({"ppo": {"kl_beta": -0.1}}, "ppo.kl_beta: expected a float >= 0, got -0.1"),
        ({"ppo": {"target_kl": float("nan")}}, "ppo.target_kl: expected a finite number or None, got nan"),
        ({"model": {"d_ff": 0}}, "model.d_ff: expected a positive integer, got 0"),
        ({"model": {"n_decoder_layers": 0}}, "model.n_decoder_layers: expected a positive integer, got 0"),
    ],
)
def test_bad_setting_is_refused_naming_section_and_field(tiny_cfg, change, message):
    """Each setting that used to be accepted (and fail late or learn nothing) is a ValueError whose
    message names the section and field, says what was expected and shows the value."""
    with pytest.raises(ValueError) as info:
        tiny_cfg.replace(**change)
    assert str(info.value).startswith(message), str(info.value)


_WRONG_VALUES = {
    int: [2.5, True, "3", None],
    float: ["1e-3", True, float("nan"), float("inf"), None],
    bool: [1, 0, "True", None],
}


@pytest.mark.parametrize("section", [TaskConfig, ModelConfig, PretrainConfig, RewardConfig, PPOConfig])
def test_every_field_refuses_values_of_the_wrong_type(section):
    """Every field of every section (fields added later included: the check reads the declared
    types) refuses values of the wrong type with a ValueError naming the field; ``float | None``
    takes None, and a float field takes an int, stored as a float."""
    default = section()
    for f in dataclasses.fields(section):
        declared = type(getattr(default, f.name))
        for bad in _WRONG_VALUES[declared]:
            if bad is None and f.type == "float | None":
                assert getattr(dataclasses.replace(default, **{f.name: None}), f.name) is None
                continue
            with pytest.raises(ValueError, match=f"^{f.name}: expected "):
                dataclasses.replace(default, **{f.name: bad})
    assert type(PPOConfig(kl_beta=1).kl_beta) is float and type(RewardConfig(label_noise=0).label_noise) is float


def test_misspelled_key_is_refused_naming_it_and_the_known_keys(tiny_cfg):
    """A misspelled setting in replace() or from_dict(), or an unknown section in from_dict(), is a
    ValueError naming the key and listing the known ones (it used to be ignored or a TypeError)."""
    with pytest.raises(ValueError, match=r"^ppo\.learning_rate: unknown setting; expected one of \[.*'lr'"):
        tiny_cfg.replace(ppo={"learning_rate": 1e-4})
    with pytest.raises(ValueError, match=r"^reward\.epoch: unknown setting; expected one of \[.*'epochs'"):
        Config.from_dict({"reward": {"epoch": 2}})
    with pytest.raises(ValueError, match=r"^from_dict: unknown section 'sed'; expected one of \(.*'seed'"):
        Config.from_dict({"sed": 1})
    assert Config.from_dict(tiny_cfg.to_dict()) == tiny_cfg


def test_set_seed_refuses_seeds_torch_cannot_take():
    """set_seed(2**63) is refused with torch's limit named, instead of an overflow inside torch."""
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*63\)"):
        set_seed(2**63)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--seed", "18446744073709551615"], "argument --seed: expected an integer in [0, 4294967295]"),
        (["run", "--seed", "abc"], "argument --seed: expected an integer in [0, 4294967295], got 'abc'"),
        (["run", "--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
        (["run", "--out", ""], "argument --out: expected a folder path, got ''"),
        (["experiments", "--first-seed", "4294967295", "--seeds", "2"], "--first-seed: expected the last seed"),
    ],
)
def test_cli_errors_name_the_option(tmp_path, capsys, argv, message):
    """Bad options exit with status 2 and a message naming the option as the user typed it (not the
    internal ``_seed``), before any training."""
    argv = argv if "--out" in argv else [*argv, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "_seed" not in err, err


# ------------------------------------------------------------------ file system


@pytest.fixture
def no_training(monkeypatch):
    """Replace pretraining by a stub that records its calls: these tests are about the cache."""
    calls = []
    monkeypatch.setattr(pipeline, "pretrain", lambda *args, **kwargs: calls.append(1) or [])
    return calls


@pytest.mark.parametrize(
    "out, message",
    [
        ("{file}/results", "--out: expected a writable folder, but writing in {file}/results failed: Not a directory"),
        ("/proc/ppo_lesson_results", "--out: expected a writable folder, but writing in /proc/ppo_lesson_results"),
        ("{file}", "--out: expected a folder, but {file} is a file"),
    ],
)
def test_out_that_cannot_be_written_fails_before_training(tmp_path, capsys, no_training, out, message):
    """--out under a file, under /proc, or naming a file exits with status 2 and a message naming
    --out, and nothing is trained."""
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "tiny", "--no-progress", "--out", out.format(file=file)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message.format(file=file) in err, err
    assert no_training == []


def test_cache_that_is_a_file_fails_before_training(tmp_path, monkeypatch, capsys, no_training, tiny_cfg):
    """PPO_LESSON_CACHE naming a file: the CLI exits with status 2 naming PPO_LESSON_CACHE, and the
    API raises the same ValueError before pretraining (it used to fail after it)."""
    file = tmp_path / "cache_file"
    file.write_text("x")
    monkeypatch.setenv("PPO_LESSON_CACHE", str(file))
    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"PPO_LESSON_CACHE: expected a folder, but {file} is a file" in err, err
    with pytest.raises(ValueError, match="^PPO_LESSON_CACHE: expected a folder"):
        pipeline.pretrained_policy(tiny_cfg, reuse=False, progress=False)
    assert no_training == []


@pytest.mark.parametrize(
    "error, shown",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
        (RuntimeError("[enforce fail at inline_container.cc] unexpected pos"), "torch.save failed: .*unexpected pos"),
    ],
)
def test_full_disk_while_caching_warns_and_keeps_the_trained_stage(tmp_path, monkeypatch, tiny_cfg, error, shown):
    """A save that fails after pretraining, with ENOSPC or with the RuntimeError torch raises on a short
    write (seen under ``ulimit -f``), only warns: the trained policy is returned, and neither a
    checkpoint nor a .tmp file is left in the cache."""
    monkeypatch.setenv("PPO_LESSON_CACHE", str(tmp_path / "cache"))

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"part of a checkpoint")
        raise error

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    cfg = tiny_cfg.replace(seed=41)
    with pytest.warns(UserWarning, match=f"^cache: could not write .*{shown}.*used but not cached"):
        policy, info = pipeline.pretrained_policy(cfg, reuse=False, progress=False)
    assert isinstance(policy, Seq2SeqTransformer) and info["from_cache"] is False and len(info["history"]) > 0
    assert list((tmp_path / "cache").iterdir()) == []


def test_late_write_error_in_the_cli_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    """An OSError that escapes a command (a write after training on a full disk) exits with status 1
    and the error's text."""
    import ppo_lesson.cli as cli

    def fails_late(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "summary.json"))

    monkeypatch.setattr(cli, "run_command", fails_late)
    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "error: [Errno 28] No space left on device" in err, err


# ------------------------------------------------------------------ stage cache


def test_reward_model_refuses_a_policy_of_another_size(tiny_cfg):
    """trained_reward_model(tiny cfg, a policy of another size) is refused before training, naming
    policy and the difference, and caches nothing (it used to poison the tiny key)."""
    cfg = tiny_cfg.replace(seed=42)
    bigger = Seq2SeqTransformer(dataclasses.replace(cfg.model, d_model=64))
    with pytest.raises(ValueError, match=r"^policy: expected a policy built with cfg.model, got one with d_model 64"):
        pipeline.trained_reward_model(cfg, bigger, reuse=False, progress=False)
    with pytest.raises(ValueError, match="^policy: expected a Seq2SeqTransformer, got str"):
        pipeline.trained_reward_model(cfg, "policy.pt", progress=False)
    assert not stage_path(cfg, "reward").exists()


def test_poisoned_reward_cache_entry_is_ignored_and_replaced(tiny_cfg, tiny_policy, capsys):
    """A reward-model entry stored under the tiny key with weights of another size (what the bad call
    used to leave) is ignored with a message, retrained, and replaced by one that loads."""
    cfg = tiny_cfg.replace(seed=43)
    path = stage_path(cfg, "reward")
    wrong_size = RewardModel(dataclasses.replace(cfg.model, d_model=64))
    made_from = {"policy_fingerprint": checkpoints.weights_fingerprint(tiny_policy)}  # only the size is wrong
    save_checkpoint(path, wrong_size.state_dict(), cfg, "reward_model", made_from)
    _, info = pipeline.trained_reward_model(cfg, tiny_policy, reuse=True, progress=False)
    out = capsys.readouterr().out
    assert info["from_cache"] is False and f"cache: ignoring {path.name}" in out and "size mismatch" in out, out
    _, again = pipeline.trained_reward_model(cfg, tiny_policy, reuse=True, progress=False)
    assert again["from_cache"] is True


def test_reward_cache_entry_is_used_only_for_the_policy_it_was_trained_on(tiny_cfg, tiny_policy, capsys):
    """A reward model cached for one policy is not handed to a call with a policy of the same size
    but other weights (say the PPO-tuned one): a message names policy_fingerprint and it retrains."""
    cfg = tiny_cfg.replace(seed=44)
    pipeline.trained_reward_model(cfg, tiny_policy, reuse=True, progress=False)
    other = copy.deepcopy(tiny_policy)
    with torch.no_grad():
        other.lm_head.bias[0] += 1.0
    capsys.readouterr()
    _, info = pipeline.trained_reward_model(cfg, other, reuse=True, progress=False)
    out = capsys.readouterr().out
    assert info["from_cache"] is False and "cache: ignoring" in out and "policy_fingerprint: expected" in out, out


def _corrupt(path, cfg):
    path.write_bytes(b"\x80\x02 not a checkpoint")


def _folder(path, cfg):
    path.mkdir()


def _wrong_kind(path, cfg):
    save_checkpoint(path, RewardModel(cfg.model).state_dict(), cfg, "reward_model")


def _other_seed(path, cfg):
    save_checkpoint(path, Seq2SeqTransformer(cfg.model).state_dict(), cfg.replace(seed=cfg.seed + 1), "policy")


@pytest.mark.parametrize(
    "seed, make_entry, reason",
    [
        (51, _corrupt, "is not a readable checkpoint"),
        (52, _folder, "expected a checkpoint file at"),
        (53, _wrong_kind, "kind:"),
        (54, _other_seed, "config.seed:"),
    ],
)
def test_cache_entry_that_does_not_fit_is_retrained(tiny_cfg, capsys, no_training, seed, make_entry, reason):
    """A corrupt entry, a folder in its place, a reward model in the policy's place, or a policy of
    another seed is never used: a message names it and why, and the stage is trained again. A folder
    cannot be replaced, so the new policy is kept in memory with a warning."""
    cfg = tiny_cfg.replace(seed=seed)
    path = stage_path(cfg, "pretrain")
    path.parent.mkdir(parents=True, exist_ok=True)
    make_entry(path, cfg)
    if path.is_dir():
        with pytest.warns(UserWarning, match="^cache: could not write"):
            _, info = pipeline.pretrained_policy(cfg, reuse=True, progress=False)
    else:
        _, info = pipeline.pretrained_policy(cfg, reuse=True, progress=False)
        assert pipeline.pretrained_policy(cfg, reuse=True, progress=False)[1]["from_cache"] is True
    out = capsys.readouterr().out
    assert info["from_cache"] is False and no_training == [1]
    assert f"cache: ignoring {path.name}" in out and reason in out and "training again" in out, out


def test_killed_save_leaves_tmp_files_that_the_next_save_removes(tmp_path, tiny_cfg, random_model):
    """A .tmp of the same target older than STALE_TMP_SECONDS (a save killed mid-write) is deleted by
    the next save; a fresh one (a save in progress elsewhere) and other targets' files are kept."""
    stale, fresh = tmp_path / "p.ptabc123.tmp", tmp_path / "p.ptdef456.tmp"
    other = tmp_path / "q.ptabc123.tmp"
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"half")
    old = time.time() - checkpoints.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.pt", fresh.name, other.name])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoint_mode_follows_the_umask(tmp_path, tiny_cfg, random_model, umask, mode):
    """A checkpoint gets mode 0o666 & ~umask like any file the user writes (mkstemp alone gives 0600)."""
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


# ------------------------------------------------------------------ masked positions never matter


def _episodes():
    """Three episodes of lengths 4, 2 and 1 in a (3, 5) batch, with finite rewards and values."""
    g = torch.Generator().manual_seed(9)
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    rewards = torch.randn(3, 5, generator=g) * mask
    values = torch.randn(3, 5, generator=g) * mask
    return rewards, values, mask


def _poison(x, mask, value):
    """x with ``value`` (NaN or inf) on every masked position."""
    return torch.where(mask.bool(), x, torch.full_like(x, value))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_compute_gae_ignores_nan_and_inf_on_padded_slots(bad):
    """A NaN or inf reward or value on a padded slot leaves advantages and returns exactly as with
    clean padding (it used to turn that episode's real tokens into NaN)."""
    rewards, values, mask = _episodes()
    clean = compute_gae(rewards, values, mask, 0.99, 0.95)
    for poisoned in compute_gae(_poison(rewards, mask, bad), _poison(values, mask, bad), mask, 0.99, 0.95), clean:
        assert all(torch.equal(a, b) for a, b in zip(poisoned, clean))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_whiten_and_masked_mean_ignore_nan_and_inf_on_masked_positions(bad):
    """One NaN or inf on a masked position leaves masked_mean and whiten exactly as with clean
    padding (it used to make the whole batch NaN)."""
    rewards, _, mask = _episodes()
    poisoned = rewards.clone()
    poisoned[1, 3] = bad
    assert torch.equal(masked_mean(poisoned, mask), masked_mean(rewards, mask))
    assert torch.equal(whiten(poisoned, mask), whiten(rewards, mask))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_clipped_surrogate_loss_ignores_nan_and_inf_on_padded_tokens(bad):
    """An inf or NaN advantage, logprob or old logprob on a padded token leaves the loss and its
    gradient exactly as with clean padding (an inf advantage used to make the loss NaN)."""
    _, _, mask = _episodes()
    g = torch.Generator().manual_seed(10)
    old = -torch.rand(3, 5, generator=g)
    advantages = torch.randn(3, 5, generator=g)
    results = []
    for poison in (False, True):
        logprobs = (old + 0.3 * torch.randn(3, 5, generator=torch.Generator().manual_seed(11))).requires_grad_()
        lp = _poison(logprobs, mask, bad) if poison else logprobs
        args = [_poison(x, mask, bad) if poison else x for x in (old, advantages)]
        loss = clipped_surrogate_loss(lp, *args, mask, 0.2)
        loss.backward()
        results.append((loss.detach(), logprobs.grad))
    (clean_loss, clean_grad), (loss, grad) = results
    assert torch.isfinite(clean_loss) and torch.equal(loss, clean_loss) and torch.equal(grad, clean_grad)


# ------------------------------------------------------------------ smaller ones


def test_source_row_of_only_pad_is_refused(random_model):
    """A source row made only of PAD is refused by generate and score_tokens, naming src and the
    row (it used to crash inside torch.multinomial on a NaN distribution)."""
    src = encode_numbers([12, 17])
    src[1] = PAD_ID
    with pytest.raises(ValueError, match=r"^src: expected every row to hold a token other than PAD, got .* rows \[1\]"):
        random_model.generate(src, 4)
    with pytest.raises(ValueError, match="^src: expected every row to hold a token other than PAD"):
        random_model.score_tokens(src, encode_numbers([11, 13]))


@pytest.mark.parametrize(
    "value, shown",
    [([1.0, 2.0], "got list"), (torch.tensor(1.0), r"got \(\)"), (3.0, "got float")],
)
def test_ppo_memory_store_refuses_values_without_a_batch_dimension(value, shown):
    """PPOMemory.store refuses a list, a 0-d tensor or a number, naming it, and stores nothing from
    that call."""
    memory = PPOMemory()
    memory.store(ids=torch.arange(2))
    with pytest.raises(ValueError, match=f"^rewards: expected a tensor with the episodes along dim 0, {shown}"):
        memory.store(values=torch.zeros(2), rewards=value)
    assert list(memory.data) == ["ids"]
