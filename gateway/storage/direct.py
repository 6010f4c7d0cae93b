"""Appending a stream to a file with O_DIRECT, past the page cache.

A buffered write() copies every byte into the page cache, into pages the kernel must find
first. On a virtual machine whose host takes back the guest's free memory (virtio free
page reporting), those pages fault in from the host again, and the copy then runs at a
few hundred MB/s, slower than the disk: here, `dd bs=8M conv=fdatasync` wrote 1 GiB at
352 MB/s into the page cache and at 1.8 GB/s with `oflag=direct`. Bytes written directly
go from a buffer the process keeps (so its pages are already there) to the disk.

O_DIRECT needs the file offset, the length and the memory of every write aligned to the
device's block size: each batch of chunks is copied into an aligned buffer and written up
to the last whole block; what is left over starts the next batch, and the last few bytes
of a stream, like the bytes before the first block boundary when a stream starts
mid-block (a resumable upload's next chunk), are written through the page cache. Where
the file system refuses O_DIRECT (tmpfs, some FUSE file systems), everything is.
"""

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Sequence

from .base import Buffer

ALIGN = 4096  # a multiple of every common logical block size (512, 4096)
WRITERS = 8  # direct writes at once in the process (four starved 16 uploads; 16: no better)


def aligned_buffer(size: int) -> memoryview:
    """`size` bytes of fresh memory that start on an ALIGN boundary: a chunk of a body read
    into it is written with O_DIRECT where it is (Appender), not copied into an aligned
    buffer first."""
    memory = bytearray(size + ALIGN)
    skip = -ctypes.addressof(ctypes.c_char.from_buffer(memory)) % ALIGN
    return memoryview(memory)[skip : skip + size]


def _aligned(chunk: Buffer) -> bool:
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(chunk))
    except (TypeError, ValueError):  # read-only (bytes) or empty
        return False
    return not address % ALIGN


class AlignedBuffers:
    """Page-aligned buffers, lent to one write at a time and kept for the next (a fresh
    one faults its pages in). At most WRITERS are lent at once, so that however many
    uploads append together, this memory stays at WRITERS batches."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.writers = threading.BoundedSemaphore(WRITERS)
        self.supported = hasattr(os, "O_DIRECT")  # until a file system says otherwise

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for at, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(at)
            if self._free:  # too small: a larger one replaces it
                self._free.pop().close()
        return mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)

    def give_back(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < WRITERS:
                self._free.append(buffer)
                return
        buffer.close()


class Appender:
    """Writes batches of chunks at the end of what it wrote so far, from `position`.

    `append` and `finish` run in worker threads, one call at a time."""

    def __init__(self, fd: int, position: int, buffers: AlignedBuffers):
        self.fd, self.position, self.buffers = fd, position, buffers
        self.direct = buffers.supported
        self.carry = b""  # bytes short of a block, written with the next batch

    def append(self, chunks: Sequence[Buffer]) -> None:
        if not self.direct:
            self._write_buffered(chunks)
            return
        head = -self.position % ALIGN
        if not head and not self.carry and self._append_in_place(chunks):
            return
        if head:  # the stream starts mid-block: through the page cache up to the boundary
            data = b"".join([self.carry, *chunks])
            self.carry = b""
            self._write_buffered([memoryview(data)[:head]])
            chunks = [memoryview(data)[head:]] if len(data) > head else []
        total = len(self.carry) + sum(len(chunk) for chunk in chunks)
        if not total:
            return
        with self.buffers.writers:
            buffer = self.buffers.take(total)
            view = memoryview(buffer)
            try:
                at = len(self.carry)
                view[:at] = self.carry
                # from here the carry is in the buffer only: should a write fail, the file
                # stays a clean prefix of the stream, and finish() writes nothing twice
                self.carry = b""
                for chunk in chunks:
                    view[at : at + len(chunk)] = chunk
                    at += len(chunk)
                whole = total - total % ALIGN
                if whole and not self._write_direct([view[:whole]]):
                    self._write_buffered([view[:total]])
                    self.carry = b""
                    return
                self.carry = bytes(view[whole:total])
            finally:
                view.release()
                self.buffers.give_back(buffer)

    def _append_in_place(self, chunks: Sequence[Buffer]) -> bool:
        """Write chunks that are aligned already (aligned_buffer; whole blocks but for the
        last) from where they are; False, having written nothing, for any others."""
        if not chunks or not all(map(_aligned, chunks)):
            return False
        *whole, last = chunks
        if any(len(chunk) % ALIGN for chunk in whole):
            return False
        tail = len(last) % ALIGN
        views = [memoryview(chunk) for chunk in whole]
        if len(last) > tail:
            views.append(memoryview(last)[: len(last) - tail])
        with self.buffers.writers:
            if views and not self._write_direct(views):
                self._write_buffered(chunks)
                return True
        self.carry = bytes(memoryview(last)[len(last) - tail :])
        return True

    def finish(self) -> None:
        """Write what is left, through the page cache. Once only: should the write fail
        part-way, the file stays a clean prefix of the stream."""
        carry, self.carry = self.carry, b""
        try:
            if carry:
                self._write_buffered([carry])
        finally:
            os.lseek(self.fd, self.position, os.SEEK_SET)

    def _write_direct(self, data: list[memoryview]) -> bool:
        """Write whole blocks with O_DIRECT; False, having written nothing for good, if the
        file system does not take it."""
        start = self.position
        try:
            _set_direct(self.fd, True)
        except OSError:
            self.direct = self.buffers.supported = False
            return False
        try:
            self._pwritev_all(data)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # a block size above ALIGN, or a file system that takes the flag but not
            # the writes: the caller writes the same bytes at the same place, buffered
            self.position = start
            self.direct = self.buffers.supported = False
            return False
        finally:
            with contextlib.suppress(OSError):
                _set_direct(self.fd, False)
        return True

    def _write_buffered(self, chunks: Sequence[Buffer]) -> None:
        for chunk in chunks:
            self._pwrite_all(memoryview(chunk))

    def _pwritev_all(self, views: list[memoryview]) -> None:
        while views:
            written = os.pwritev(self.fd, views, self.position)
            self.position += written
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if written:
                views[0] = views[0][written:]

    def _pwrite_all(self, data: memoryview) -> None:
        while data:
            written = os.pwrite(self.fd, data, self.position)
            self.position += written
            data = data[written:]


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    if wanted != flags:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
