"""Process-wide tuning applied by `gateway serve` before any thread starts."""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MiB = 1024 * 1024
ARENAS = 2
MMAP_THRESHOLD = 5 * MiB  # above the largest download chunk (2 MiB), below an S3 part (5+)
TRIM_THRESHOLD = 128 * MiB


def tune_malloc(*, keep_freed_heap: bool = True) -> None:
    """Make glibc's malloc fit the gateway's buffers: many of 64 KiB to 2 MiB, made and
    freed at up to a few thousand a second, and S3 parts of 5 MiB and more.

    - ARENAS: by default every thread that allocates may get an arena of its own, and the
      chunks that I/O threads allocate and the event loop frees then stay spread over up
      to 8 x cores arenas (16 concurrent downloads peaked 40 MiB higher).
    - MMAP_THRESHOLD, fixed: blocks from 5 MiB (S3 parts) get mappings of their own, given
      back when freed, instead of staying in the heap once glibc has raised its threshold.
    - TRIM_THRESHOLD (`keep_freed_heap`, the local backend): glibc gives the top of the
      heap back to the system as soon as 128 KiB of it are free, so that the next
      request's buffers fault their pages in again; on a virtual machine those faults cost
      as much as the copies (a 1 GiB resumable upload spent 0.45 s of CPU on them, a fifth
      of all). Freed heap is then kept up to 128 MiB. The s3 backend, bound by S3 rather
      than by the CPU, keeps glibc's default and so the least memory: its parts grow in
      the heap before they move to mappings of their own.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.mallopt(M_ARENA_MAX, ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        if keep_freed_heap:
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
