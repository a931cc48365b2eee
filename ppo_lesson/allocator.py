"""Keep freed memory in the process instead of handing it back to the system after every step.

PyTorch on a CPU allocates every tensor with the C library's ``malloc`` and frees it as soon as it is
no longer used. glibc's ``malloc`` (Linux) serves a large block (above 128 KiB at first) from a fresh
``mmap`` and returns it at ``free``, and it also returns the free top of its heap once that exceeds a
trim threshold. A training step of the lesson makes and drops many such blocks (a pretraining
batch's activations are 0.5-1 MiB each), so each step asks the system for pages again, and the
system zeroes every page on first touch. Measured on 2 cores: 1,200-2,500 page faults a pretraining step
over steps 10-50, still 200-370 a step after step 50, and 1.4 s of system time in a whole
``run --preset lesson``.

``keep_freed_memory`` raises both thresholds with glibc's ``mallopt``, so blocks up to 32 MiB come
from the heap and freed memory stays there for the next step. The numbers computed do not change at
all; only where the memory comes from does. The command line calls it first (``cli.py``), and the
experiments' worker processes call it when they start; the notebooks do not (a notebook is the
reader's own process, and it runs fast enough without it). Measured on 2 cores: a pretraining step faults
0-10 pages in, and ``run --preset lesson`` takes 3.7% less wall time (median of 3 alternating pairs; its
1.4 s of system time becomes 0.6 s), with the same results bit for bit."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # bytes: larger blocks still get their own mmap (32 MiB: as high as glibc's own
# adjustment ever raises it on a 64-bit system)
TRIM_THRESHOLD = 256 << 20  # bytes of free memory at the heap's top that are kept rather than returned


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (``MMAP_THRESHOLD``, ``TRIM_THRESHOLD``) for this process.

    Returns True when both were set; False, changing nothing, where the C library is not glibc (macOS,
    Windows, musl) or where the environment already sets malloc's tunables (``GLIBC_TUNABLES`` with a
    ``glibc.malloc`` entry, or ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): a reader's own
    settings win. Setting the thresholds fixes them, which also turns off glibc's own adjustment."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
