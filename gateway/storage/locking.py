"""flock() on the local disk: how one writer keeps others, and the sweep, off a file."""

import fcntl
import os
from pathlib import Path


def open_locked(path: str | Path, flags: int) -> int | None:
    """`path` opened and flock()ed without waiting; None if it does not exist. Raises
    BlockingIOError while another open file holds the lock."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
