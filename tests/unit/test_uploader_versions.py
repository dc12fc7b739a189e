"""Which version of a file is uploaded, reported, kept or removed: the inode change time.

Same rig as tests/unit/test_uploader.py (a fake HotTask over MockTransport, a real ledger,
a fake clock). These cases turn on what size and mtime cannot see: a rewrite whose mtime
was put back (``touch -r``, ``rsync -t``), a ``chmod`` alone, a new version saved while the
report was in flight.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig
from hottask_sync.jobs import Outcome
from hottask_sync.ledger import State
from tests.unit.test_uploader import Rig


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Rewrites the file in place (same inode, same size) and puts its mtime back."""
    before = os.stat(path)
    assert len(data) == before.st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def test_a_rewrite_during_the_put_with_its_mtime_put_back_is_not_reported(rig: Rig) -> None:
    """Mixed bytes must never be reported as the old version: the ctime gives it away."""
    data = b"a" * (3 * 1024 * 1024)
    path = rig.write("big.bin", data)

    def rewrite(received: int) -> None:
        if received == 1024 * 1024:
            _rewrite_keeping_mtime(path, b"b" * len(data))

    rig.server.on_put_chunk = rewrite
    assert rig.run(rig.job("big.bin")).outcome is Outcome.CHANGED
    assert rig.server.count("report") == 0
    rig.server.on_put_chunk = None
    assert rig.run(rig.job("big.bin")).outcome is Outcome.DONE
    (fsid,) = rig.server.reported
    assert rig.server.stored[fsid] == b"b" * len(data)


def test_a_reported_file_rewritten_with_its_mtime_put_back_is_uploaded_again(rig: Rig) -> None:
    path = rig.write("doc.txt", b"version 1")
    assert rig.run(rig.job("doc.txt")).outcome is Outcome.DONE
    _rewrite_keeping_mtime(path, b"version 2")
    assert rig.run(rig.job("doc.txt")).outcome is Outcome.DONE
    assert [rig.server.stored[f] for f in rig.server.reported] == [b"version 1", b"version 2"]


def test_a_chmod_of_a_reported_file_is_verified_and_not_uploaded_again(rig: Rig) -> None:
    path = rig.write("doc.txt", b"hello")
    assert rig.run(rig.job("doc.txt")).outcome is Outcome.DONE
    calls = len(rig.server.calls)
    os.chmod(path, 0o600)
    assert rig.run(rig.job("doc.txt")).outcome is Outcome.SKIPPED
    assert len(rig.server.calls) == calls
    row = rig.row("doc.txt")
    assert row.state is State.REPORTED
    assert row.sig == FileSig.from_stat(os.stat(path))  # the new ctime is recorded


def test_a_failed_file_fixed_with_chmod_is_tried_again(rig: Rig) -> None:
    path = rig.write("locked.txt", b"secret")
    os.chmod(path, 0o000)
    if os.access(path, os.R_OK):  # root reads anything: make the read fail another way
        os.chmod(path, 0o600)
        rig.ledger.record_error(
            rig.folder.key,
            "locked.txt",
            "cannot read",
            permanent=True,
            max_attempts=1,
            sig=FileSig.from_stat(os.stat(path)),
        )
    else:
        assert rig.run(rig.job("locked.txt")).outcome is Outcome.FAILED
    assert rig.row("locked.txt").state is State.FAILED
    assert rig.run(rig.job("locked.txt")).outcome is Outcome.SKIPPED  # unchanged: left alone
    os.chmod(path, 0o644)
    assert rig.run(rig.job("locked.txt")).outcome is Outcome.DONE
    assert rig.row("locked.txt").state is State.REPORTED


def test_a_new_version_saved_while_the_report_was_in_flight_is_not_deleted(rig: Rig) -> None:
    deleting = FolderConfig(rig.inbox, after_upload="delete")
    path = rig.write("doc.txt", b"version 1")
    answer = rig.server.handler

    def save_new_version_then_answer(request: httpx.Request) -> httpx.Response:
        # An editor's atomic save: write a new file, rename it over the old one.
        tmp = path.with_name(".doc.txt.swp")
        tmp.write_bytes(b"version 2")
        os.rename(tmp, path)
        return answer(request)

    rig.server.faults["report"] = [save_new_version_then_answer]
    assert rig.run(rig.job("doc.txt", deleting)).outcome is Outcome.DONE
    assert path.read_bytes() == b"version 2"  # never uploaded: must not be deleted
    assert rig.row("doc.txt").disposed is False


def test_a_new_version_saved_while_the_report_was_in_flight_is_not_moved(rig: Rig) -> None:
    moving = FolderConfig(rig.inbox, after_upload="move", move_to=rig.done)
    path = rig.write("doc.txt", b"version 1")
    answer = rig.server.handler

    def save_new_version_then_answer(request: httpx.Request) -> httpx.Response:
        tmp = path.with_name(".doc.txt.swp")
        tmp.write_bytes(b"version 2 is longer")
        os.rename(tmp, path)
        return answer(request)

    rig.server.faults["report"] = [save_new_version_then_answer]
    assert rig.run(rig.job("doc.txt", moving)).outcome is Outcome.DONE
    assert path.read_bytes() == b"version 2 is longer"
    assert not (rig.done / "doc.txt").exists()
