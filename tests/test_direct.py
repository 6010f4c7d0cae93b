"""O_DIRECT appends (gateway.storage.direct): whatever the chunk sizes and the offset a
stream starts at, the file holds exactly the bytes, on a file system that takes O_DIRECT
and on one that does not."""

import errno
import fcntl
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.storage import direct
from gateway.storage.base import Buffer
from gateway.storage.direct import ALIGN, AlignedBuffers, Appender

MiB = 1024 * 1024


def append_all(
    path: Path, start: bytes, batches: Sequence[Sequence[Buffer]], buffers: AlignedBuffers
) -> bool:
    """Write `start` plainly, then append the batches; whether O_DIRECT was used."""
    path.write_bytes(start)
    fd = os.open(path, os.O_WRONLY)
    try:
        appender = Appender(fd, len(start), buffers)
        for batch in batches:
            appender.append(batch)
        appender.finish()
        assert os.lseek(fd, 0, os.SEEK_CUR) == appender.position
        return appender.direct
    finally:
        os.close(fd)


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at : at + size]
        at += size
    if at < len(data):
        yield data[at:]


@given(
    start=st.integers(0, 3 * ALIGN),
    sizes=st.lists(st.integers(1, 3 * ALIGN + 7), max_size=12),
    per_batch=st.integers(1, 4),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_appends_hold_exactly_the_bytes(
    tmp_path: Path, start: int, sizes: list[int], per_batch: int
) -> None:
    head = os.urandom(start)
    body = os.urandom(sum(sizes))
    chunks = list(pieces(body, sizes))
    batches = [chunks[at : at + per_batch] for at in range(0, len(chunks), per_batch)]
    path = tmp_path / "data.bin"
    append_all(path, head, batches, AlignedBuffers())
    assert path.read_bytes() == head + body


def o_direct_works(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except (AttributeError, OSError):
        return False
    os.close(fd)
    probe.unlink()
    return True


def test_large_appends_go_past_the_page_cache_where_they_can(tmp_path: Path) -> None:
    body = os.urandom(3 * MiB + 5)
    batches = [[body[:MiB]], [body[MiB : 2 * MiB + 3]], [body[2 * MiB + 3 :]]]
    direct = append_all(tmp_path / "data.bin", b"", batches, AlignedBuffers())
    assert (tmp_path / "data.bin").read_bytes() == body
    assert direct == o_direct_works(tmp_path)


@pytest.mark.parametrize("refusal", ["the flag", "the write"])
def test_a_file_system_that_refuses_o_direct_gets_plain_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    def refuse(*_: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    if refusal == "the flag":
        monkeypatch.setattr(direct, "_set_direct", refuse)
    else:  # the flag is taken, the first direct write is not (a block size above ALIGN)
        real_pwritev = os.pwritev

        def pwritev(fd: int, views: list[memoryview], position: int) -> int:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwritev(fd, views, position)

        monkeypatch.setattr(os, "pwritev", pwritev)
    buffers = AlignedBuffers()
    body = os.urandom(2 * MiB + 11)
    path = tmp_path / "data.bin"
    used = append_all(path, b"x" * 10, [[body[: ALIGN * 100]], [body[ALIGN * 100 :]]], buffers)
    assert path.read_bytes() == b"x" * 10 + body
    assert not used and not buffers.supported  # and the next streams do not try again


def test_a_write_that_fails_midway_leaves_a_clean_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write that stops with an I/O error after a short write: the file holds the
    stream's first bytes and nothing else, even once `finish` has run (the bytes carried
    from the batch before must not be written a second time)."""
    if not o_direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    real_pwritev = os.pwritev
    calls = []

    def failing_pwritev(fd: int, views: list[memoryview], position: int) -> int:
        calls.append(position)  # direct writes only: the buffered ones use pwrite
        if len(calls) == 2:  # the second batch: a short write of one block...
            return real_pwritev(fd, [views[0][:ALIGN]], position)
        if len(calls) == 3:  # ...then the disk fails
            raise OSError(errno.EIO, "Input/output error")
        return real_pwritev(fd, views, position)

    monkeypatch.setattr(os, "pwritev", failing_pwritev)
    body = os.urandom(6 * ALIGN + 100)
    path = tmp_path / "data.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        appender = Appender(fd, 0, AlignedBuffers())
        appender.append([body[: 2 * ALIGN + 100]])  # two blocks, 100 bytes carried
        with pytest.raises(OSError):
            appender.append([body[2 * ALIGN + 100 :]])
        appender.finish()
    finally:
        os.close(fd)
    stored = path.read_bytes()
    assert body.startswith(stored)


def test_a_finish_that_fails_midway_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last bytes of a stream (short of a block) written by `finish`: should that write
    stop part-way, a second `finish` (an error path runs it again) writes nothing more,
    so the file stays a clean prefix of the stream."""
    if not o_direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    real_pwrite = os.pwrite
    calls = []

    def failing_pwrite(fd: int, data: Buffer, position: int) -> int:
        calls.append(position)
        if len(calls) == 1:  # a short write...
            return real_pwrite(fd, memoryview(data)[:50], position)
        raise OSError(errno.EIO, "Input/output error")  # ...then the disk fails

    body = os.urandom(100)
    path = tmp_path / "data.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        appender = Appender(fd, 0, AlignedBuffers())
        appender.append([body])  # less than a block: all of it carried to `finish`
        monkeypatch.setattr(os, "pwrite", failing_pwrite)
        with pytest.raises(OSError):
            appender.finish()
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        appender.finish()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 50
    finally:
        os.close(fd)
    assert path.read_bytes() == body[:50]


def test_chunks_read_into_aligned_buffers_are_written_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole aligned blocks go to the disk from the reader's own buffers (no staging copy);
    an unaligned tail is carried, and the file holds exactly the bytes."""
    if not o_direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    body = os.urandom(3 * MiB + 777)
    first, second = direct.aligned_buffer(2 * MiB), direct.aligned_buffer(MiB + 777)
    first[:] = body[: 2 * MiB]
    second[:] = body[2 * MiB :]
    buffers = AlignedBuffers()

    def no_staging(size: int) -> None:
        raise AssertionError("an aligned chunk was copied into a staging buffer")

    monkeypatch.setattr(buffers, "take", no_staging)
    assert append_all(tmp_path / "data.bin", b"", [[first[:MiB], first[MiB:]], [second]], buffers)
    assert (tmp_path / "data.bin").read_bytes() == body


def test_unaligned_chunks_still_go_through_a_staging_buffer(tmp_path: Path) -> None:
    body = os.urandom(2 * MiB)
    buffer = direct.aligned_buffer(2 * MiB + 1)
    buffer[1:] = body
    taken: list[int] = []
    buffers = AlignedBuffers()
    real_take = buffers.take

    def take(size: int) -> mmap.mmap:
        taken.append(size)
        return real_take(size)

    buffers.take = take  # type: ignore[method-assign]
    direct_used = append_all(tmp_path / "data.bin", b"", [[buffer[1:]]], buffers)
    assert (tmp_path / "data.bin").read_bytes() == body
    assert bool(taken) == direct_used == o_direct_works(tmp_path)
