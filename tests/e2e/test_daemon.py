"""The real daemon (``hottask-sync run`` as a subprocess) against the emulator on loopback.

Real temporary folders, real inotify, real signals. Every wait is a poll with a deadline
(``wait_for``); nothing sleeps to wait for the daemon.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hottask_sync.emulator import Emulator, Faults, TicketInfo
from tests.conftest import DaemonProcess, reported_files, start_daemon, wait_for, write_config
from tests.e2e.support import status
from tests.fakes import sha256

GRACE = 0.5
#: daemon.ABORT_WAIT_SECONDS: after the grace period, an aborted PUT gets this to unwind.
ABORT_WAIT = 5.0


# --- helpers ---------------------------------------------------------------------------------


def payload(name: str, size: int = 4096) -> bytes:
    """Distinct, deterministic bytes for each name."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def tickets_named(emu: Emulator, name: str) -> list[TicketInfo]:
    """Every ticket issued for ``name``, oldest first."""
    found = [t for t in emu.tickets().values() if t.file_name == name]
    return sorted(found, key=lambda t: int(t.file_store_id))


def wait_reported(emu: Emulator, names: list[str], timeout: float = 20.0) -> dict[str, list[str]]:
    """Waits until every name has at least one reported ticket; returns reported_files."""

    def done() -> dict[str, list[str]] | None:
        rep = reported_files(emu)
        return rep if set(names) <= set(rep) else None

    result: dict[str, list[str]] = wait_for(done, timeout, what=f"{names} reported")
    return result


def stored_bytes(emu: Emulator) -> Iterator[bytes]:
    """The content of every file under the emulator's data directory."""
    for root, _dirs, files in os.walk(emu.data_dir):
        for name in files:
            try:
                yield Path(root, name).read_bytes()
            except FileNotFoundError:
                continue  # a PUT's temporary file, renamed into place while we walked


@pytest.fixture
def procs(daemons: list[DaemonProcess]) -> Iterator[list[DaemonProcess]]:
    """``daemons``, plus each daemon's log printed at teardown (pytest shows it on failure)."""
    yield daemons
    for i, d in enumerate(daemons):
        print(f"--- daemon {i} log ---\n{d.log_text()}")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def launch(procs: list[DaemonProcess], config: Path, **kw: Any) -> DaemonProcess:
    daemon = start_daemon(config, **kw)
    procs.append(daemon)
    return daemon


# --- 1. files present before start -----------------------------------------------------------


def test_files_present_before_start_are_uploaded(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    files = {"a.txt": payload("a.txt"), "deep/er/b.bin": payload("b.bin", 70_000)}
    for rel, data in files.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(data)
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)

    rep = wait_reported(emulator, ["a.txt", "b.bin"])
    assert sorted(rep) == ["a.txt", "b.bin"]
    for rel, data in files.items():
        name = os.path.basename(rel)
        assert len(rep[name]) == 1
        assert emulator.tickets()[rep[name][0]].sha256 == sha256(data)
    # What start-up built is out of the cyclic collector's way (bench/README).
    (ready,) = daemon.events("daemon.ready")
    assert ready["frozen_objects"] > 10_000, ready
    assert daemon.stop() == 0


def test_old_file_present_at_start_is_ready_at_once(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    # With a 60 s settle time, only a file found quiet for longer than that already (its
    # mtime) can be uploaded within the wait below; a fresh one must still wait.
    old, fresh = inbox / "old.txt", inbox / "fresh.txt"
    old.write_bytes(b"old bytes\n")
    fresh.write_bytes(b"fresh bytes\n")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        sync={"settle_seconds": 60},
    )
    daemon = launch(procs, config)

    rep = wait_reported(emulator, ["old.txt"], timeout=15)
    assert emulator.tickets()[rep["old.txt"][0]].sha256 == sha256(b"old bytes\n")
    assert tickets_named(emulator, "fresh.txt") == []  # still settling
    assert daemon.stop() == 0


# --- 2. many files at once -------------------------------------------------------------------


def test_twenty_files_dropped_at_once_are_each_uploaded_once(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)
    files = {f"file-{i:02d}.dat": payload(f"file-{i}", 1000 + 997 * i) for i in range(20)}
    for name, data in files.items():
        (inbox / name).write_bytes(data)

    rep = wait_reported(emulator, list(files))
    assert sorted(rep) == sorted(files)
    tickets = emulator.tickets()
    for name, data in files.items():
        assert len(rep[name]) == 1, f"{name} reported under {rep[name]}"
        info = tickets[rep[name][0]]
        assert info.sha256 == sha256(data)
        assert info.size == len(data)
        assert info.stored_path is not None and info.stored_path.read_bytes() == data
    assert len(tickets) == 20  # no extra tickets: nothing was uploaded twice
    assert daemon.stop() == 0


# --- 3. a slow writer ------------------------------------------------------------------------


def test_slow_writer_with_short_pauses_is_uploaded_once_with_final_bytes(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    settle, gap, chunks = 1.0, 0.3, 6  # writing lasts 1.8 s > settle, each pause < settle
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        sync={"settle_seconds": settle},
    )
    daemon = launch(procs, config)
    parts = [payload(f"chunk-{i}", 50_000) for i in range(chunks)]
    final = b"".join(parts)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            pace = threading.Event()
            with open(inbox / "slow.bin", "wb", buffering=0) as fh:
                for i, part in enumerate(parts):
                    if i:
                        pace.wait(gap)  # pacing the writer, not waiting for the daemon
                    fh.write(part)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors

    wait_for(
        lambda: any(
            t.sha256 == sha256(final) and t.reported_count for t in emulator.tickets().values()
        ),
        what="slow.bin reported with its final bytes",
    )
    tickets = tickets_named(emulator, "slow.bin")
    assert len(tickets) == 1, [(t.file_store_id, t.size) for t in tickets]
    assert tickets[0].size == len(final)
    assert daemon.stop() == 0


# --- 4. a .part file renamed into place ------------------------------------------------------


def test_part_file_is_never_uploaded_only_its_final_name(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    settle = 0.3
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        sync={"settle_seconds": settle},
    )
    daemon = launch(procs, config)
    data = payload("report.pdf", 30_000)
    (inbox / "report.pdf.part").write_bytes(data)
    # Let the .part stay quiet well past the settle time. A control file dropped after it
    # being reported proves the daemon has been through its settle loop since.
    quiet_until = time.monotonic() + 3 * settle
    (inbox / "control.txt").write_bytes(b"control")
    wait_reported(emulator, ["control.txt"])
    wait_for(lambda: time.monotonic() >= quiet_until, what="the .part to stay quiet")
    assert tickets_named(emulator, "report.pdf.part") == []

    os.rename(inbox / "report.pdf.part", inbox / "report.pdf")
    rep = wait_reported(emulator, ["report.pdf"])
    assert len(rep["report.pdf"]) == 1
    assert emulator.tickets()[rep["report.pdf"][0]].sha256 == sha256(data)
    names = {t.file_name for t in emulator.tickets().values()}
    assert names == {"control.txt", "report.pdf"}
    assert not any(line.get("path", "").endswith(".part") for line in daemon.lines)
    assert daemon.stop() == 0


# --- 5. folders moved in and created ---------------------------------------------------------


def test_folder_tree_moved_in_and_folder_created_inside_are_uploaded(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)

    tree = tmp_path / "outside" / "tree"
    moved = {
        "a/b/c.txt": payload("c.txt"),
        "a/d.txt": payload("d.txt"),
        "e.txt": payload("e.txt"),
        "a/b/deep/f.txt": payload("f.txt", 123_456),
    }
    for rel, data in moved.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    os.rename(tree, inbox / "tree")

    created = {"new/g.txt": payload("g.txt"), "new/sub/h.txt": payload("h.txt")}
    (inbox / "new").mkdir()
    (inbox / "new" / "g.txt").write_bytes(created["new/g.txt"])
    (inbox / "new" / "sub").mkdir()
    (inbox / "new" / "sub" / "h.txt").write_bytes(created["new/sub/h.txt"])

    everything = {os.path.basename(rel): data for rel, data in {**moved, **created}.items()}
    rep = wait_reported(emulator, list(everything))
    assert sorted(rep) == sorted(everything)
    tickets = emulator.tickets()
    for name, data in everything.items():
        assert len(rep[name]) == 1
        assert tickets[rep[name][0]].sha256 == sha256(data)
    lines = daemon.wait_event("upload.succeeded", count=len(everything))
    succeeded = {line["path"] for line in lines}
    assert succeeded == {f"tree/{rel}" for rel in moved} | set(created)
    assert daemon.stop() == 0


# --- 6. odd names ----------------------------------------------------------------------------


ODD_NAMES = [
    "résumé 2026 (final).txt",
    "semi;colon&amp=1.txt",
    'it\'s a "quoted" name with  spaces.txt',
    "日本語のファイル.pdf",
    "percent %20 and #hash?.txt",
]


def test_unicode_and_odd_names_keep_their_name(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)
    for name in ODD_NAMES:
        (inbox / name).write_bytes(payload(name))

    rep = wait_reported(emulator, ODD_NAMES)
    assert sorted(rep) == sorted(ODD_NAMES)
    tickets = emulator.tickets()
    for name in ODD_NAMES:
        assert len(rep[name]) == 1
        info = tickets[rep[name][0]]
        assert info.file_name == name
        assert info.sha256 == sha256(payload(name))
        assert info.stored_path is not None and info.stored_path.name == name
    assert daemon.stop() == 0


# --- 7. symlinks -----------------------------------------------------------------------------


def test_symlinks_are_never_followed_or_uploaded(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    secret = b"TOP-SECRET-" + os.urandom(16).hex().encode()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(secret)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner-secret.txt").write_bytes(secret + b"-inner")
    # One link there at start (found by the scan), two made while running (events).
    os.symlink(outside / "secret.txt", inbox / "early-link.txt")
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)
    os.symlink(outside / "secret.txt", inbox / "late-link.txt")
    os.symlink(outside / "dir", inbox / "linked-dir")
    (inbox / "normal.txt").write_bytes(b"normal")

    wait_reported(emulator, ["normal.txt"])
    skipped = daemon.wait_event("file.skipped", count=3)
    assert {line["path"] for line in skipped} == {"early-link.txt", "late-link.txt", "linked-dir"}
    assert all("link" in line["reason"] for line in skipped)
    # A rescan (SIGHUP reloads and rescans) must not pick them up either.
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_event("rescan.finished")
    assert {t.file_name for t in emulator.tickets().values()} == {"normal.txt"}
    assert not any(secret in content for content in stored_bytes(emulator))
    assert daemon.stop() == 0


# --- 8. restart ------------------------------------------------------------------------------


def test_restart_makes_no_new_calls_and_uploads_files_added_while_stopped(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    first = launch(procs, config)
    for name in ("one.txt", "two.txt"):
        (inbox / name).write_bytes(payload(name))
    (inbox / "sub").mkdir()
    (inbox / "sub" / "three.txt").write_bytes(payload("three.txt"))
    wait_reported(emulator, ["one.txt", "two.txt", "three.txt"])
    assert first.stop() == 0
    before = emulator.calls()
    assert (before["pre"], before["put"], before["report"]) == (3, 3, 3)

    (inbox / "four.txt").write_bytes(payload("four.txt"))  # added while stopped
    second = launch(procs, config)
    wait_reported(emulator, ["four.txt"])
    second.proc.send_signal(signal.SIGHUP)  # reload: a full rescan
    second.wait_event("rescan.finished")
    after = emulator.calls()
    assert {k: after[k] - before[k] for k in ("pre", "put", "report")} == {
        "pre": 1,
        "put": 1,
        "report": 1,
    }
    assert {line["path"] for line in second.events("upload.started")} == {"four.txt"}
    rep = reported_files(emulator)
    assert all(len(ids) == 1 for ids in rep.values()), rep
    assert second.stop() == 0


# --- 9. after_upload: move and delete --------------------------------------------------------


def test_after_upload_move_and_delete(
    tmp_path: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    moving, deleting, done = tmp_path / "moving", tmp_path / "deleting", tmp_path / "done"
    for d in (moving / "sub" / "dir", deleting, done):
        d.mkdir(parents=True)
    collision_old = b"already in move_to: must survive"
    (done / "clash.txt").write_bytes(collision_old)
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [
            {"path": str(moving), "after_upload": "move", "move_to": str(done)},
            {"path": str(deleting), "after_upload": "delete"},
        ],
    )
    daemon = launch(procs, config)
    nested, clash, gone = payload("nested.txt", 9000), payload("clash.txt"), payload("gone.txt")
    (moving / "sub" / "dir" / "nested.txt").write_bytes(nested)
    (moving / "clash.txt").write_bytes(clash)
    (deleting / "gone.txt").write_bytes(gone)

    rep = wait_reported(emulator, ["nested.txt", "clash.txt", "gone.txt"])
    wait_for(
        lambda: (
            (done / "sub" / "dir" / "nested.txt").exists()
            and (done / "clash (1).txt").exists()
            and not (deleting / "gone.txt").exists()
        ),
        what="files moved and deleted",
    )
    assert (done / "sub" / "dir" / "nested.txt").read_bytes() == nested
    assert not (moving / "sub" / "dir" / "nested.txt").exists()
    assert (done / "clash (1).txt").read_bytes() == clash
    assert (done / "clash.txt").read_bytes() == collision_old
    assert not (moving / "clash.txt").exists()
    assert sorted(p.name for p in done.rglob("*") if p.is_file()) == [
        "clash (1).txt",
        "clash.txt",
        "nested.txt",
    ]
    tickets = emulator.tickets()
    for name, data in (("nested.txt", nested), ("clash.txt", clash), ("gone.txt", gone)):
        assert len(rep[name]) == 1
        assert tickets[rep[name][0]].sha256 == sha256(data)
    assert len(tickets) == 3
    assert daemon.stop() == 0


# --- 10. a new version -----------------------------------------------------------------------


def test_file_modified_after_report_is_uploaded_again_as_a_new_version(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)
    v1 = payload("v1", 5000)
    (inbox / "doc.txt").write_bytes(v1)
    wait_reported(emulator, ["doc.txt"])
    with open(inbox / "doc.txt", "ab") as fh:
        fh.write(b"appended later\n")
    v2 = v1 + b"appended later\n"

    wait_for(lambda: len(reported_files(emulator).get("doc.txt", [])) >= 2, what="v2 reported")
    tickets = tickets_named(emulator, "doc.txt")
    assert [t.sha256 for t in tickets] == [sha256(v1), sha256(v2)]
    assert all(t.reported_count == 1 for t in tickets)
    assert daemon.stop() == 0


# --- 11. status --json -----------------------------------------------------------------------


def test_status_json_while_running_matches_what_happened(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = launch(procs, config)
    for name in ("s1.txt", "s2.txt", "s3.txt"):
        (inbox / name).write_bytes(payload(name))
    # Over the 5 GiB limit of one PUT (sparse: no disk used): failed at once.
    with open(inbox / "huge.bin", "wb") as fh:
        fh.truncate(5 * 1024**3 + 1)
    wait_reported(emulator, ["s1.txt", "s2.txt", "s3.txt"])
    daemon.wait_event("upload.failed")

    first = status(config)
    assert (first["uploaded"], first["pending"], first["failed"]) == (3, 0, 1)
    assert all(isinstance(first[k], int) for k in ("uploaded", "pending", "failed"))
    assert first["daemon_pid"] == daemon.proc.pid
    assert [f["path"] for f in first["recent_failures"]] == ["huge.bin"]

    # GetPreUploadUrl now fails: the next file stays pending.
    emulator.faults = Faults(error_5xx=1.0, endpoints=frozenset({"pre"}))
    (inbox / "s4.txt").write_bytes(payload("s4.txt"))
    daemon.wait_event("upload.retry")
    second = status(config)
    assert (second["uploaded"], second["pending"], second["failed"]) == (3, 1, 1)
    assert [f["path"] for f in second["pending_files"]] == ["s4.txt"]

    emulator.faults = Faults()
    wait_reported(emulator, ["s4.txt"], timeout=30)
    third = wait_for(
        lambda: (s := status(config))["uploaded"] == 4 and s, what="status to show 4 uploaded"
    )
    assert (third["uploaded"], third["pending"], third["failed"]) == (4, 0, 1)
    assert daemon.stop() == 0


# --- 12. one daemon per state_dir ------------------------------------------------------------


def test_second_daemon_on_same_state_dir_exits_3(
    tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    """ "Already running" has its own exit code (3), which the unit restarts after: a
    daemon that merely started while another was exiting is never left down."""
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    first = launch(procs, config)
    second = launch(procs, config, wait_ready=False)
    assert second.proc.wait(timeout=20) == 3
    assert second._reader is not None
    second._reader.join(timeout=5)
    assert [e["event"] for e in second.lines if "event" in e and e["event"] != "<not json>"] == [
        "state_dir.busy"  # it waited a few seconds for the lock first
    ]
    lines = [line["text"] for line in second.lines if line.get("event") == "<not json>"]
    assert len(lines) == 1, lines
    assert "already" in lines[0]
    assert str(first.proc.pid) in lines[0]
    # The first one is unaffected.
    assert first.proc.poll() is None
    (inbox / "after.txt").write_bytes(b"after")
    wait_reported(emulator, ["after.txt"])
    assert first.stop() == 0


# --- 13. SIGTERM during an upload ------------------------------------------------------------


@pytest.mark.parametrize("how", ["throttled_put", "slow_put_answer"])
def test_sigterm_during_upload_exits_0_and_restart_completes_it(
    how: str, tmp_path: Path, inbox: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    big = os.urandom(8 * 1024 * 1024)
    (inbox / "big.bin").write_bytes(big)
    folders = [{"path": str(inbox)}]
    sync: dict[str, Any] = {"shutdown_grace_seconds": GRACE}
    if how == "throttled_put":
        # 1 MiB/s: the PUT would take about 8 s; the grace period cuts it off mid-body.
        sync["bandwidth_limit"] = 1024 * 1024
    else:
        # The bytes are stored but the answer takes 30 s: nothing in the daemon can
        # interrupt that wait; it gives up after the grace period plus the abort wait.
        emulator.faults = Faults(slow=1.0, slow_seconds=30, endpoints=frozenset({"put"}))
    config = write_config(tmp_path / "c.toml", emulator.base_url, folders, sync=sync)
    first = launch(procs, config)
    wait_for(lambda: emulator.calls()["put"] >= 1, what="the PUT to start")
    assert first.stop(timeout=GRACE + ABORT_WAIT + 5) == 0
    assert first.events("daemon.stopped")
    if how == "throttled_put":
        assert first.events("upload.interrupted")
        wait_for(lambda: emulator.calls()["put_incomplete"] >= 1, what="the emulator to see it")
    else:
        assert first.events("daemon.cutting_off")
        emulator.faults = Faults()
    assert emulator.reported() == {}

    config = write_config(tmp_path / "c.toml", emulator.base_url, folders)
    second = launch(procs, config)
    rep = wait_reported(emulator, ["big.bin"], timeout=30)
    assert len(rep["big.bin"]) == 1
    info = emulator.tickets()[rep["big.bin"][0]]
    assert info.sha256 == sha256(big)
    assert info.reported_count == 1
    tickets = tickets_named(emulator, "big.bin")
    others = [t for t in tickets if t.file_store_id != info.file_store_id]
    assert all(t.reported_count == 0 for t in others), others
    assert second.stop() == 0


# --- 14. crash between PUT and report --------------------------------------------------------


@pytest.mark.parametrize(
    ("lost", "deleted_while_down"),
    [("drop_before", False), ("drop_after", False), ("drop_before", True)],
)
def test_sigkill_between_put_and_report_resumes_with_same_file_store_id(
    lost: str,
    deleted_while_down: bool,
    tmp_path: Path,
    inbox: Path,
    emulator: Emulator,
    procs: list[DaemonProcess],
) -> None:
    # drop_before: the report never reaches the service; drop_after: it does, but the
    # answer is lost. Either way the daemon must report the same FileStoreId after a crash,
    # even when the file is gone by then (its bytes are already stored).
    report_only = frozenset({"report"})
    emulator.faults = (
        Faults(drop_before=1.0, endpoints=report_only)
        if lost == "drop_before"
        else Faults(drop_after=1.0, endpoints=report_only)
    )
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    first = launch(procs, config)
    data = payload("crash.bin", 200_000)
    (inbox / "crash.bin").write_bytes(data)
    retry = wait_for(
        lambda: [e for e in first.events("upload.retry") if e.get("stage") == "report"],
        what="a failed report",
    )
    assert retry[0]["path"] == "crash.bin"
    first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    [ticket] = tickets_named(emulator, "crash.bin")
    assert ticket.sha256 == sha256(data)
    assert (emulator.calls()["pre"], emulator.calls()["put"]) == (1, 1)
    if deleted_while_down:
        (inbox / "crash.bin").unlink()

    emulator.faults = Faults()
    second = launch(procs, config)
    done = second.wait_event("upload.succeeded")
    assert done[0]["file_store_id"] == ticket.file_store_id
    assert done[0].get("resumed") is True
    assert reported_files(emulator) == {"crash.bin": [ticket.file_store_id]}
    assert [t.file_store_id for t in tickets_named(emulator, "crash.bin")] == [ticket.file_store_id]
    assert (emulator.calls()["pre"], emulator.calls()["put"]) == (1, 1)
    assert second.stop() == 0
