"""SHA-256 while sending: a small file's chunks are hashed as they are sent; a big file is
hashed by a thread reading it on its own, which never holds the send back, keeps within a
window ahead of it, vouches for its bytes by the file's version, and can be stopped."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def _sha256_threads() -> int:
    return sum(t.name == "sha256" for t in threading.enumerate())


def test_a_big_file_is_hashed_from_its_own_reads_without_waiting_for_the_send(
    big: tuple[int, os.stat_result, bytes],
) -> None:
    fd, st, data = big
    fds = _fds()
    hasher = Hasher(fd, st, threading.Event())
    # Nothing sent yet, and the file is within the window ahead of the send: all hashed.
    assert hasher.digest() == hashlib.sha256(data).hexdigest()
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
        assert hasher.digest() == hashlib.sha256(b"x" * 4096).hexdigest()
    finally:
        os.close(fd)


def test_the_hash_keeps_within_its_window_ahead_of_the_send(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that whichever reads a chunk second finds it in the page cache: the disk reads a
    big file once, not twice, when the network is slower than the hash."""
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)  # 2 MiB read, nothing sent: it waits for the send
    for start in range(0, len(data), MIB):
        hasher.update(data[start : start + MIB])
    assert hasher.digest() == hashlib.sha256(data).hexdigest()


def test_a_file_written_to_while_it_is_hashed_has_no_digest(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)
    os.pwrite(fd, b"new", len(data) - 3)  # a byte it has not read yet: its ctime changes
    hasher.update(data)  # the send went through it all
    assert hasher.digest() is None


def test_a_file_that_shrank_has_no_digest(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, data = big
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)
    os.ftruncate(fd, 3 * MIB)
    hasher.update(data)
    assert hasher.digest() is None


def test_a_cancelled_hash_ends_and_closes_its_descriptor(
    big: tuple[int, os.stat_result, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Hasher, "AHEAD", 2 * MIB)
    fd, st, _ = big
    fds = _fds()
    hasher = Hasher(fd, st, threading.Event())
    wait_for(lambda: hasher.waiting)  # would wait for a send that never comes
    hasher.cancel()
    assert hasher.digest() is None
    assert _fds() == fds and _sha256_threads() == 0


def test_a_stopped_hash_has_no_digest(big: tuple[int, os.stat_result, bytes]) -> None:
    fd, st, _ = big
    stop = threading.Event()
    stop.set()  # the daemon's grace period is over
    assert Hasher(fd, st, stop).digest() is None
