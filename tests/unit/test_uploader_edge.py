"""Unit tests for hottask_sync.uploader at the file system's edge: a folder swapped for a
link while a path is resolved or while a file is disposed of, and a job whose file changed
after it settled.

The rig is the pattern of tests/unit/test_uploader.py, cut down: a fake HotTask speaking the
three calls through httpx.MockTransport, a real SQLite ledger in tmp_path, a fake clock.
tests/unit/test_after_upload.py uses it too. Races are forced at a chosen step (a hook or a
wrapped call), never left to luck.
"""

from __future__ import annotations

import errno
import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hottask_sync import beneath
from hottask_sync.client import HotTaskClient
from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig
from hottask_sync.jobs import Job, Outcome, Result
from hottask_sync.ledger import Action, Ledger, State, plan
from hottask_sync.uploader import Uploader
from tests.fakes import FakeClock, StreamingMockTransport, envelope, s3_error

BASE = "https://api.hottask.test"

# --- the rig ------------------------------------------------------------------------------


@dataclass
class FakeHotTask:
    """The three calls, answering success; thread-safe enough for one call at a time."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    stored: dict[str, bytes] = field(default_factory=dict)  # FileStoreId -> bytes
    reported: list[str] = field(default_factory=list)
    on_put_chunk: Callable[[int], None] | None = None
    failing_puts: int = 0  # the next PUTs answered 503 SlowDown
    next_id: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            fsid = request.url.path.split("/")[2]
            self.calls.append(("put", fsid))
            if self.failing_puts:
                self.failing_puts -= 1
                request.read()
                return httpx.Response(503, content=s3_error("SlowDown", "injected"))
            received = bytearray()
            for chunk in request.stream:  # type: ignore[union-attr]
                received += chunk
                if self.on_put_chunk is not None:
                    self.on_put_chunk(len(received))
            self.stored[fsid] = bytes(received)
            return httpx.Response(200, headers={"ETag": '"x"'})
        request.read()
        body = json.loads(request.content)
        if request.url.path.endswith("GetPreUploadUrl"):
            with self.lock:
                fsid = str(self.next_id)
                self.next_id += 1
            self.calls.append(("pre", body["fileName"]))
            url = f"https://s3.test/bucket/{fsid}/obj?X-Amz-Expires=300&X-Amz-Signature=s"
            return httpx.Response(200, json=envelope({"FileStoreId": fsid, "PreUploadUrl": url}))
        fsid = body["fileStoreID"]
        self.calls.append(("report", fsid))
        self.reported.append(fsid)
        return httpx.Response(200, json=envelope(True))

    def uploaded(self) -> list[bytes]:
        """The bytes of every reported upload, in order."""
        return [self.stored[fsid] for fsid in self.reported]


@dataclass
class Rig:
    tmp: Path
    inbox: Path
    server: FakeHotTask
    ledger: Ledger
    uploader: Uploader
    folder: FolderConfig

    def write(self, relpath: str, data: bytes) -> Path:
        path = self.inbox / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def folder_with(self, **kw: Any) -> FolderConfig:
        return FolderConfig(self.inbox, **kw)

    def run(self, relpath: str, folder: FolderConfig | None = None, **kw: Any) -> Result:
        return self.uploader.run_through(Job(folder or self.folder, relpath, **kw))

    def row(self, relpath: str, folder: FolderConfig | None = None) -> Any:
        return self.ledger.get((folder or self.folder).key, relpath)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    server = FakeHotTask()
    clock = FakeClock()
    client = HotTaskClient(BASE, "k", transport=StreamingMockTransport(server.handler), clock=clock)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    uploader = Uploader(client, ledger, max_attempts=3, clock=clock, rng=random.Random(7))
    yield Rig(tmp_path, inbox, server, ledger, uploader, FolderConfig(inbox))
    client.close()
    ledger.close()


def sig_of(path: Path) -> FileSig:
    return FileSig.from_stat(os.lstat(path))


def swap_for_link(folder: Path, target: Path) -> Callable[[], None]:
    """Moves ``folder`` aside and puts a link to ``target`` in its place (what a writer of
    the inbox can do); returns the undo, which puts the real folder back."""
    aside = folder.with_name(folder.name + ".real")
    folder.rename(aside)
    folder.symlink_to(target, target_is_directory=True)

    def undo() -> None:
        folder.unlink()
        aside.rename(folder)

    return undo


@dataclass
class Once:
    """Runs ``action`` once, the first time :meth:`maybe` is called with a true condition."""

    action: Callable[[], object]
    fired: bool = False

    def maybe(self, condition: bool) -> None:
        if condition and not self.fired:
            self.fired = True
            self.action()


def at_first_change(
    monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], object]
) -> Once:
    """Runs ``action`` once, just before the first rename or unlink of a file named ``name``:
    the moment between checking a file and acting on it. Wraps the calls each
    implementation acts with: ``os.unlink``/``os.rename`` by path (the code before
    hottask_sync.beneath) and ``beneath.rename_noreplace`` (relative to held folders)."""
    once = Once(action)
    real_unlink, real_rename, real_noreplace = os.unlink, os.rename, beneath.rename_noreplace

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        once.maybe(os.path.basename(os.fsdecode(path)) == name)
        real_unlink(path, *args, **kwargs)

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        once.maybe(os.path.basename(os.fsdecode(src)) == name)
        real_rename(src, dst, *args, **kwargs)

    def noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
        once.maybe(src == name)
        real_noreplace(src_dir, src, dst_dir, dst)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(beneath, "rename_noreplace", noreplace)
    return once


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways paths are resolved beneath a folder: openat2, and the forced fallback walk."""
    monkeypatch.setattr(beneath, "use_openat2", None if request.param == "openat2" else False)
    monkeypatch.setattr(beneath, "hook", None)
    return str(request.param)


# --- item 8: a folder swapped for a link ---------------------------------------------------


@pytest.fixture
def secret(rig: Rig) -> Path:
    """outside/key.txt: a file the service can read and no inbox writer should get."""
    path = rig.tmp / "outside" / "key.txt"
    path.parent.mkdir()
    path.write_bytes(b"sk-the-service-key")
    return path


def test_a_folder_swapped_for_a_link_while_the_file_is_opened_is_never_followed(
    rig: Rig, secret: Path, resolution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inbox/d is a link to the secret's folder at the moment the file is opened, and a
    real folder again just after (when the old code checked with realpath)."""
    rig.write("d/key.txt", b"benign")
    path, d = rig.inbox / "d" / "key.txt", rig.inbox / "d"
    undo: list[Callable[[], None]] = []

    def attack() -> None:
        undo.append(swap_for_link(d, secret.parent))

    # The step between opening the folder and resolving d (hottask_sync.beneath) ...
    monkeypatch.setattr(beneath, "hook", lambda step: step == "" and not undo and attack())
    # ... and, for a path opened whole, around that open (the code before it).
    real_open = os.open

    def open_around(p: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(p) != str(path) or undo:
            return real_open(p, flags, *args, **kwargs)
        attack()
        try:
            return real_open(p, flags, *args, **kwargs)
        finally:
            undo.pop()()

    monkeypatch.setattr(os, "open", open_around)
    result = rig.run("d/key.txt")
    assert b"sk-the-service-key" not in rig.server.stored.values()  # never sent anywhere
    assert result.outcome is Outcome.SKIPPED
    assert rig.server.calls == []


@pytest.mark.parametrize("after_upload", ["delete", "move"])
def test_a_folder_swapped_for_a_link_before_the_delete_or_move_steers_nothing(
    rig: Rig, resolution: str, monkeypatch: pytest.MonkeyPatch, after_upload: str
) -> None:
    """After the upload, inbox/d becomes a link to the state directory just before the file
    is deleted or moved: the ledger of the same name is neither deleted nor archived."""
    state = rig.tmp / "state"
    state.mkdir()
    (state / "ledger.sqlite3").write_bytes(b"the daemon's ledger")
    done = rig.tmp / "done"
    if after_upload == "move":
        folder = rig.folder_with(after_upload="move", move_to=done)
    else:
        folder = rig.folder_with(after_upload="delete")
    rig.write("d/ledger.sqlite3", b"an inbox file named like the ledger")
    at_first_change(monkeypatch, "ledger.sqlite3", lambda: swap_for_link(rig.inbox / "d", state))
    assert rig.run("d/ledger.sqlite3", folder).outcome is Outcome.DONE
    assert (state / "ledger.sqlite3").read_bytes() == b"the daemon's ledger"
    if after_upload == "move":
        archived = done / "d" / "ledger.sqlite3"
        assert archived.read_bytes() == b"an inbox file named like the ledger"
    # What was disposed of is the inbox file, in the folder it was found in.
    assert not (rig.inbox / "d.real" / "ledger.sqlite3").exists()


def test_a_folder_swapped_for_a_link_during_the_put_is_a_change(rig: Rig, resolution: str) -> None:
    """The change-during-PUT check resolves the path beneath the folder too: a file now
    reachable only through a link is not at its path any more (the old check followed
    the link by name and reported it)."""
    rig.write("d/a.bin", os.urandom(3 * 1024 * 1024))
    d = rig.inbox / "d"

    def swap(received: int) -> None:
        if received == 1024 * 1024:
            swap_for_link(d, d.with_name("d.real"))  # same file, through a link

    rig.server.on_put_chunk = swap
    assert rig.run("d/a.bin").outcome is Outcome.CHANGED
    assert rig.server.reported == []


def test_permission_denied_fails_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, resolution: str
) -> None:
    """An unreadable file (EACCES at the last step) fails at once, with a signature so a
    later fix is noticed. (Root ignores permissions: the denial is injected.)"""
    path = rig.write("locked.txt", b"secret")
    real_open, real_openat2 = os.open, beneath._openat2

    def deny(name: str) -> None:
        if os.fsdecode(name) == "locked.txt":
            raise PermissionError(errno.EACCES, "Permission denied", name)

    def open_denied(p: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        deny(p)
        return real_open(p, flags, *args, **kwargs)

    def openat2_denied(dir_fd: int, p: str, flags: int) -> int:
        deny(p)
        return real_openat2(dir_fd, p, flags)

    monkeypatch.setattr(os, "open", open_denied)
    monkeypatch.setattr(beneath, "_openat2", openat2_denied)
    assert rig.run("locked.txt").outcome is Outcome.FAILED
    assert rig.server.calls == []
    row = rig.row("locked.txt")
    assert row.state is State.FAILED and "Permission denied" in row.last_error
    assert row.sig == sig_of(path)
    assert path.exists()


# --- item 3: only a settled version is uploaded -----------------------------------------------


def test_a_file_rewritten_after_it_settled_is_handed_back_to_settle(rig: Rig) -> None:
    path = rig.write("doc.txt", b"the settled version")
    settled = sig_of(path)
    path.write_bytes(b"PART")  # rewritten while the job waited for a worker
    result = rig.run("doc.txt", settled=settled)
    assert result.outcome is Outcome.CHANGED
    assert rig.server.calls == []  # nothing sent
    # Once it settles again (the scheduler makes a new job), that version goes.
    path.write_bytes(b"the final text")
    assert rig.run("doc.txt", settled=sig_of(path)).outcome is Outcome.DONE
    assert rig.server.uploaded() == [b"the final text"]


def test_a_writer_still_writing_never_loses_bytes_to_a_delete(rig: Rig) -> None:
    folder = rig.folder_with(after_upload="delete")
    path = rig.write("doc.txt", b"first part, ")
    settled = sig_of(path)
    with path.open("ab") as writer:
        writer.write(b"second part")  # still writing when a worker picks the job up
        writer.flush()
        assert rig.run("doc.txt", folder, settled=settled).outcome is Outcome.CHANGED
        assert rig.server.calls == []
        writer.write(b", last part")
    assert path.read_bytes() == b"first part, second part, last part"
    assert rig.run("doc.txt", folder, settled=sig_of(path)).outcome is Outcome.DONE
    assert rig.server.uploaded() == [b"first part, second part, last part"]
    assert not path.exists()


def test_a_same_size_rewrite_with_its_mtime_put_back_is_a_change(rig: Rig) -> None:
    """``touch -r`` / ``rsync -t``: size and mtime as they settled, other bytes (the ctime
    and the inode tell)."""
    path = rig.write("doc.txt", b"aaaa")
    settled = sig_of(path)
    tmp = rig.inbox / ".doc.txt.new"
    tmp.write_bytes(b"bbbb")
    os.utime(tmp, ns=(settled.mtime_ns, settled.mtime_ns))
    tmp.rename(path)
    assert rig.run("doc.txt", settled=settled).outcome is Outcome.CHANGED
    assert rig.server.calls == []


def test_a_retry_never_puts_a_version_that_did_not_settle(rig: Rig) -> None:
    """A job carries its settled version across retries: a file changed between two tries
    goes back to settling, even with a URL it could PUT to again."""
    path = rig.write("doc.txt", b"v1")
    job = Job(rig.folder, "doc.txt", settled=sig_of(path))
    rig.server.failing_puts = 1  # a 503: retried later, with the same URL
    first = rig.uploader.run_through(job)
    assert first.outcome is Outcome.RETRY and first.ticket is not None
    path.write_bytes(b"v2, half written")
    puts = sum(1 for e, _ in rig.server.calls if e == "put")
    assert rig.uploader.run_through(job.after(first)).outcome is Outcome.CHANGED
    assert sum(1 for e, _ in rig.server.calls if e == "put") == puts
    assert rig.server.reported == []


def test_an_unchanged_settled_file_is_uploaded(rig: Rig) -> None:
    path = rig.write("doc.txt", b"hello")
    assert rig.run("doc.txt", settled=sig_of(path)).outcome is Outcome.DONE
    assert rig.server.uploaded() == [b"hello"]
    assert plan(rig.row("doc.txt"), sig_of(path), dispose=False) is Action.SKIP
