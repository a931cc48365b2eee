"""Checkpoints: round trip, weights_only loading, config and kind checks, atomic writes, stage keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import pytest
import torch

from ppo_lesson import checkpoints
from ppo_lesson.checkpoints import load_checkpoint, save_checkpoint, stage_path
from ppo_lesson.config import ModelConfig
from ppo_lesson.errors import CheckpointError
from ppo_lesson.model import Seq2SeqTransformer
from ppo_lesson.task import encode_numbers


class NotATensor:
    """An arbitrary object: pickling it is fine, but a weights_only load must refuse it."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):  # unpickling would create a folder: a visible side effect
        return (pathlib.Path.mkdir, (self.marker,))


def test_save_load_round_trip(tmp_path, tiny_cfg, random_model):
    """A saved state_dict loads back tensor-for-tensor (torch.equal), with kind, config and extra,
    and a fresh model that loads it gives the same logits as the original."""
    path = save_checkpoint(
        tmp_path / "sub" / "policy.pt", random_model.state_dict(), tiny_cfg, "policy", {"note": [1, 2.5]}
    )
    payload = load_checkpoint(path, "policy", tiny_cfg)
    original = random_model.state_dict()
    assert payload["state_dict"].keys() == original.keys()
    assert all(torch.equal(payload["state_dict"][k], original[k]) for k in original)
    assert payload["kind"] == "policy" and payload["extra"] == {"note": [1, 2.5]}
    assert payload["config"] == tiny_cfg.to_dict()
    fresh = Seq2SeqTransformer(tiny_cfg.model)
    fresh.load_state_dict(payload["state_dict"])
    src, tgt = encode_numbers([12, 17]), encode_numbers([11, 19])
    assert torch.equal(fresh.eval()(src, tgt), random_model(src, tgt))


def test_loader_refuses_pickled_objects(tmp_path, tiny_cfg):
    """A file holding a pickled arbitrary object, in an otherwise valid payload, is refused with a
    CheckpointError (weights_only=True), and the object's code never runs; the same file loads with
    weights_only=False, so it is the safe loader that refuses it."""
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    payload = {
        "format": checkpoints.FORMAT_VERSION,
        "kind": "policy",
        "config": tiny_cfg.to_dict(),
        "state_dict": {},
        "extra": {"obj": NotATensor(marker)},
    }
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="^path:"):
        load_checkpoint(path, "policy", tiny_cfg)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()  # the unsafe loader would have run it


def test_loader_refuses_other_model_config(tmp_path, tiny_cfg, random_model):
    """A checkpoint made for another model config is refused with a message naming config.model;
    a difference in a section that is not checked (ppo) is accepted."""
    path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    bigger = tiny_cfg.replace(model={"d_model": 64})
    with pytest.raises(CheckpointError, match=r"^config\.model:"):
        load_checkpoint(path, "policy", bigger)
    load_checkpoint(path, "policy", tiny_cfg.replace(ppo={"lr": 3e-3}))
    with pytest.raises(CheckpointError, match=r"^config\.task:"):
        load_checkpoint(path, "policy", tiny_cfg.replace(task={"max_number": 30}), sections=("model", "task"))


def test_loader_refuses_wrong_kind(tmp_path, tiny_cfg, random_model):
    """A policy checkpoint asked for as a reward model is refused, naming kind."""
    path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    with pytest.raises(CheckpointError, match="^kind:") as info:
        load_checkpoint(path, "reward_model", tiny_cfg)
    assert "'policy'" in str(info.value) and "'reward_model'" in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_loader_refuses_truncated_file(tmp_path, tiny_cfg, random_model, keep):
    """The first half, the first 90%, or none of a valid checkpoint's bytes is refused with a
    CheckpointError (not an arbitrary exception)."""
    good = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError):
        load_checkpoint(bad, "policy", tiny_cfg)


def test_loader_refuses_missing_and_foreign_files(tmp_path, tiny_cfg):
    """A missing path, a text file, and a torch file that is not a ppo_lesson payload are all
    CheckpointErrors naming path."""
    with pytest.raises(CheckpointError, match="^path:"):
        load_checkpoint(tmp_path / "nope.pt", "policy")
    (tmp_path / "t.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="^path:"):
        load_checkpoint(tmp_path / "t.pt", "policy")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="^path:"):
        load_checkpoint(tmp_path / "w.pt", "policy")


def test_save_is_atomic(tmp_path, tiny_cfg, random_model, monkeypatch):
    """When torch.save fails after writing part of the file, the good checkpoint already at that
    path is byte-for-byte unchanged, no *.tmp file is left, and the error reaches the caller (as an
    OSError: torch reports a short write as a RuntimeError)."""
    path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    other = Seq2SeqTransformer(tiny_cfg.model)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, other.state_dict(), tiny_cfg, "policy")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]
    monkeypatch.undo()
    load_checkpoint(path, "policy", tiny_cfg)


def _expected_key(cfg, sections):
    """The stage key written out a second way: sha256 of the sorted JSON of the sections + seed."""
    payload = {name: dataclasses.asdict(getattr(cfg, name)) for name in sections}
    payload["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_stage_path_tracks_relevant_sections(tiny_cfg, isolated_cache):
    """stage_path lives under $PPO_LESSON_CACHE; its key is the hash of the stage's sections (checked
    against a hash computed here); it changes when task, model, pretrain, seed (and, for the reward
    stage, reward) change, and not when ppo changes."""
    for stage, sections in (
        ("pretrain", ("task", "model", "pretrain")),
        ("reward", ("task", "model", "pretrain", "reward")),
    ):
        path = stage_path(tiny_cfg, stage)
        assert path.parent == isolated_cache
        assert _expected_key(tiny_cfg, sections) in path.name
        assert stage_path(tiny_cfg.replace(ppo={"lr": 1e-2, "iterations": 9}), stage) == path
        for change in ({"task": {"max_number": 25}}, {"model": {"d_ff": 32}}, {"pretrain": {"steps": 61}}, {"seed": 1}):
            assert stage_path(tiny_cfg.replace(**change), stage) != path, (stage, change)
    reward_changed = tiny_cfg.replace(reward={"n_pairs": 300})
    assert stage_path(reward_changed, "pretrain") == stage_path(tiny_cfg, "pretrain")
    assert stage_path(reward_changed, "reward") != stage_path(tiny_cfg, "reward")


def test_pipeline_reuses_its_cached_policy(tiny_cfg, pretrained_run, isolated_cache):
    """The session fixture trained and cached the tiny policy in the temporary cache; asking again
    with reuse=True loads it from there with identical weights, without training."""
    from ppo_lesson.pipeline import pretrained_policy

    assert stage_path(tiny_cfg, "pretrain").exists()
    policy, info = pretrained_policy(tiny_cfg, reuse=True, progress=False)
    assert info["from_cache"] is True
    trained = pretrained_run[0].state_dict()
    assert all(torch.equal(policy.state_dict()[k], trained[k]) for k in trained)


def test_model_config_round_trips_through_checkpoint_config(tmp_path, tiny_cfg, random_model):
    """The config stored in a checkpoint rebuilds the same ModelConfig it was saved with."""
    path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy")
    stored = load_checkpoint(path, "policy")["config"]
    assert ModelConfig(**stored["model"]) == tiny_cfg.model


def test_packed_tensors_round_trip_every_dtype_and_shape():
    """pack_tensors lays tensors of several dtypes and shapes (a scalar, an empty one, a transposed view)
    end to end, one buffer per dtype; unpack_tensors gives back equal tensors under the same names."""
    original = {
        "w": torch.randn(3, 4).t(),  # not contiguous
        "step": torch.tensor(7.0),
        "empty": torch.zeros(0, 5),
        "ids": torch.arange(6).view(2, 3),
        "flags": torch.tensor([True, False]),
        "b": torch.randn(5),
    }
    packed = checkpoints.pack_tensors(original)
    assert sorted(packed["buffers"]) == ["bool", "float32", "int64"]
    assert packed["buffers"]["float32"].numel() == 12 + 1 + 0 + 5
    unpacked = checkpoints.unpack_tensors(packed)
    assert list(unpacked) == list(original)
    for name, tensor in original.items():
        assert unpacked[name].dtype == tensor.dtype and torch.equal(unpacked[name], tensor), name


def test_packed_file_with_damaged_parts_is_refused(tmp_path, tiny_cfg, random_model):
    """A packed file whose shapes no longer add up to its buffer gives a CheckpointError naming the path."""
    path = save_checkpoint(tmp_path / "p.pt", random_model.state_dict(), tiny_cfg, "policy", packed=True)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["shapes"][0] = [1]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"^path: .*damaged tensors"):
        load_checkpoint(path, "policy", tiny_cfg)


def test_packed_and_plain_checkpoints_load_to_the_same_state_dict(tmp_path, tiny_cfg, random_model):
    """save_checkpoint writes the plain format (a record per tensor, what a bare torch.load reads as a state
    dict) unless asked to pack; load_checkpoint returns equal tensors under the same names from both."""
    state = random_model.state_dict()
    plain = save_checkpoint(tmp_path / "plain.pt", state, tiny_cfg, "policy")
    packed = save_checkpoint(tmp_path / "packed.pt", state, tiny_cfg, "policy", packed=True)
    assert torch.load(plain, weights_only=True)["state_dict"].keys() == state.keys()
    assert torch.load(packed, weights_only=True)["format"] == checkpoints.PACKED_FORMAT
    for path in (plain, packed):
        loaded = load_checkpoint(path, "policy", tiny_cfg)["state_dict"]
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
