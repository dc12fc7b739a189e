"""Unit tests for hottask_sync.after_upload: moves and deletes after the report, with the
races that used to lose or mix files forced at the exact step (a wrapped call pauses one
move, or lets another file appear, between a check and the act).

Moves across file systems need a folder on another one: /dev/shm (tmpfs) usually is; the
tests that need it are skipped, saying so, when it is not. They run through the Uploader
(the rig of tests/unit/test_uploader_edge.py), the way the daemon disposes of files.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hottask_sync.jobs import Outcome, Result
from hottask_sync.ledger import Action, plan
from tests.conftest import wait_for
from tests.unit.test_uploader_edge import Rig, at_first_change, sig_of
from tests.unit.test_uploader_edge import rig as rig  # the fixture

MiB = 1024 * 1024


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on another file system than tmp_path (/dev/shm), or a skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm: no second file system to move across")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="hottask-test-"))
    try:
        if os.stat(folder).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system as tmp_path here")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["same-fs", "other-fs"])
def done(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The move_to folder: on the inbox's file system (a rename), then on another (a copy)."""
    if request.param == "same-fs":
        return tmp_path / "done"
    base: Path = request.getfixturevalue("other_fs")
    return base / "done"


def moving(rig: Rig, done: Path) -> Any:
    return rig.folder_with(after_upload="move", move_to=done)


# --- item 1: moves across file systems ------------------------------------------------------


def test_two_moves_across_file_systems_at_once_never_mix(
    rig: Rig, other_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One move is paused with its copy written but not yet renamed into place, while a
    second move runs from start to end: each archive holds its own bytes, each source is
    gone, no temporary file is left. (With one temp name per process, the second move
    wrote into the first one's file, and the first one's rename then found it gone.)"""
    done = other_fs / "done"
    folder = moving(rig, done)
    a, b = os.urandom(3 * MiB), os.urandom(2 * MiB + 7)
    rig.write("a.bin", a)
    rig.write("b.bin", b)
    paused, resume = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "mover-a" and not paused.is_set():
            paused.set()
            resume.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    results: dict[str, Result] = {}
    mover_a = threading.Thread(
        target=lambda: results.update(a=rig.run("a.bin", folder)), name="mover-a"
    )
    mover_a.start()
    try:
        wait_for(paused.is_set, what="the first move paused mid-way")
        results["b"] = rig.run("b.bin", folder)
    finally:
        resume.set()
        mover_a.join(30)
    assert {k: r.outcome for k, r in results.items()} == {"a": Outcome.DONE, "b": Outcome.DONE}
    assert (done / "a.bin").read_bytes() == a
    assert (done / "b.bin").read_bytes() == b
    assert sorted(os.listdir(done)) == ["a.bin", "b.bin"]
    assert os.listdir(rig.inbox) == []
    assert rig.row("a.bin", folder).disposed and rig.row("b.bin", folder).disposed


def test_a_move_across_file_systems_keeps_mode_and_mtime(rig: Rig, other_fs: Path) -> None:
    done = other_fs / "done"
    path = rig.write("sub/a.txt", b"hello")
    os.chmod(path, 0o640)
    mtime_ns = 1_000_000_000_123_456_789
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert rig.run("sub/a.txt", moving(rig, done)).outcome is Outcome.DONE
    st = os.stat(done / "sub" / "a.txt")
    assert (done / "sub" / "a.txt").read_bytes() == b"hello"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == mtime_ns


def test_a_temp_file_removed_mid_move_is_a_failure_not_gone(
    rig: Rig, other_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a missing source counts as gone: a copy that vanished (a cleanup job in the
    archive) leaves the file in the inbox, the error on its row, and the move to retry."""
    done = other_fs / "done"
    folder = moving(rig, done)
    path = rig.write("a.txt", b"hello")
    real_fsync = os.fsync
    removed: list[str] = []

    def fsync(fd: int) -> None:
        if not removed:
            for name in os.listdir(done):
                if name.startswith(".hottask-move-"):
                    removed.append(name)
                    os.unlink(done / name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert rig.run("a.txt", folder).outcome is Outcome.DONE  # reported
    assert removed
    assert path.read_bytes() == b"hello"
    row = rig.row("a.txt", folder)
    assert not row.disposed and "after_upload move failed" in row.last_error
    assert rig.run("a.txt", folder).outcome is Outcome.DONE  # the next look: moved
    assert (done / "a.txt").read_bytes() == b"hello"
    assert not path.exists() and rig.row("a.txt", folder).disposed


# --- item 2: check-then-act ----------------------------------------------------------------


def test_a_file_appearing_at_the_destination_is_never_overwritten(
    rig: Rig, done: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (a second folder with the same move_to) saves done/a.txt just
    before our rename: it keeps its name and bytes; ours takes the next free name."""
    folder = moving(rig, done)
    rig.write("a.txt", b"mine")
    once = at_first_change(monkeypatch, "a.txt", lambda: (done / "a.txt").write_bytes(b"theirs"))
    assert rig.run("a.txt", folder).outcome is Outcome.DONE
    assert once.fired
    assert (done / "a.txt").read_bytes() == b"theirs"
    assert (done / "a (1).txt").read_bytes() == b"mine"
    assert sorted(os.listdir(done)) == ["a (1).txt", "a.txt"]
    assert not (rig.inbox / "a.txt").exists()


@pytest.mark.parametrize("action", ["delete", "move-same-fs", "move-other-fs"])
def test_a_new_version_saved_over_the_path_before_the_delete_or_move_is_kept(
    rig: Rig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    action: str,
) -> None:
    """An editor saves a new version atomically (write a temp file, rename it over the
    name) after the upload was checked and before the file is deleted or moved: the new
    version, never uploaded, stays at its name and is uploaded next."""
    if action == "delete":
        folder = rig.folder_with(after_upload="delete")
        done = None
    else:
        on_other = action == "move-other-fs"
        done = (request.getfixturevalue("other_fs") if on_other else tmp_path) / "done"
        folder = moving(rig, done)
    path = rig.write("a.txt", b"v1")

    def save_new_version() -> None:
        tmp = rig.inbox / ".a.txt.new"
        tmp.write_bytes(b"v2, not uploaded")
        tmp.rename(path)

    once = at_first_change(monkeypatch, "a.txt", save_new_version)
    assert rig.run("a.txt", folder).outcome is Outcome.DONE
    assert once.fired
    assert path.read_bytes() == b"v2, not uploaded"
    assert plan(rig.row("a.txt", folder), sig_of(path), dispose=True) is Action.UPLOAD
    if done is not None:
        # The version uploaded is archived when it could be copied from the descriptor
        # held; a rename can only move what is at the name, so nothing is archived then.
        archived = {n: (done / n).read_bytes() for n in os.listdir(done)} if done.exists() else {}
        assert archived in ({}, {"a.txt": b"v1"})
        assert b"v2, not uploaded" not in archived.values()


def test_a_fifo_at_the_destination_does_not_hang_the_worker(rig: Rig, tmp_path: Path) -> None:
    """An empty file meets a FIFO of the same (zero) size at its destination name: the
    same-content check must not open it for reading (that waits for a writer forever)."""
    done = tmp_path / "done"
    done.mkdir()
    fifo = done / "a.txt"
    os.mkfifo(fifo)
    rig.write("a.txt", b"")
    results: list[Result] = []
    worker = threading.Thread(target=lambda: results.append(rig.run("a.txt", moving(rig, done))))
    worker.start()
    worker.join(20)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let it go, then fail
        worker.join(20)
        pytest.fail("the worker hung opening a FIFO at the destination")
    assert [r.outcome for r in results] == [Outcome.DONE]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (done / "a (1).txt").read_bytes() == b""


def test_a_link_at_the_destination_is_not_taken_for_the_archived_copy(
    rig: Rig, tmp_path: Path
) -> None:
    """done/a.txt is a link to a file with the same bytes elsewhere: following it, the old
    check took it for a finished move and deleted the only file."""
    done = tmp_path / "done"
    done.mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"mine")
    (done / "a.txt").symlink_to(elsewhere)
    rig.write("a.txt", b"mine")
    assert rig.run("a.txt", moving(rig, done)).outcome is Outcome.DONE
    assert (done / "a (1).txt").read_bytes() == b"mine"
    assert (done / "a.txt").is_symlink()
    assert not (rig.inbox / "a.txt").exists()


def test_a_cut_off_move_is_finished_when_the_same_bytes_are_there(rig: Rig, done: Path) -> None:
    """The copy landed but the source was not removed (killed in between): the next try
    finds the same bytes at the destination and removes the source, without a second copy."""
    folder = moving(rig, done)
    rig.write("a.txt", b"hello")
    done.mkdir(parents=True, exist_ok=True)
    (done / "a.txt").write_bytes(b"hello")
    assert rig.run("a.txt", folder).outcome is Outcome.DONE
    assert os.listdir(done) == ["a.txt"]
    assert not (rig.inbox / "a.txt").exists()
    assert rig.row("a.txt", folder).disposed
