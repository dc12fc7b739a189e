"""The report stage: once its bytes are sent, a file leaves its upload slot; the durable
`put`, the report and the move/delete happen in the report stage, which owns (and closes)
the file's descriptors. A file is reported only once its `put` is recorded."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import structlog

from hottask_sync import uploader as uploader_module
from hottask_sync.config import FolderConfig
from hottask_sync.jobs import Job, Outcome, Result
from hottask_sync.ledger import State
from hottask_sync.pool import WorkerPool
from hottask_sync.uploader import Handoff, Hasher
from tests.conftest import wait_for
from tests.unit.test_uploader import Rig, status


def test_the_upload_slot_hands_off_once_the_bytes_are_sent(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    handoff = rig.uploader.run(rig.job("a.txt"))
    assert isinstance(handoff, Handoff)
    assert rig.server.count("put") == 1 and rig.server.count("report") == 0
    assert rig.row("a.txt").state is State.TICKETED  # the put is the report stage's
    os.fstat(handoff.held.fd)  # still open: the report stage owns it
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.DONE
    assert rig.row("a.txt").state is State.REPORTED
    assert rig.server.reported == [handoff.ticket.file_store_id]


def test_the_report_waits_for_the_durable_put(rig: Rig) -> None:
    """Reported only after mark_put returned: a report whose put could be lost to a power
    cut would make the file upload twice after the restart."""
    rig.write("a.txt", b"hello")
    order: list[str] = []

    class Watching:
        def __getattr__(self, name: str) -> object:
            return getattr(rig.ledger, name)

        def mark_put(self, *args: object, **kw: object) -> None:
            rig.ledger.mark_put(*args, **kw)  # type: ignore[arg-type]
            order.append("put durable")

    answer = rig.server.handler

    def report(request: httpx.Request) -> httpx.Response:
        order.append("report sent")
        return answer(request)

    rig.server.faults["report"] = [report]
    uploader = replace(rig.uploader, ledger=Watching())  # type: ignore[arg-type]
    assert uploader.run_through(rig.job("a.txt")).outcome is Outcome.DONE
    assert order == ["put durable", "report sent"]


def test_a_failed_report_is_retried_as_a_report_never_a_second_put(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["report"] = [status(503)]
    handoff = rig.uploader.run(rig.job("a.txt"))
    assert isinstance(handoff, Handoff)
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.RETRY and result.ticket is None
    assert rig.row("a.txt").state is State.PUT
    assert rig.uploader.run_through(rig.job("a.txt").after(result)).outcome is Outcome.DONE
    assert rig.server.count("put") == 1 and rig.server.count("pre") == 1


def test_the_pool_frees_the_upload_slot_while_the_report_stage_works(tmp_path: Path) -> None:
    folder = FolderConfig(tmp_path)
    reporting = threading.Event()
    release = threading.Event()

    def run(job: Job) -> Result | str:
        return "handoff" if job.relpath == "a" else Result(Outcome.DONE)

    def finish(handoff: str) -> Result:
        reporting.set()
        release.wait(10)  # a slow sync, a far service
        return Result(Outcome.DONE)

    pool = WorkerPool(run, lambda: None, finish=finish)
    pool.resize(1)  # one upload slot
    pool.submit(Job(folder, "a"))
    pool.submit(Job(folder, "b"))
    assert reporting.wait(10)
    # b went through the only upload slot while a was still being reported.
    wait_for(
        lambda: (
            [(j.relpath, r.outcome) for j, r in pool.results][:2]
            == [
                ("a", Outcome.REPORTING),
                ("b", Outcome.DONE),
            ]
        ),
        what="b done while a reports",
    )
    release.set()
    wait_for(lambda: len(pool.results) == 3, what="a's final result")
    assert pool.results[2][1].outcome is Outcome.DONE  # type: ignore[union-attr]
    pool.close()


class _GatedSha256:
    """hashlib.sha256 whose updates wait for ``gate``: a hash slower than the wire."""

    gate = threading.Event()

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.gate.wait(20)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@pytest.fixture
def slow_hash(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    gate = threading.Event()
    monkeypatch.setattr(_GatedSha256, "gate", gate)
    monkeypatch.setattr(uploader_module, "hashlib", SimpleNamespace(sha256=_GatedSha256))
    yield gate
    gate.set()  # never leave a hash thread waiting


def test_a_big_files_send_never_waits_for_its_hash(rig: Rig, slow_hash: threading.Event) -> None:
    """On loopback SHA-256 is as slow as the wire: the send goes at its own pace, the upload
    slot is free once the bytes are sent, and the report stage waits for the digest."""
    data = os.urandom(Hasher.THREADED_FROM + 4 * 1024 * 1024)
    rig.write("big.bin", data)
    got: list[Result | Handoff] = []
    sender = threading.Thread(target=lambda: got.append(rig.uploader.run(rig.job("big.bin"))))
    sender.start()
    try:
        # The hash has not hashed a byte, and the whole file is sent all the same.
        wait_for(lambda: got, timeout=10, what="the PUT ends while the hash waits")
    finally:
        slow_hash.set()
        sender.join(10)
    handoff = got[0]
    assert isinstance(handoff, Handoff)
    assert rig.server.stored[handoff.ticket.file_store_id] == data
    with structlog.testing.capture_logs() as logs:
        assert rig.uploader.finish(handoff).outcome is Outcome.DONE
    (done,) = [e for e in logs if e["event"] == "upload.succeeded"]
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert rig.row("big.bin").sha256 == done["sha256"]


def test_a_big_file_changed_before_its_hash_ended_is_not_reported(
    rig: Rig, slow_hash: threading.Event
) -> None:
    """Its bytes were sent, but the hash read afterwards cannot vouch for them: settle and
    upload it again, as a file changed during its PUT."""
    data = os.urandom(Hasher.THREADED_FROM + 4 * 1024 * 1024)
    path = rig.write("big.bin", data)
    handoff = rig.uploader.run(rig.job("big.bin"))  # the send does not wait for the hash
    assert isinstance(handoff, Handoff)
    with path.open("ab") as fh:  # after the send, before the hash is done
        fh.write(b"!")
    slow_hash.set()
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.CHANGED and result.ticket is None
    assert rig.server.reported == []
    assert rig.row("big.bin").state is State.PENDING


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _no_hash_thread() -> bool:
    return not any(t.name == "sha256" for t in threading.enumerate())


@pytest.fixture
def big_file(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A big file whose hash, with a 2 MiB window, waits for a send that stops early."""
    monkeypatch.setattr(Hasher, "AHEAD", 2 * 1024 * 1024)
    data = os.urandom(Hasher.THREADED_FROM + 4 * 1024 * 1024)
    rig.write("big.bin", data)
    return data


def _after(rig: Rig, received: int, action: Callable[[], None]) -> None:
    """``action`` once the fake S3 has received ``received`` bytes of the PUT."""

    def on_chunk(n: int) -> None:
        if n >= received and not done:
            done.append(True)
            action()

    done: list[bool] = []
    rig.server.on_put_chunk = on_chunk


def test_a_put_that_fails_midway_leaves_no_hash_behind(rig: Rig, big_file: bytes) -> None:
    fds = _fds()

    def fail() -> None:
        raise httpx.WriteError("connection reset")

    _after(rig, 3 * 1024 * 1024, fail)
    result = rig.uploader.run(rig.job("big.bin"))
    assert isinstance(result, Result) and result.outcome is Outcome.RETRY
    wait_for(_no_hash_thread, what="the hash thread ended")
    assert _fds() == fds


def test_a_put_stopped_by_the_shutdown_leaves_no_hash_behind(rig: Rig, big_file: bytes) -> None:
    fds = _fds()
    _after(rig, 3 * 1024 * 1024, rig.uploader.abort.set)
    result = rig.uploader.run(rig.job("big.bin"))
    assert isinstance(result, Result) and result.outcome is Outcome.STOPPED
    wait_for(_no_hash_thread, what="the hash thread ended")
    assert _fds() == fds


def test_an_answer_to_a_body_cut_short_is_never_reported(
    rig: Rig, big_file: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpcore reads an early answer when the server stops reading the body; whatever it
    says, the file is not on S3 whole."""
    client = rig.uploader.client

    def cut_short(ticket: object, fd: int, size: int, *, on_chunk: Callable[[bytes], None]) -> None:
        on_chunk(os.pread(fd, 1024 * 1024, 0))  # then an answer, "200 OK"

    monkeypatch.setattr(client, "put", cut_short)
    result = rig.uploader.run(rig.job("big.bin"))
    assert isinstance(result, Result) and result.outcome is Outcome.RETRY
    assert "answered after 1048576 of" in (result.error or "")
    assert rig.row("big.bin").state is State.TICKETED
    wait_for(_no_hash_thread, what="the hash thread ended")


def test_a_hash_cut_off_by_the_shutdown_ends_the_report_unrecorded(
    rig: Rig, big_file: bytes, slow_hash: threading.Event
) -> None:
    """Its bytes are on S3, but without their digest there is no put to record: the file
    is uploaded again at the next start (its row still says ticketed)."""
    handoff = rig.uploader.run(rig.job("big.bin"))  # the hash holds at its first chunk
    assert isinstance(handoff, Handoff)
    rig.uploader.abort.set()  # the grace period is over
    slow_hash.set()
    assert rig.uploader.finish(handoff).outcome is Outcome.STOPPED
    assert rig.row("big.bin").state is State.TICKETED and rig.server.reported == []


def test_a_file_that_cannot_be_read_for_its_hash_is_retried_with_the_error(
    rig: Rig, big_file: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(uploader_module.os, "preadv", preadv)
    handoff = rig.uploader.run(rig.job("big.bin"))
    assert isinstance(handoff, Handoff)
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.RETRY and result.ticket is None
    assert "hash: cannot read the file to hash it" in (rig.row("big.bin").last_error or "")
    assert rig.server.reported == []
