"""Process-wide tuning applied by `gateway serve` before any thread starts."""

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(*, arenas: int = 2, mmap_threshold: int | None = None) -> None:
    """Keep glibc's malloc from holding memory that Python has freed.

    `arenas` caps malloc's arenas: by default every thread that allocates may get one, and
    the chunk buffers that I/O threads allocate and the event loop frees then stay spread
    over up to 8 x cores arenas (16 concurrent downloads peaked 40 MiB higher).
    `mmap_threshold` fixes the size from which a block gets its own mapping, returned to
    the system when freed; glibc otherwise raises it up to 32 MiB as large blocks are freed,
    and 8 MiB upload parts then stay behind in the heap (the s3 backend sets 4 MiB, above
    its download chunks and below its parts)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.mallopt(M_ARENA_MAX, arenas)
        if mmap_threshold is not None:
            libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
