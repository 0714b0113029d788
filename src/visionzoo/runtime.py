"""Process-wide settings for throughput that a library must not make behind a user's back.

glibc's malloc hands large freed blocks back to the kernel: blocks above its mmap threshold
are unmapped on ``free``, and free memory at the top of the heap beyond its trim threshold is
released. Both thresholds adapt to the largest block freed so far, up to 32 MiB. A CPU
forward allocates tens of MiB of activations and frees them at its end, so every batch maps
that memory afresh and the kernel zeroes it page by page on first touch: measured on a
2-core AMD EPYC VM at batch 4, about 10k minor page faults per forward for Swin-T and
ResNet-50, 10-20 % of their time (Swin-T 114-144 ms a forward against 104-110 ms with the
memory kept; ResNet-50 89-97 ms against 86-87 ms).

:func:`retain_freed_memory` raises both thresholds so freed activations stay in the heap
for the next batch: the same memory is reused, as PyTorch's CUDA caching allocator reuses
GPU memory. The cost is that up to ``keep`` bytes of free memory stay with the process.
The ``visionzoo`` command calls it at start-up (``VISIONZOO_MALLOC=default`` keeps glibc's
behaviour); a program that imports visionzoo decides for itself. Setting
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment before Python
starts has the same effect.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MALLOC_ENV", "malloc_from_env", "memory_retained", "retain_freed_memory", "retains"]

#: environment variable read by the ``visionzoo`` command: ``default`` leaves malloc alone
MALLOC_ENV = "VISIONZOO_MALLOC"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_retained: list[tuple[int, int]] = []  # the (block, keep) last set, if any


def retain_freed_memory(*, block: int = 256 << 20, keep: int = 1 << 30) -> bool:
    """Keep freed memory in this process's heap for reuse instead of returning it to the kernel.

    Sets glibc's ``M_MMAP_THRESHOLD`` to ``block`` (blocks up to this size come from the
    heap, not from a fresh mapping each) and ``M_TRIM_THRESHOLD`` to ``keep`` (the heap is
    trimmed only when more than this is free at its top). This turns off glibc's adaptive
    thresholds for the rest of the process.

    Args:
        block: largest block, in bytes, served from the heap (at most 2**31 - 1).
        keep: free bytes the heap may hold before it is trimmed (at most 2**31 - 1).

    Returns:
        True when both settings took effect; False where the C library is not glibc (macOS,
        Windows, musl), whose allocators behave otherwise and are left alone.
    """
    for arg, value in (("block", block), ("keep", keep)):
        if not 0 < value < 1 << 31:
            raise ValueError(f"{arg} must be between 1 and 2**31 - 1 bytes, got {value}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, block) and mallopt(_M_TRIM_THRESHOLD, keep)):
        return False
    _retained[:] = [(block, keep)]
    return True


def memory_retained() -> tuple[int, int] | None:
    """(block, keep) of the last :func:`retain_freed_memory` that took effect; None if none did."""
    return _retained[0] if _retained else None


def retains(nbytes: int) -> bool:
    """Whether a freed block of ``nbytes`` stays in this process for the next allocation
    (:func:`retain_freed_memory` took effect with room for it): code that splits work only to
    keep such a block from being mapped afresh on every call need not split it."""
    kept = memory_retained()
    return kept is not None and nbytes <= min(kept)


def malloc_from_env() -> bool:
    """What the ``visionzoo`` command does at start-up: :func:`retain_freed_memory` unless
    ``VISIONZOO_MALLOC=default``. Returns whether memory is now retained."""
    setting = os.environ.get(MALLOC_ENV, "retain").strip().lower()
    if setting not in ("retain", "default"):
        raise ValueError(f"{MALLOC_ENV} must be 'retain' or 'default', got {os.environ[MALLOC_ENV]!r}")
    return setting == "retain" and retain_freed_memory()
