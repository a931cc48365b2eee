"""allocator.py: glibc's malloc thresholds, raised so that freed tensors' memory stays in the process. Each
check runs in a fresh process (the thresholds are the whole process's) and counts the page faults itself."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from ppo_lesson import allocator, cli
from ppo_lesson.experiments import pool

STEPS = 40
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# pretraining steps of the lesson's model and batch: by default glibc hands much of what a step frees back to
# the system (blocks above its mmap threshold, and the heap's free top above its trim threshold), so the next
# step faults those pages in again
FAULTS = """
import random, resource, sys
import torch
from ppo_lesson.allocator import keep_freed_memory
from ppo_lesson.config import lesson_config
from ppo_lesson.flat_adam import FlatAdam
from ppo_lesson.model import Seq2SeqTransformer
from ppo_lesson.pretrain import teacher_forcing_loss
from ppo_lesson.task import supervised_batch
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
cfg, rng = lesson_config(), random.Random(0)
model = Seq2SeqTransformer(cfg.model).train()
opt = FlatAdam([{"params": list(model.parameters())}])
def step():
    opt.zero_grad()
    teacher_forcing_loss(model, *supervised_batch(cfg.pretrain.batch_size, cfg.task, rng)).backward()
    opt.step()
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(STEPS):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    script = FAULTS.replace("STEPS", str(STEPS))
    done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux)")
def test_freed_memory_is_kept_instead_of_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    # measured on 2 cores: 47,000-100,000 faults by default, 3-390 kept
    assert default > 100 * STEPS, f"glibc's defaults: only {default} page faults in {STEPS} steps"
    assert kept < 25 * STEPS and 20 * kept < default, f"{kept} page faults in {STEPS} steps kept, {default} by default"


@pytest.mark.skipif(not GLIBC, reason="without glibc it returns False whatever the environment says")
def test_settings_already_in_the_environment_win(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory() is False


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: pytest.fail(f"loaded {name} without glibc"))
    assert allocator.keep_freed_memory() is False


def test_the_command_line_and_the_experiment_workers_set_it(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("cli") or True)
    monkeypatch.setattr(pool, "keep_freed_memory", lambda: calls.append("worker") or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    threads = torch.get_num_threads()
    try:
        pool._start_worker(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert calls == ["cli", "worker"]
