"""Awkward input for the real daemon: odd file names, files changing under an upload,
watched folders vanishing or being files, and a ledger that cannot be written any more."""

from __future__ import annotations

import os
import resource
import shutil
import signal
from pathlib import Path

import pytest

from hottask_sync.emulator import Emulator, Faults
from hottask_sync.ledger import Ledger
from tests.conftest import (
    API_KEY,
    DaemonProcess,
    reported_files,
    start_daemon,
    wait_for,
    write_config,
)
from tests.e2e.support import cli, not_json, status, tree
from tests.fakes import clean_env, sha256


def moving_config(tmp_path: Path, emulator: Emulator, **sync: object) -> tuple[Path, Path, Path]:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox), "after_upload": "move", "move_to": str(done)}],
        sync=dict(sync),
    )
    return config, inbox, done


# --- names --------------------------------------------------------------------------------------

LONG = "L" * 251 + ".txt"  # 255 bytes: NAME_MAX
#: on-disk name (bytes) -> (what the emulator must see as fileName, content)
NAMES: dict[bytes, tuple[str, bytes]] = {
    b"new\nline.txt": ("new\nline.txt", b"a newline in the name\n"),
    b"tab\there.txt": ("tab\there.txt", b"a tab in the name\n"),
    b"-leading-dash.txt": ("-leading-dash.txt", b"looks like an option\n"),
    b"--": ("--", b"the end of options\n"),
    b"bad\xff name.txt": ("bad\ufffd name.txt", b"not UTF-8\n"),
    LONG.encode(): (LONG, b"the longest name\n"),
    b"empty.txt": ("empty.txt", b""),
    "caf\u00e9 \u65e5\u672c.txt".encode(): ("caf\u00e9 \u65e5\u672c.txt", b"real unicode\n"),
}


def create(folder: Path, name: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(folder), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_awkward_names_are_uploaded_with_a_valid_name(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    config, inbox, done = moving_config(tmp_path, emulator)
    items = list(NAMES.items())
    for name, (_, data) in items[:4]:  # some found by the startup scan...
        create(inbox, name, data)
    daemon = start_daemon(config)
    daemons.append(daemon)
    for name, (_, data) in items[4:]:  # ...the others by the watcher
        create(inbox, name, data)
    wanted = {shown for shown, _ in NAMES.values()}
    wait_for(
        lambda: set(reported_files(emulator)) >= wanted and not tree(inbox),
        what="every awkward name reported and moved",
    )
    reported = reported_files(emulator)
    assert set(reported) == wanted
    tickets = emulator.tickets()
    for name, (shown, data) in NAMES.items():
        (fsid,) = reported[shown]
        info = tickets[fsid]
        assert info.sha256 == sha256(data), shown
        assert info.size == len(data), shown
        assert info.stored_path is not None
        assert info.stored_path.read_bytes() == data
        # Moved under its own (byte-exact) name.
        assert tree(done)[os.fsdecode(name)] == data
    assert tickets[reported["empty.txt"][0]].size == 0
    assert daemon.stop() == 0
    assert not not_json(daemon)  # every log line is valid JSON, whatever the names
    summary = status(config)
    assert summary["uploaded"] == len(NAMES) and summary["failed"] == 0


# --- a file changing under its upload -------------------------------------------------------


@pytest.mark.parametrize("change", ["append", "truncate", "rewrite"])
def test_file_changed_during_the_put_is_reported_only_in_its_final_version(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], change: str
) -> None:
    config, inbox, done = moving_config(tmp_path, emulator)
    # Every answer waits 0.5 s: the PUT is still open when the file changes.
    emulator.faults = Faults(delay_seconds=0.5)
    daemon = start_daemon(config)
    daemons.append(daemon)
    data = os.urandom(6 * 1024 * 1024)
    path = inbox / "big.bin"
    path.write_bytes(data)
    wait_for(lambda: emulator.calls()["put"] >= 1, what="the first PUT")
    if change == "append":
        with path.open("ab") as fh:
            fh.write(b"the tail written later")
        final = data + b"the tail written later"
    elif change == "truncate":
        os.truncate(path, 1000)
        final = data[:1000]
    else:
        final = os.urandom(len(data))
        with path.open("r+b") as fh:
            fh.write(final)
    wait_for(lambda: "big.bin" in reported_files(emulator) and not path.exists(), timeout=30)
    (fsid,) = reported_files(emulator)["big.bin"]
    tickets = emulator.tickets()
    assert tickets[fsid].sha256 == sha256(final)
    # The first upload was never reported (whatever bytes it carried).
    others = [t for t in tickets.values() if t.file_store_id != fsid]
    assert others and all(t.reported_count == 0 for t in others)
    assert (done / "big.bin").read_bytes() == final
    changed = daemon.events("file.changed")
    assert changed and changed[0]["reason"] == "changed during upload"
    assert not daemon.events("upload.failed")
    assert daemon.stop() == 0


# --- a file that can never be uploaded --------------------------------------------------------


def test_file_over_5_gib_fails_at_once_stays_and_retry_requeues_it(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    config, inbox, done = moving_config(tmp_path, emulator)
    daemon = start_daemon(config)
    daemons.append(daemon)
    huge = inbox / "huge.iso"
    huge.touch()
    os.truncate(huge, 5 * 1024**3 + 1)  # sparse
    (inbox / "small.txt").write_bytes(b"fine")
    failed = daemon.wait_event("upload.failed")
    assert failed[0]["path"] == "huge.iso" and "5 GiB" in failed[0]["error"]
    wait_for(lambda: (done / "small.txt").exists(), what="small.txt moved")
    assert huge.exists() and huge.stat().st_size == 5 * 1024**3 + 1  # left in place
    assert "huge.iso" not in {t.file_name for t in emulator.tickets().values()}
    summary = status(config)
    assert summary["failed"] == 1 and summary["pending"] == 0
    assert summary["recent_failures"][0]["path"] == "huge.iso"
    # `retry` makes it pending again and pokes the running daemon, which tries (and fails,
    # at once, without a call) again.
    again = cli("retry", "--config", str(config), str(huge))
    assert again.returncode == 0, again.stderr
    assert "1 failed file(s) will be uploaded again by the running daemon" in again.stdout
    daemon.wait_event("upload.failed", count=2)
    assert "huge.iso" not in {t.file_name for t in emulator.tickets().values()}
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert status(config)["failed"] == 1


# --- watched folders going away ---------------------------------------------------------------


def test_watched_folder_removed_and_recreated(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = start_daemon(config)
    daemons.append(daemon)
    (inbox / "before.txt").write_bytes(b"before")
    wait_for(lambda: "before.txt" in reported_files(emulator))
    shutil.rmtree(inbox)
    daemon.wait_event("folder.missing", timeout=10)
    assert daemon.proc.poll() is None
    inbox.mkdir()
    (inbox / "with-the-folder.txt").write_bytes(b"created with the folder")
    daemon.wait_event("folder.back", timeout=10)
    (inbox / "after.txt").write_bytes(b"created after it was back")
    wait_for(
        lambda: {"with-the-folder.txt", "after.txt"} <= set(reported_files(emulator)),
        what="the files of the recreated folder",
    )
    assert {k: len(v) for k, v in reported_files(emulator).items()} == {
        "before.txt": 1,
        "with-the-folder.txt": 1,
        "after.txt": 1,
    }
    events = [line["event"] for line in daemon.lines if line["event"].startswith("folder.")]
    assert events.index("folder.missing") < events.index("folder.back")
    assert daemon.stop() == 0


def test_watched_folder_replaced_between_two_checks(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """Removed and created again at once (a restore, ``mv inbox inbox.old && mkdir inbox``):
    files dropped into the new folder must still be seen."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = start_daemon(config)
    daemons.append(daemon)
    (inbox / "before.txt").write_bytes(b"before")
    wait_for(lambda: "before.txt" in reported_files(emulator))
    os.rename(inbox, tmp_path / "inbox.old")
    inbox.mkdir()
    (inbox / "after.txt").write_bytes(b"in the new folder")
    wait_for(
        lambda: "after.txt" in reported_files(emulator),
        timeout=15,
        what="a file in the replaced folder",
    )
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_watched_folder_that_is_a_file_exits_2_naming_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "inbox"
    not_a_dir.write_text("I am a file")
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9", [{"path": str(not_a_dir)}])
    done = cli("run", "--config", str(config), env=clean_env(HOTTASK_API_KEY=API_KEY))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(not_a_dir) in lines[0] and "not a directory" in lines[0]
    assert done.stdout == ""


# --- the ledger cannot be written -----------------------------------------------------------


def disposed(config: Path, inbox: Path, relpath: str) -> bool:
    """True once the ledger records the file as reported and moved away."""
    with Ledger(config.parent / "state" / "ledger.sqlite3", readonly=True) as ledger:
        entry = ledger.get(str(inbox), relpath)
    return entry is not None and entry.disposed


def disk_full(pid: int) -> None:
    """Makes every later write of the process that grows a regular file fail with EFBIG, as
    on a full disk: RLIMIT_FSIZE 0 (Python ignores SIGXFSZ, so the write just fails). Works
    as root, needs no mount, and touches nothing but that process."""
    # The soft limit only: the hard one stays, so disk_has_room can lift it again.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))


def disk_has_room(pid: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.mark.parametrize("where", ["settle", "upload"])
def test_ledger_that_cannot_be_written_waits_for_room_then_restarts_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], where: str
) -> None:
    config, inbox, done = moving_config(tmp_path, emulator)
    daemon = start_daemon(config)
    daemons.append(daemon)
    (inbox / "first.txt").write_bytes(b"uploaded while the disk had room")
    wait_for(lambda: disposed(config, inbox, "first.txt"), what="first.txt moved and recorded")
    late = {f"late{i}.txt": f"late file {i}\n".encode() for i in range(3)}
    if where == "settle":
        # The main thread records the new files as pending: that write fails.
        disk_full(daemon.proc.pid)
        for name, data in late.items():
            (inbox / name).write_bytes(data)
    else:
        # A worker records the ticket (its answer delayed meanwhile): that write fails.
        emulator.faults = Faults(delay_seconds=1.0)
        for name, data in late.items():
            (inbox / name).write_bytes(data)
        wait_for(lambda: emulator.calls()["pre"] >= 2, what="a ticket asked for")
        disk_full(daemon.proc.pid)
    daemon.wait_event("ledger.failed", timeout=30)
    # No restart loop: the daemon stays up (a restart would only fail again, each with a
    # full rescan) and probes the ledger with a growing pause...
    assert not wait_for(daemon.exited, 2.0, fail=False), daemon.log_text()
    # ...until there is room again: then it exits, once, for a restart that resumes.
    disk_has_room(daemon.proc.pid)
    code = daemon.proc.wait(timeout=30)
    daemon.stop()
    assert code == 1, daemon.log_text()
    assert daemon.events("ledger.writable")
    failed = daemon.events("ledger.failed")
    assert len(failed) == 1, daemon.log_text()
    assert failed[0]["level"] == "critical"
    assert "ledger.sqlite3" in failed[0]["error"]
    assert not emulator.reported().keys() - {
        fsid for fsid, t in emulator.tickets().items() if t.file_name == "first.txt"
    }
    # Nothing lost: the late files are still in the inbox, untouched.
    assert tree(inbox) == late
    assert tree(done) == {"first.txt": b"uploaded while the disk had room"}

    # With room again, a new daemon uploads them, each once.
    emulator.faults = Faults()
    daemon = start_daemon(config)
    daemons.append(daemon)
    wait_for(lambda: not tree(inbox), what="the late files moved")
    assert daemon.stop() == 0
    reported = reported_files(emulator)
    assert {k: len(v) for k, v in reported.items()} == dict.fromkeys(["first.txt", *late], 1)
    assert tree(done) == {"first.txt": b"uploaded while the disk had room", **late}
    summary = status(config)
    assert summary["pending"] == 0 and summary["failed"] == 0


def test_reloads_during_uploads_disturb_nothing(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """Reloads arriving while uploads run do not disturb them."""
    config, inbox, done = moving_config(tmp_path, emulator)
    emulator.faults = Faults(delay_seconds=0.2)
    daemon = start_daemon(config)
    daemons.append(daemon)
    files = {f"r{i}.txt": f"reload {i}\n".encode() for i in range(8)}
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    for _ in range(5):
        daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: tree(done) == files, timeout=30, what="all moved")
    assert daemon.proc.poll() is None
    assert {k: len(v) for k, v in reported_files(emulator).items()} == dict.fromkeys(files, 1)
    assert daemon.stop() == 0
