"""The kernels of the parallel checks talk over Unix sockets (tools/check_exercises.py grades two submissions
at once; tools/lab_check.py runs beside nbval in CI): two processes picking free TCP ports at the same
moment can hand one port to two kernels, and one of them dies at start. Here a kernel started with each
tool's options, in another folder than its client (as nbgrader and JupyterLab start them), must answer."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.name != "posix", reason="Unix sockets: the tools use TCP elsewhere")


def _tool(name: str):
    sys.path.insert(0, str(ROOT / "tools"))  # check_exercises imports build_exercises beside it
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "tools"))


def _config(options: list[str]) -> Config:
    config = Config()
    for option in options:
        key, value = option.removeprefix("--").split("=", 1)
        section, name = key.split(".")
        config[section][name] = value
    return config


def _answers(config: Config, kernel_cwd: Path, connection_file: Path | None = None) -> str:
    extra = {"connection_file": str(connection_file)} if connection_file else {}
    manager = KernelManager(kernel_name="python3", config=config, **extra)
    manager.start_kernel(cwd=str(kernel_cwd))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive("6 * 7", timeout=30, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
        return client.transport
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_check_exercises_gives_each_student_its_own_absolute_socket_prefix(tmp_path):
    check_exercises = _tool("check_exercises")
    options = {s: check_exercises.kernel_transport(tmp_path, s) for s in ("solved", "untouched")}
    prefixes = {s: _config(o).KernelManager.ip for s, o in options.items()}
    assert all(Path(p).is_absolute() for p in prefixes.values()) and len(set(prefixes.values())) == 2
    (tmp_path / "notebook-folder").mkdir()
    assert _answers(_config(options["solved"]), tmp_path / "notebook-folder") == "ipc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebook-folder"], "the sockets were not cleaned up"


@pytest.fixture
def short_path():  # pytest's tmp_path can be too long for a socket's path
    path = Path(tempfile.mkdtemp(prefix="kt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_lab_check_kernels_use_sockets_beside_their_connection_file(short_path):
    lab_check = _tool("lab_check")
    runtime = short_path / "runtime"
    runtime.mkdir()
    options = lab_check.kernel_transport(runtime)
    assert options == ["--KernelManager.transport=ipc"]
    (short_path / "served").mkdir()
    assert _answers(_config(options), short_path / "served", runtime / "kernel-1.json") == "ipc"
    assert lab_check.kernel_transport(short_path / ("x" * 80)) == [], "a path too long for a socket: TCP"
