"""Process-wide tuning applied by `gateway serve` before any thread starts."""

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas. By default every thread that allocates may get an arena of
    its own, and the chunk buffers that I/O threads allocate and the event loop frees then
    stay spread over up to 8 x cores arenas: 16 concurrent downloads peaked 40 MiB higher."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
