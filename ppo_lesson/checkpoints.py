"""Safe checkpoints: written atomically, loaded with ``weights_only=True``, tied to their config.

Stage caching: a trained stage is stored under a key made of the config sections it depends
on and a fingerprint of the code that trains it, so a notebook reuses the policy that notebook
02 trained, and a change to either the settings or the training code retrains it."""

from __future__ import annotations

import glob
import hashlib
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from . import CHECKOUT
from .config import Config
from .errors import CheckpointError
from .stages import code_fingerprint, stage_key

FORMAT_VERSION = 1  # the state dict as it is: a record per tensor, readable with a plain torch.load
PACKED_FORMAT = 2  # the tensors packed in one buffer per dtype (``pack_tensors``): for checkpoints written often
STALE_TMP_SECONDS = 600  # a save takes about a second: a .tmp untouched this long was left by a killed one


def save_checkpoint(
    path, state_dict: dict, cfg: Config, kind: str, extra: dict | None = None, packed: bool = False
) -> Path:
    """Write {kind, config, state_dict, extra} to ``path`` atomically: a temporary file in the same
    folder, then a rename, so an interrupted save never leaves a half-written checkpoint. ``packed``
    stores the tensors with ``pack_tensors`` (a PPO run saves its state after every iteration);
    ``load_checkpoint`` reads both kinds and returns the same state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_files(path)
    payload = {
        "format": PACKED_FORMAT if packed else FORMAT_VERSION,
        "kind": kind,
        "config": cfg.to_dict(),
        "state_dict": pack_tensors(state_dict) if packed else {k: v.detach().cpu() for k, v in state_dict.items()},
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write(payload, f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pack_tensors(tensors: dict) -> dict:
    """{name: tensor} as {"names", "shapes", "dtypes", "buffers"}: the tensors laid end to end in one flat
    buffer per dtype. torch.save writes a zip record and pickles through Python for every tensor: a PPO
    checkpoint of some 560 small tensors took about 14 ms to save as they are, and takes about 6 ms packed."""
    names, shapes, dtypes, parts = [], [], [], {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict: expected a tensor for {name!r}, got {type(tensor).__name__}")
        tensor = tensor.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        names.append(name)
        shapes.append(list(tensor.shape))
        dtypes.append(dtype)
        parts.setdefault(dtype, []).append(tensor.reshape(-1))
    buffers = {dtype: torch.cat(flat) for dtype, flat in parts.items()}
    return {"names": names, "shapes": shapes, "dtypes": dtypes, "buffers": buffers}


def unpack_tensors(packed: dict) -> dict:
    """The {name: tensor} dict that ``pack_tensors`` packed (views into its buffers); a ValueError
    when the parts do not fit together."""
    names, shapes, dtypes, buffers = (packed.get(k) for k in ("names", "shapes", "dtypes", "buffers"))
    if not (isinstance(names, list) and isinstance(shapes, list) and isinstance(dtypes, list)):
        raise ValueError("expected lists of names, shapes and dtypes")
    if not (isinstance(buffers, dict) and len(names) == len(shapes) == len(dtypes)):
        raise ValueError("expected one shape and one dtype per name, and a dict of buffers")
    offsets = dict.fromkeys(buffers, 0)
    tensors = {}
    for name, shape, dtype in zip(names, shapes, dtypes):
        if dtype not in buffers:
            raise ValueError(f"no {dtype} buffer for {name!r}")
        size = math.prod(shape)
        tensors[name] = buffers[dtype][offsets[dtype] : offsets[dtype] + size].view(shape)
        offsets[dtype] += size
    if any(offsets[dtype] != buffers[dtype].numel() for dtype in buffers):
        raise ValueError("the buffers hold more or fewer values than the shapes add up to")
    return tensors


def _write(payload: dict, file) -> None:
    try:
        torch.save(payload, file)
    except RuntimeError as err:  # torch's zip writer reports a short write (disk full, ulimit -f) as a RuntimeError
        raise OSError(f"torch.save failed: {err}") from err


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read the umask is to set it, then put it back
    os.umask(mask)
    return mask


def _remove_stale_tmp_files(path: Path) -> None:
    """Delete the temporary files that saves of ``path`` killed mid-write left behind (a save in
    progress elsewhere keeps its file fresh, so it is left alone)."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS and tmp.is_file():
                tmp.unlink()
        except FileNotFoundError:  # another process cleaned it first
            pass


def check_writable_folder(folder, name: str) -> Path:
    """Create ``folder`` if missing and prove it writable by creating and deleting a file in it;
    raise a ValueError naming ``name`` otherwise (before any training, not after)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name}: expected a folder, but {folder} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or err
        raise ValueError(f"{name}: expected a writable folder, but writing in {folder} failed: {reason}") from None
    return folder


def load_checkpoint(path, kind: str, cfg: Config | None = None, sections=("model",)) -> dict:
    """Load a checkpoint safely (tensors and plain data only) and check it fits.

    Raises CheckpointError when the file is missing, is not a ppo_lesson checkpoint of this
    ``kind``, or was made with different ``sections`` of the config than ``cfg``."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "nothing"
        raise CheckpointError(f"path: expected a checkpoint file at {path}, found {what}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise CheckpointError(f"path: {path} is not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    fields = {"kind": str, "config": dict, "state_dict": dict, "extra": dict}
    if (
        not isinstance(payload, dict)
        or payload.get("format") not in (FORMAT_VERSION, PACKED_FORMAT)
        or not all(isinstance(payload.get(key), kind_of_value) for key, kind_of_value in fields.items())
    ):
        formats = f"format {FORMAT_VERSION} or {PACKED_FORMAT}"
        raise CheckpointError(f"path: {path} is not a ppo_lesson checkpoint ({formats})")
    if payload["format"] == PACKED_FORMAT:
        try:
            payload["state_dict"] = unpack_tensors(payload["state_dict"])
        except (ValueError, RuntimeError, TypeError) as err:  # RuntimeError: a shape that does not fit its values
            raise CheckpointError(f"path: {path} holds damaged tensors ({err})") from err
    if payload["kind"] != kind:
        raise CheckpointError(f"kind: {path} holds a {payload['kind']!r} checkpoint, expected {kind!r}")
    if cfg is not None:
        wanted = cfg.to_dict()
        for section in sections:
            if payload["config"].get(section) != wanted[section]:
                raise CheckpointError(
                    f"config.{section}: {path} was made for {payload['config'].get(section)}, "
                    f"but this run uses {wanted[section]}"
                )
    return payload


def cache_root() -> Path:
    """Where stage results are cached: $PPO_LESSON_CACHE, else ``.cache/`` in the checkout."""
    env = os.environ.get("PPO_LESSON_CACHE")
    return Path(env) if env else CHECKOUT / ".cache"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of a model's parameter and buffer values (the same weights give the same hash on any device)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def stage_path(cfg: Config, stage: str) -> Path:
    """The cache file of a stage for this config, this code and this thread count (float sums
    are split differently across threads, so the weights differ in the last bits)."""
    key = f"{stage_key(cfg, stage)}-{code_fingerprint(stage)}-t{torch.get_num_threads()}"
    return cache_root() / f"{stage}-{key}.pt"
