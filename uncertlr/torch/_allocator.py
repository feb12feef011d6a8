"""Keep freed CPU memory in glibc's heap for the next training step instead of returning it to the OS."""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems
_MAX_MMAP_THRESHOLD = 32 * 2**20


@functools.cache
def _load_glibc() -> ctypes.CDLL | None:
    try:  # glibc's soname on every Linux architecture it supports (no `find_library` subprocess)
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - a glibc system without a loadable libc
        return None
    return libc if hasattr(libc, "mallopt") else None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return _load_glibc()  # loaded once: the app pipeline calls keep_freed_memory for every model it sets up


def keep_freed_memory(*, mmap_threshold: int = _MAX_MMAP_THRESHOLD, trim_threshold: int = 2**30) -> bool:
    """Let glibc's ``malloc`` keep freed memory for reuse instead of handing it back to the OS (Linux, CPU).

    A BNN training step on a CPU allocates and frees several parameter-sized tensors (the sampled weights,
    their gradients, the optimizer's temporaries). With glibc's defaults, blocks over a dynamic threshold are
    ``mmap``-ed and free memory at the top of the heap is trimmed once it exceeds a few MiB, so every step
    page-faults the same memory back in: in a one-model process on the 784-400-400-10 MLP this cost 12–24%
    of a BNN step and 26–33% of a deterministic one (BENCHMARKS.md, "glibc's allocator"). This sets, for the whole process and for the rest of its life,
    ``M_MMAP_THRESHOLD`` (blocks smaller than it come from the heap and are reused) and ``M_TRIM_THRESHOLD``
    (free memory kept at the top of the heap) through ``mallopt(3)``, the same as starting Python with
    ``MALLOC_MMAP_THRESHOLD_=...`` and ``MALLOC_TRIM_THRESHOLD_=...`` in the environment.

    The cost: the process's resident memory stays near its peak instead of shrinking after it. The app
    pipeline (``uncertlr demo``, ``uncertlr train``, the examples) calls it before it trains; the library's
    own functions (``bayesian``, ``fit``, ...) never change your process's allocator unless you ask. Calling
    it again is cheap. GPU memory is not affected.

    Args:
        mmap_threshold: bytes; blocks at least this large are still ``mmap``-ed and returned when freed.
            glibc accepts at most 32 MiB on 64-bit systems.
        trim_threshold: bytes of free memory glibc keeps at the top of the heap before returning any.

    Returns:
        True if glibc took both settings; False (nothing changed) where the C library is not glibc
        (macOS, Windows, musl-based Linux).

    Raises:
        ValueError: a threshold that is not a positive integer, or one glibc refuses.

    Example:
        >>> from uncertlr.torch import keep_freed_memory
        >>> keep_freed_memory()  # doctest: +SKIP
        True
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive number of bytes; got {value!r}")
    if mmap_threshold > _MAX_MMAP_THRESHOLD:
        raise ValueError(
            f"mmap_threshold must be at most {_MAX_MMAP_THRESHOLD} bytes (32 MiB, glibc's limit); "
            f"got {mmap_threshold}"
        )
    if trim_threshold >= 2 ** (8 * ctypes.sizeof(ctypes.c_int) - 1):
        raise ValueError(f"trim_threshold must fit a C int (mallopt's argument); got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    # the trim threshold first: setting either one also turns off glibc's dynamic mmap threshold
    if not libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)):  # pragma: no cover - glibc refused
        raise ValueError(f"glibc refused M_TRIM_THRESHOLD={trim_threshold}")
    if not libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold)):  # pragma: no cover
        raise ValueError(f"glibc refused M_MMAP_THRESHOLD={mmap_threshold}")
    return True
