"""SHA-256 while sending: a small file's chunks are hashed as they are sent; a big file is
hashed by a thread reading it on its own, which never holds the send back, keeps within a
window ahead of it, vouches for its bytes by the file's version, shows its progress to
whoever waits for it, and can be stopped."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hottask_sync import uploader as uploader_module
from hottask_sync.uploader import Hasher
from tests.conftest import wait_for

MIB = 1024 * 1024


@pytest.fixture
def big(tmp_path: Path) -> Iterator[tuple[int, os.stat_result, bytes]]:
    data = os.urandom(Hasher.THREADED_FROM + 3 * MIB + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        yield fd, os.fstat(fd), data
    finally:
        os.close(fd)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _digest(hasher: Hasher) -> str | None:
    """``hasher.digest()``, failing the test (not hanging it) if it never comes."""
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(hasher.digest()), daemon=True)
    waiter.start()
    waiter.join(20)
    assert got, "no digest within 20 s"
    return got[0]


def _sha256_threads() -> int:
    return sum(t.name == "sha256" for t in threading.enumerate())


def test_a_big_file_is_hashed_from_its_own_reads_without_waiting_for_the_send(
    big: tuple[int, os.stat_result, bytes],
) -> None:
    fd, st, data = big
    fds = _fds()
    hasher = Hasher(fd, st, threading.Event())
    # Nothing sent yet, and the file is within the window ahead of the send: all hashed.
    assert _digest(hasher) == hashlib.sha256(data).hexdigest()
    assert _fds() == fds  # its own descriptor is closed
    assert _sha256_threads() == 0


def test_a_small_file_is_hashed_inline_from_the_chunks_sent(tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        threads = threading.active_count()
        hasher = Hasher(fd, os.fstat(fd), threading.Event())
        hasher.update(b"x" * 4096)
        assert threading.active_count() == threads
        assert _digest(hasher) == hashlib.sha256(b"x" * 4096).hexdigest()
    finally:
        os.close(fd)


def test_the_hash_keeps_within_its_window_ahead_of_the_send(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the send finds in the page cache what the hash read ahead of it: the disk
    reads a big file once when the network is slower than the hash."""
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    sent = [0]
    too_far: list[int] = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if offset >= sent[0] + 2 * MIB:
            too_far.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(uploader_module.os, "preadv", preadv)
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)  # 2 MiB read, nothing sent: it waits for the send
    for start in range(0, len(data), MIB):
        sent[0] = start + MIB  # noted before the hash may go on
        hasher.update(data[start : start + MIB])
    assert _digest(hasher) == hashlib.sha256(data).hexdigest()
    assert too_far == []


def test_once_the_send_is_over_the_hash_no_longer_waits_for_it(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send that ended before the last chunk (an answer to a body cut short) must not
    leave the report stage waiting for ever."""
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    hasher.update(data[:MIB])
    wait_for(lambda: hasher.waiting)
    assert _digest(hasher) == hashlib.sha256(data).hexdigest()


def test_the_wait_for_a_big_files_hash_shows_progress(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report stage waiting for a hash slower than the wire is not stuck while the hash
    goes on (the pool's watch of its workers would have systemd restart the daemon)."""
    monkeypatch.setattr(Hasher, "BEAT_SECONDS", 0.01)
    go = threading.Semaphore(0)

    class OneChunkAtATime:
        def __init__(self) -> None:
            self._hash = hashlib.sha256()

        def update(self, data: memoryview) -> None:
            assert go.acquire(timeout=20)
            self._hash.update(data)

        def hexdigest(self) -> str:
            return self._hash.hexdigest()

    monkeypatch.setattr(uploader_module, "hashlib", SimpleNamespace(sha256=OneChunkAtATime))
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    hasher.update(data)
    beats: list[int] = []
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(hasher.digest(lambda: beats.append(1))))
    waiter.start()
    for n in (1, 2, 3):
        go.release()  # one more chunk hashed
        wait_for(lambda n=n: len(beats) >= n, what=f"beat {n}")  # type: ignore[misc]
    for _ in range(len(data) // MIB + 1):
        go.release()
    waiter.join(20)
    assert got == [hashlib.sha256(data).hexdigest()]


def test_a_read_that_fails_gives_no_digest_and_says_why(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(uploader_module.os, "preadv", preadv)
    fd, st, _ = big
    fds = _fds()
    hasher = Hasher(fd, st, threading.Event())
    assert _digest(hasher) is None
    assert hasher.error is not None and hasher.error.errno == errno.EIO
    assert _fds() == fds


@pytest.fixture
def held_back(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> tuple[Hasher, int, bytes]:
    """A big file's hash, 2 MiB in, waiting for a send that has not begun."""
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)
    return hasher, fd, data


def test_a_file_written_to_while_it_is_hashed_has_no_digest(
    held_back: tuple[Hasher, int, bytes],
) -> None:
    hasher, fd, data = held_back
    os.pwrite(fd, b"new", len(data))  # appended: whatever the clock's grain, its size changed
    hasher.update(data)  # the send went through it all
    assert _digest(hasher) is None


def test_a_file_that_shrank_has_no_digest(held_back: tuple[Hasher, int, bytes]) -> None:
    hasher, fd, data = held_back
    os.ftruncate(fd, 3 * MIB)
    hasher.update(data)
    assert _digest(hasher) is None


def test_a_cancelled_hash_ends_and_closes_its_descriptor(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fds = _fds()  # before the hash takes its own descriptor
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, _ = big
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)  # would wait for a send that never comes
    hasher.cancel()
    assert _digest(hasher) is None
    assert _fds() == fds and _sha256_threads() == 0


def test_a_stopped_hash_has_no_digest(big: tuple[int, os.stat_result, bytes]) -> None:
    fd, st, _ = big
    stop = threading.Event()
    stop.set()  # the daemon's grace period is over
    assert Hasher(fd, st, stop).digest() is None
