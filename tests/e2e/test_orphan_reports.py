"""A report owed for a folder no longer configured is made anyway (it needs only the
FileStoreId), at start and when the folder comes back with SIGHUP.

The ledger is left as a crash would leave it: the bytes are on the emulator's S3 under a
FileStoreId, the row is ``put``, the report never went out.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hottask_sync.client import HotTaskClient
from hottask_sync.emulator import Emulator
from hottask_sync.files import FileSig
from hottask_sync.ledger import Ledger, State
from tests.conftest import API_KEY, DaemonProcess, start_daemon, wait_for, write_config
from tests.fakes import sha256


def _leave_report_owed(emu: Emulator, state_dir: Path, folder: Path, name: str) -> str:
    """Uploads ``folder/name`` by hand and records it as ``put``; returns its FileStoreId."""
    data = (folder / name).read_bytes()
    with HotTaskClient(emu.base_url, API_KEY) as client:
        ticket = client.get_upload_url(name)
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            client.put(ticket, fd, len(data))
        finally:
            os.close(fd)
    sig = FileSig.from_stat(os.lstat(folder / name))
    with Ledger.in_dir(state_dir) as ledger:
        ledger.mark_ticketed(str(folder), name, sig, ticket.file_store_id)
        ledger.mark_put(str(folder), name, sha256(data))
    return ticket.file_store_id


def _row_state(state_dir: Path, folder: Path, name: str) -> State | None:
    with Ledger.in_dir(state_dir, readonly=True) as ledger:
        row = ledger.get(str(folder), name)
    return None if row is None else row.state


def test_a_report_owed_in_a_folder_no_longer_configured_is_made_at_start(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "owed.txt").write_bytes(b"bytes already on S3")
    state = tmp_path / "state"
    fsid = _leave_report_owed(emulator, state, old, "owed.txt")
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(new)}])
    daemon = start_daemon(config)
    daemons.append(daemon)
    wait_for(lambda: fsid in emulator.reported(), what=f"FileStoreId {fsid} reported")
    assert daemon.events("upload.orphaned")
    assert daemon.stop() == 0
    assert _row_state(state, old, "owed.txt") is State.REPORTED
    assert len(emulator.tickets()) == 1  # reported, never uploaded again
    assert (old / "owed.txt").read_bytes() == b"bytes already on S3"  # left where it is


def test_a_folder_added_back_with_sighup_resumes_its_owed_reports(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox, other = tmp_path / "inbox", tmp_path / "other"
    inbox.mkdir()
    other.mkdir()
    (inbox / "owed.txt").write_bytes(b"owed")
    state = tmp_path / "state"
    config = tmp_path / "c.toml"
    write_config(config, emulator.base_url, [{"path": str(other)}])
    daemon = start_daemon(config)
    daemons.append(daemon)
    # A crash in another life left a report owed in a folder this config does not have.
    fsid = _leave_report_owed(emulator, state, inbox, "owed.txt")
    (inbox / "owed.txt").unlink()  # no rescan will find it: only the ledger knows
    write_config(config, emulator.base_url, [{"path": str(other)}, {"path": str(inbox)}])
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: fsid in emulator.reported(), what=f"FileStoreId {fsid} reported")
    assert daemon.stop() == 0
    assert len(emulator.tickets()) == 1
